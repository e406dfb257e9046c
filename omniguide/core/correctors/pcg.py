"""Predictor-corrector guidance (PCG; Bradley & Nakkiran 2024, "Classifier-Free Guidance is a
Predictor-Corrector", arXiv:2408.09000).

CFG with DDPM or DDIM does not sample the gamma-powered distribution ``p(x|c)^gamma p(x)^(1-gamma)``;
the paper shows CFG behaves like a *predictor* step plus a Langevin *corrector* on that tempered target,
and proposes doing exactly that. Here the predictor is whatever the sampler does (the paper's PCG: DDIM
with the conditional model, i.e. ``CFG(scale=1)`` on a DDIM scheduler), and after every scheduler step
``i -> i+1`` this corrector runs ``steps`` Langevin moves at the new noise level on the tempered target:

    s_gamma = -(gamma eps_c + (1 - gamma) eps_u) / sigma          the tempered score at level i+1
    x      <- x + (eta / 2) s_gamma + sqrt(eta) z,   z ~ N(0, I)
    eta     = step_size * alpha_{i+1}^2 (sigma~_i^2 - sigma~_{i+1}^2)

in the model-input space (``sigma~ = sigma / alpha``, the EDM noise level, so ``eta`` is the step's
variance increment: DDPM's own noise scale at ``step_size = 1``). No correction follows the last step.
NFE: 2 per Langevin move (batched in one pass), counted in the step. ``seed`` seeds the Langevin noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..guider import GuidanceStep
from .base import Corrector, register_corrector


@register_corrector("pcg")
@dataclass
class PCG(Corrector):
    """Langevin corrector steps on ``p(x|c)^gamma p(x)^(1-gamma)`` after every sampler step (arXiv:2408.09000)."""

    gamma: float = 2.0
    steps: int = 1
    step_size: float = 1.0
    cond: str = "cond"
    uncond: str = "uncond"
    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, repr=False, compare=False,
                                         metadata={"config": False})

    def __post_init__(self):
        if int(self.steps) < 0:
            raise ConfigError("steps", f"Langevin steps per sampler step must be >= 0, got {self.steps}")
        if not float(self.step_size) > 0:
            raise ConfigError("step_size", f"must be > 0, got {self.step_size}")
        self._moves = 0

    def reset(self, x: Tensor) -> None:
        self.generator.manual_seed(int(self.seed))
        self._moves = 0

    def tempered_eps(self, preds) -> Tensor:
        g = float(self.gamma)
        return g * preds[self.cond].eps + (1 - g) * preds[self.uncond].eps

    def after_step(self, i, x_next, point, step, preds, result, view, executor, generator) -> Tensor:
        if i + 1 >= step.num_steps or int(self.steps) == 0:
            return x_next
        nxt = view.point(x_next, i + 1)
        noise = nxt.model_noise.to(x_next)
        here = point.model_noise.to(x_next)
        increment = (here.sigma_edm ** 2 - noise.sigma_edm ** 2).clamp_min(0)
        eta = float(self.step_size) * noise.alpha ** 2 * increment
        to_sample = nxt.sample_noise.to(x_next).alpha / noise.alpha
        x = nxt.model_input
        for _ in range(int(self.steps)):
            at = GuidanceStep(x, noise, nxt.timestep, i + 1, step.num_steps, step.axes)
            evaluated = executor([self.cond, self.uncond], x, nxt.timestep, at, accumulate=True)
            score = -self.tempered_eps(evaluated) / noise.sigma
            z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
            x = x + 0.5 * eta * score + eta.sqrt() * z
            self._moves += 1
        return x * to_sample

    def report(self) -> dict:
        return {"pcg": {"gamma": float(self.gamma), "langevin_steps": int(self.steps), "moves": self._moves}}
