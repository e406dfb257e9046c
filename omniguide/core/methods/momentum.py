"""Momentum guidance (MG; "Momentum Guidance: Plug-and-Play Guidance for Flow Models",
arXiv:2602.20360; reference: pamparamm/sd-perturbed-attention ``mg_nodes.py``).

CFG plus a push away from an exponential moving average of the past CFG results:

    g    = u + w (c - u)                       this step's CFG result, in ``space``
    pred = g + alpha (g - m)                   alpha = ``momentum`` (0.5)
    m   <- (1 - beta) g + beta m               beta = ``ema`` (0.6); m starts at the first g

so the first step is plain CFG. The average is state: reset per run (``reset()`` and step 0) and
refused for score distillation. ``space="x0"`` (default) is the reference node's (ComfyUI's
post-CFG ``denoised``); the paper's own space was not verified (its code is not public here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg, guided_in, in_space


@register_guider("momentum")
@dataclass
class Momentum(CFGFamily):
    """``g + alpha (g - m)`` with ``g`` the CFG result and ``m`` its running average
    (``m <- (1 - beta) g + beta m``); see the module docstring (arXiv:2602.20360)."""

    scale: Scale = 4.0
    momentum: float = 0.5
    ema: float = 0.6
    form: str = "u+w(c-u)"
    space: str | None = "x0"
    _average: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    stateful = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= float(self.ema) <= 1.0:
            raise ConfigError("ema", f"an averaging weight in [0, 1], got {self.ema}")

    def reset(self) -> None:
        self._average = None

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if step.index is None:
            raise GuidanceError(f"momentum: needs a sampler step index, but this is {step.where}")
        if "uncond" not in preds:
            return passthrough(preds, step)
        kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
        g = cfg(c, u, resolve(self.scale, step), self.form)
        if step.index == 0 or self._average is None or self._average.shape != g.shape:
            self._average = g
        out = g + float(self.momentum) * (g - self._average)
        self._average = (1 - float(self.ema)) * g + float(self.ema) * self._average
        return guided_in(out, step, kind, "momentum")
