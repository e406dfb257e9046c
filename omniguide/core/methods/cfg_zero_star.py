"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models",
arXiv:2503.18886).

Optimized scale: per sample, over the declared axes,

    s*   = <c, u> / (||u||^2 + 1e-8)
    pred = s* u + w (c - s* u)          form "u+w(c-u)" (paper, diffusers default)
    pred = c + w (c - s* u)             form "c+w(c-u)"  (diffusers' original formulation)

Zero-init: the first ``zero_init_steps`` sampler steps output zero (``index < zero_init_steps``) in
``space`` -- the flow velocity in the paper, so a flow sampler holds ``x`` still there. Such a step
needs no model evaluation: ``branches()`` returns ``()`` and the step costs no forward pass (with
``space=None`` it runs the cond branch once, only to learn the model's parameterization).

Counting convention: the reference code zeroes ``i <= zero_steps`` (``zero_steps=0`` zeroes step 0),
diffusers ``step < zero_init_steps`` (default 1). omniguide counts like diffusers: ``zero_init_steps``
is the *number* of zeroed steps, and the reference's ``zero_steps=k`` is ``zero_init_steps=k + 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..axes import Axes, dot
from ..errors import ConfigError
from ..guider import GuidanceStep, guided
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg, cfg_branches


def optimized_scale(cond: Tensor, uncond: Tensor, axes: Axes) -> Tensor:
    """``s* = <c, u> / (||u||^2 + 1e-8)`` per sample over ``axes.reduce`` (the projection of c on u)."""
    return dot(cond, uncond, axes) / (dot(uncond, uncond, axes) + 1e-8)


@register_guider("cfg-zero-star")
@dataclass
class CFGZeroStar(CFGFamily):
    """``s* u + w (c - s* u)`` with ``s* = <c,u>/||u||^2``, and zero output for the first
    ``zero_init_steps`` steps (Fan et al. 2025, arXiv:2503.18886).

    ``space``: where ``s*`` and the zero output live, ``"flow"`` (the paper) by default; ``None``
    uses the model's own output as diffusers does. Zero-init needs a step index, so it does not
    apply to score-distillation queries."""

    scale: Scale = 4.0
    zero_init_steps: int = 1
    form: str = "u+w(c-u)"
    space: str | None = "flow"
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        if int(self.zero_init_steps) < 0:
            raise ConfigError("zero_init_steps", f"must be >= 0, got {self.zero_init_steps}")

    def zeroed(self, step: GuidanceStep) -> bool:
        return step.index is not None and step.index < int(self.zero_init_steps)

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if self.zeroed(step):
            # the output is zero whatever the model says: no pass at all -- except that with
            # space=None one cond pass tells which parameterization "zero" is in
            return () if self.space else ("cond",)
        return cfg_branches(self, step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if self.zeroed(step):
            kind = self.space or preds["cond"].kind
            return guided(torch.zeros_like(step.x), step, kind)
        return super().combine(preds, step)

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        u = optimized_scale(c, u, step.require_axes("cfg-zero-star", self.axes)) * u
        return cfg(c, u, resolve(self.scale, step), self.form)
