"""CFG with rescaling (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", arXiv:2305.08891, Sec. 3.4):

    g   = u + w (c - u)
    g_r = g * std(c) / std(g)
    out = phi * g_r + (1 - phi) * g

``std`` runs over the declared axes, per sample. The paper applies it to the v prediction
(``space="v"``, as ComfyUI's RescaleCFG does); diffusers applies it to whatever the model outputs
(``space=None``, the model's own parameterization). ``Rescale`` wraps any other guider the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..axes import Axes, std
from ..errors import ConfigError
from ..guider import GuidanceStep, guided, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg


def rescale(pred: Tensor, cond: Tensor, phi: float, axes: Axes) -> Tensor:
    """Match ``pred``'s std to ``cond``'s over ``axes``, blended by ``phi``."""
    matched = pred * (std(cond, axes) / std(pred, axes))
    return phi * matched + (1.0 - phi) * pred


@register_guider("cfg-rescale")
@dataclass
class CFGRescale(CFGFamily):
    """``phi * g * std(c)/std(g) + (1 - phi) * g`` with ``g`` the CFG prediction (Lin et al. 2023)."""

    scale: Scale = 7.5
    rescale: float = 0.7
    form: str = "u+w(c-u)"
    space: str | None = "v"
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= float(self.rescale) <= 1.0:
            raise ConfigError("rescale", f"must be in [0, 1], got {self.rescale}")

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            return passthrough(preds, step)
        axes = step.require_axes("cfg-rescale", self.axes)
        kind = self.space or preds["cond"].kind
        c, u = preds["cond"].to(kind), preds["uncond"].to(kind)
        g = cfg(c, u, resolve(self.scale, step), self.form)
        return guided(rescale(g, c, float(self.rescale), axes), step, kind)
