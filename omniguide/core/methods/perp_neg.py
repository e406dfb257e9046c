"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm: Transform 2D Diffusion
into 3D, alleviate Janus problem and Beyond", arXiv:2304.04968).

Negative prompts act only through the part of their direction that is perpendicular to the
positive one, so a negative that shares content with the positive does not remove it. With ``u``
the unconditional (empty-prompt) prediction, ``c`` the positive and ``n_i`` the negatives, per
sample over the declared axes:

    d      = c - u,     d_i = n_i - u
    perp_i = d_i - (<d_i, d> / ||d||^2) d
    pred   = u + w (d - sum_i w_i perp_i)                      w_i >= 0 push away from n_i

The negatives are named branches with their own weights (``negatives={"negative": 1.0}``; a weight
may be a per-sample tensor, e.g. view-dependent weights in score distillation, where the other
views' prompts are the negatives -- the known remedy for multi-face 3D results). Forms elsewhere:
threestudio's ``PerpNeg`` SDS writes ``u + w (d + sum_i w_i perp_i)`` with *negative* weights (the
same rule with ``w_i`` negated) and takes the projection over the whole batch; ComfyUI's
``PerpNegGuider`` (cfg 8, neg_scale 1) applies it to denoised (x0) predictions, also over the whole
batch. Here the projection is per sample over the declared axes, in ``space`` (default ``None``, the
model's own output: the paper's score space for eps models, the velocity for flow models, where eps
has no x0 at pure noise; ``"x0"`` is ComfyUI's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..axes import Axes, as_axes, dot
from ..errors import ConfigError
from ..guider import GuidanceStep, Guider, passthrough
from ..needs import NEGATIVE
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import check_space, guided_in, in_space


def perpendicular(v, onto, axes: Axes):
    """``v - (<v, o> / ||o||^2) o`` per sample over ``axes.reduce`` (``o = 0`` leaves ``v``)."""
    coeff = dot(v, onto, axes) / dot(onto, onto, axes).clamp_min(1e-12)
    return v - coeff.to(v.dtype) * onto


@register_guider("perp-neg")
@dataclass
class PerpNeg(Guider):
    """``u + w (d - sum_i w_i perp(n_i - u, d))`` with ``d = c - u`` (arXiv:2304.04968); see the module
    docstring. ``negatives`` maps negative branch names to weights; ``uncond`` names the empty-prompt branch."""

    needs: ClassVar[Mapping[str, str]] = {NEGATIVE: "guides away from negative branches (default: 'negative')"}

    scale: Scale = 7.5
    negatives: Mapping[str, Any] = field(default_factory=lambda: {"negative": 1.0})
    uncond: str = "uncond"
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        if not self.negatives:
            raise ConfigError("negatives", "give at least one negative branch and its weight, e.g. {'negative': 1}")
        for name in self.negatives:
            if name in ("cond", self.uncond):
                raise ConfigError(f"negatives.{name}", "a negative cannot be the positive or the unconditional branch")
        self.negatives = dict(self.negatives)
        self.space = check_space(self.space)
        self.axes = as_axes(self.axes)

    def active(self, step: GuidanceStep) -> dict[str, Any]:
        weights = {name: resolve(w, step) for name, w in self.negatives.items()}
        return {name: w for name, w in weights.items() if not is_neutral(w, 0.0)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        active = self.active(step)
        if is_neutral(resolve(self.scale, step), 1.0) and not active:
            return ("cond",)
        return ("cond", self.uncond, *active)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if self.uncond not in preds:
            return passthrough(preds, step)
        axes = step.require_axes("perp-neg", self.axes)
        active = self.active(step)
        kind, (c, u, *negs) = in_space(preds, self.space, "cond", self.uncond, *active)
        d = c - u
        direction = d
        for w, n in zip(active.values(), negs):
            direction = direction - w * perpendicular(n - u, d, axes)
        return guided_in(u + resolve(self.scale, step) * direction, step, kind, "perp-neg")
