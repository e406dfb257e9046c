"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).

Two conventions exist and libraries disagree on which one ``scale`` means, so the form is named:

    form = "u+w(c-u)":  pred = u + w (c - u)     diffusers, k-diffusion, ComfyUI; w = 1 gives c
    form = "c+w(c-u)":  pred = c + w (c - u)     the paper, threestudio SDS;     w = 0 gives c

The two agree when the second uses ``w - 1``. CFG is linear, so every space gives the same result;
it runs in the model's own parameterization (no conversion, and no division by ``alpha`` at pure
noise for flow models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..guider import GuidanceStep, guided, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg


@register_guider("cfg")
@dataclass
class CFG(CFGFamily):
    """Classifier-free guidance: ``u + w (c - u)`` (or ``c + w (c - u)`` with ``form``).

    Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598. At the neutral scale
    (1, or 0 for the ``c+w(c-u)`` form) only the conditional branch runs."""

    scale: Scale = 7.5
    form: str = "u+w(c-u)"

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            return passthrough(preds, step)
        kind = preds["cond"].kind
        w = resolve(self.scale, step)
        return guided(cfg(preds["cond"].to(kind), preds["uncond"].to(kind), w, self.form), step, kind)
