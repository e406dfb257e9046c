"""Adaptive guidance (Castillo et al. 2023, "Adaptive Guidance: Training-free Acceleration of
Conditional Diffusion Models", arXiv:2312.12487).

Late in sampling the conditional and unconditional predictions point the same way, and guidance
stops changing the result. Wrap any cond/uncond guider; at each guided step measure

    gamma = <c, u> / (||c|| ||u||)              per sample over the declared axes, in ``space``

and once ``gamma >= threshold`` for a sample, that sample takes the conditional prediction for the
rest of the run (CFG scale 1). When every sample (every frame, with per-frame axes) has agreed,
``branches()`` stops asking for ``uncond``: the remaining steps cost one forward pass.

``space="x0"`` by default: measured on the Gaussian-mixture testbed, the eps predictions of both
branches are ``~ x / sigma`` at high noise (cosine ~ 1 from the first step, identical at a flow
model's ``t = 1``), so an eps-space threshold trips at once; in x0 the cosine rises from ~0.65 to 1
as sampling proceeds, which is the signal the method needs.

``agreement="batch"`` measures one cosine over the whole flattened batch instead (as
ComfyUI-Adaptive-Guidance does): all samples leave guidance together, so the saving starts as soon
as the batch as a whole agrees rather than when its slowest sample does.

The agreement mask is state: reset per run (``reset()``, and at step 0), and refused for score
distillation (no step index). ``threshold = 0.99`` is ComfyUI-Adaptive-Guidance's default; the paper
searches thresholds near 1 (the exact value it uses is not verified here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..axes import Axes, as_axes, dot, norm
from ..errors import ConfigError, GuidanceError, check_choice
from ..guider import GuidanceStep, Guider, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from .cfg import CFG
from .common import Wrapper, check_space, in_space

AGREEMENTS = ("per-sample", "batch")


def cosine(a: Tensor, b: Tensor, axes: Axes) -> Tensor:
    """``<a, b> / (||a|| ||b||)`` over ``axes.reduce``, kept dims for broadcasting."""
    return dot(a, b, axes) / (norm(a, axes) * norm(b, axes)).clamp_min(1e-12)


@register_guider("adaptive")
@dataclass
class Adaptive(Wrapper):
    """Run ``guider`` until cond and uncond agree (cosine >= ``threshold``), then the conditional
    prediction alone (Castillo et al. 2023, arXiv:2312.12487); see the module docstring."""

    guider: Guider = field(default_factory=CFG)
    threshold: float = 0.99
    space: str | None = "x0"
    axes: Axes | str | tuple | None = None
    agreement: str = "per-sample"
    _agreed: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    stateful = True

    def __post_init__(self):
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError("threshold", f"a cosine similarity in [-1, 1], got {self.threshold}")
        if self.guider.fallback != "cond":
            raise ConfigError("guider",
                              f"adaptive needs a guider that falls back to 'cond', not '{self.guider.fallback}'")
        check_choice(self.agreement, AGREEMENTS, "agreement")
        self.space = check_space(self.space)
        self.axes = as_axes(self.axes)

    def reset(self) -> None:
        self._agreed = None
        self.guider.reset()

    def _state(self, step: GuidanceStep) -> Tensor | None:
        if step.index is None:
            raise GuidanceError(f"adaptive: needs a sampler step index, but this is {step.where}")
        if step.index == 0:
            self._agreed = None
        return self._agreed

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        agreed = self._state(step)
        if agreed is not None and bool(agreed.all()):
            return ("cond",)
        return self.guider.branches(step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        agreed = self._state(step)
        if "uncond" not in preds:  # everyone agreed, or the inner guider is off this step
            done = agreed is not None and bool(agreed.all())
            return passthrough(preds, step) if done else self.guider.combine(preds, step)
        result = self.guider.combine(preds, step)
        axes = step.require_axes("adaptive", self.axes)
        _, (c, u) = in_space(preds, self.space, "cond", "uncond")
        if self.agreement == "batch":
            now = cosine(c.reshape(1, -1), u.reshape(1, -1), Axes((1,))) >= self.threshold
            now = now.reshape([1] * c.ndim).expand_as(cosine(c, u, axes))
        else:
            now = cosine(c, u, axes) >= self.threshold
        if agreed is not None:  # samples that agreed earlier already left guidance
            off = passthrough(preds, step)
            mask = agreed.to(result.x0.device)
            result = Guided(torch.where(mask, off.x0, result.x0), torch.where(mask, off.eps, result.eps),
                            step.x, step.noise, result.consistent)
            now = now | agreed
        self._agreed = now
        return result
