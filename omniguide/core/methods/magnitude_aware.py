"""Magnitude-aware guidance (RAAG, "Ratio-aware adaptive guidance", arXiv:2508.03442; the same rule is
diffusers' ``MagnitudeAwareGuidance`` (MAMBO-G) and kijai's WanVideoWrapper RAAG).

The scale falls as the guidance direction grows relative to the unconditional prediction, per
sample over the declared axes, in ``space`` (default: the model's own output, as diffusers):

    r    = ||c - u|| / ||u||
    w'   = 1 + (w - 1) exp(-alpha r)          form "u+w(c-u)":  pred = u + w' (c - u)
    w'   = w exp(-alpha r)                    form "c+w(c-u)":  pred = c + w' (c - u)

``w = 10``, ``alpha = 8`` are diffusers' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..axes import Axes, norm
from ..guider import GuidanceStep
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg


@register_guider("magnitude-aware")
@dataclass
class MagnitudeAware(CFGFamily):
    """CFG with ``w' = 1 + (w - 1) exp(-alpha ||c - u|| / ||u||)`` per sample (arXiv:2508.03442)."""

    scale: Scale = 10.0
    alpha: float = 8.0
    form: str = "u+w(c-u)"
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        axes = step.require_axes("magnitude-aware", self.axes)
        ratio = norm(c - u, axes) / norm(u, axes).clamp_min(1e-12)
        decay = torch.exp(-float(self.alpha) * ratio).to(c.dtype)
        w = resolve(self.scale, step)
        w = (1 + (w - 1) * decay) if self.form == "u+w(c-u)" else w * decay
        return cfg(c, u, w, self.form)
