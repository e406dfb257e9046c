"""Rescaling any guider's result (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
Steps are Flawed", arXiv:2305.08891, Sec. 3.4), as a wrapper:

    g   = guider's prediction
    out = phi * g * std(c) / std(g) + (1 - phi) * g           per sample over the declared axes

This is diffusers' ``guidance_rescale`` (applied on top of every guider there) and the "then
rescale" of LTX-2's multimodal guider; ``CFGRescale`` is ``Rescale(CFG(...))`` with the paper's
v space as default. ``space=None`` works on the model's own output, as diffusers does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..axes import Axes, as_axes
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, Guider, guided
from ..prediction import Guided, Prediction
from ..registry import register_guider
from .cfg_rescale import rescale
from .common import Wrapper, check_space


@register_guider("rescale")
@dataclass
class Rescale(Wrapper):
    """``phi * g * std(c)/std(g) + (1 - phi) * g`` for the prediction ``g`` of any ``guider``."""

    guider: Guider
    rescale: float = 0.7
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        if not 0.0 <= float(self.rescale) <= 1.0:
            raise ConfigError("rescale", f"must be in [0, 1], got {self.rescale}")
        self.space = check_space(self.space)
        self.axes = as_axes(self.axes)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        result = self.guider.combine(preds, step)
        if "cond" not in preds or float(self.rescale) == 0.0:
            return result
        if not result.consistent:
            raise GuidanceError(f"rescale: {self.guider.name} returns an inconsistent (x0, eps) pair at "
                                f"{step.where}; rescaling it is not defined")
        kind = self.space or preds["cond"].kind
        axes = step.require_axes("rescale", self.axes)
        out = rescale(result.to(kind), preds["cond"].to(kind), float(self.rescale), axes)
        return guided(out, step, kind)
