"""CFG normalisation: the guided prediction may not be longer than the conditional one
(ComfyUI's ``CFGNorm``, ``comfy_extras/nodes_cfg.py``; the renormalisation of Lumina-Next,
arXiv:2406.18583, and Lumina-Image 2.0 / Qwen-Image's "CFG renorm").

    g    = u + w (c - u)
    pred = strength * g * min(1, ||c|| / ||g||)         clamp=True  (ComfyUI, Lumina-Image 2.0 with renorm 1)
    pred = strength * g * ||c|| / ||g||                 clamp=False (Qwen-Image's exact renormalisation)

The norm is taken per position over the channel axis (``norm="channel"``: the ``C`` -- or, for
token latents, ``D`` -- letter of the declared layout; ComfyUI's ``dim=1``) or per sample over all
declared axes (``norm="sample"``). ``space="x0"`` is ComfyUI's (it post-processes the denoised
result); Lumina and Qwen-Image renormalise the flow velocity (``space="flow"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..axes import Axes, norm
from ..errors import GuidanceError, check_choice
from ..guider import GuidanceStep
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import CFGFamily, cfg

NORMS = ("channel", "sample")


def channel_axes(axes: Axes, who: str) -> Axes:
    """The channel axis of a declared layout (``C``, or ``D`` for token latents) as reduction axes."""
    for letter in ("C", "D"):
        if letter in axes.layout:
            return Axes((axes.layout.index(letter),), axes.frequency, axes.layout)
    raise GuidanceError(f"{who}: norm='channel' needs a layout with a channel letter (C or D), got "
                        f"'{axes.layout or '?'}'; declare axes='BCHW'-style or use norm='sample'")


@register_guider("cfg-norm")
@dataclass
class CFGNorm(CFGFamily):
    """CFG whose result is scaled down to the conditional prediction's norm where it is longer
    (``strength * g * min(1, ||c|| / ||g||)``); see the module docstring."""

    scale: Scale = 7.5
    strength: float = 1.0
    clamp: bool = True
    norm: str = "channel"
    form: str = "u+w(c-u)"
    space: str | None = "x0"
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.norm, NORMS, "norm")

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if is_neutral(resolve(self.scale, step), self.neutral) and self.clamp and float(self.strength) == 1.0:
            return ("cond",)   # g = c, so the ratio is 1
        return ("cond", "uncond")

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        axes = step.require_axes("cfg-norm", self.axes)
        if self.norm == "channel":
            axes = channel_axes(axes, "cfg-norm")
        g = cfg(c, u, resolve(self.scale, step), self.form)
        ratio = norm(c, axes) / (norm(g, axes) + 1e-8)
        if self.clamp:
            ratio = ratio.clamp(0.0, 1.0)
        return float(self.strength) * g * ratio.to(g.dtype)
