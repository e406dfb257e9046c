"""Gradient guidance from a differentiable scorer on the denoised estimate: universal / training-free
guidance (Bansal et al. 2023, "Universal Guidance for Diffusion Models", arXiv:2302.07121; Ye et al.
2024, "TFG: Unified Training-Free Guidance for Diffusion Models", arXiv:2409.15761).

With ``f`` the scorer (one differentiable score per sample, higher is better: a log-likelihood, a
reward) and ``x0(x_t)`` the base guider's denoised estimate:

    mode "forward" (Universal Guidance's forward guidance; TFG's "variance" term):
        eps' = eps - s sigma grad_{x_t} f(x0(x_t))          the gradient flows through the denoiser
    mode "x0" (TFG's "mean" term, no backpropagation through the denoiser):
        x0'  = x0 + s grad_{x0} f(x0)

``recurrence_steps = k`` asks the sampler to run every step ``k`` times, re-noising the result back to
the step's level in between (Universal Guidance's self-recurrence; stateless schedulers only). The base
prediction is any guider's (default: the plain conditional, ``CFG(scale=1)``). The scorer is a plugin
(:mod:`omniguide.core.scorers`): a callable or a registered name -- the testbed's analytic class
log-likelihood, a small classifier's on an image model. A scorer with a non-scalar or non-differentiable
output is a one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, check_choice
from ..guider import GRADIENT, NOISE_LEVEL, RECURRENCE, GuidanceStep, Guider
from ..needs import SCORER
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from ..scorers import build_scorer, check_scores
from .cfg import CFG

MODES = ("forward", "x0")


@register_guider("scorer-guidance")
@dataclass
class ScorerGuidance(Guider):
    """Follow the gradient of ``scorer(x0)`` (see the module docstring)."""

    needs: ClassVar[Mapping[str, str]] = {SCORER: "follows the scorer's gradient"}

    scale: Scale = 1.0
    scorer: Any = field(default=None, metadata={"need": SCORER})
    mode: str = "forward"
    recurrence_steps: int = 1
    guider: Guider = field(default_factory=lambda: CFG(scale=1.0))

    def __post_init__(self):
        if self.scorer is None:
            raise ConfigError("scorer", "scorer-guidance needs a scorer (a callable or a registered name)")
        check_choice(self.mode, MODES, "mode")
        if int(self.recurrence_steps) < 1:
            raise ConfigError("recurrence_steps", f"must be >= 1, got {self.recurrence_steps}")
        self._scorer = build_scorer(self.scorer)

    @property
    def neutral(self) -> float:
        return 0.0

    @property
    def recurrence(self) -> int:
        return max(int(self.recurrence_steps), self.guider.recurrence)

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if self.mode == "forward":
            needs[GRADIENT] = "its forward mode differentiates the scorer through the denoiser"
        if int(self.recurrence_steps) > 1:
            needs[RECURRENCE] = f"recurrence_steps={self.recurrence_steps} repeats every step"
        needs[NOISE_LEVEL] = "scorer guidance reads the step's alpha and sigma"
        return needs

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return self.guider.branches(step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        base = self.guider.combine(preds, step)
        s = resolve(self.scale, step)
        if is_neutral(s, 0.0) or bool((step.noise.alpha == 0).any()):
            return base
        batch = step.x.shape[0]
        if self.mode == "forward":
            score = check_scores(self._scorer(base.x0), batch, "scorer-guidance", gradient=True)
            (grad,) = torch.autograd.grad(score.sum(), step.x)
            return Guided.from_value(base.eps - s * step.noise.sigma * grad, "eps", step.x, step.noise)
        with torch.enable_grad():
            x0 = base.x0.detach().requires_grad_(True)
            score = check_scores(self._scorer(x0), batch, "scorer-guidance", gradient=True)
            (grad,) = torch.autograd.grad(score.sum(), x0)
        return Guided.from_value(base.x0 + s * grad, "x0", step.x, step.noise)
