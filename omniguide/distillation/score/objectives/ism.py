"""Interval score matching (Liang et al. 2023, "LucidDreamer", arXiv:2311.11284).

``x_s`` is a DDIM inversion of the render ``x`` with the unconditional prediction, from timestep 0
to ``s = t - delta`` in ``inversion_steps`` steps; one more inversion step takes ``x_s`` to ``x_t``
with ``pred(∅; x_s, s)``, which is also the baseline:

    x0_s = (x_s - sigma_s eps_s) / alpha_s,   x_t = alpha_t x0_s + sigma_t eps_s,   eps_s = eps(∅; x_s, s)
    g    = w(t) (pred_guided(x_t; y, t) - pred(∅; x_s, s))           (w = sigma/alpha by default)

The baseline is a branch at another timestep with its own noise level (``Branch(inputs={"sample":
x_s, "timestep": s})``), evaluated in the same executor call as the guided branches (batched when
the model allows); its prediction converts to ``space`` at its own level. LucidDreamer's
defaults: delta_t 50 of 1000 (``delta = 0.05``), ``xs_delta_t`` 200 and 5 inversion steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ....core.branch import Branch
from ....core.errors import ConfigError
from ...registry import register_objective
from .base import Context, Objective


@register_objective("ism")
@dataclass
class ISM(Objective):
    """``w (guided(x_t, t) - pred(∅; x_s, s))`` with DDIM-inverted ``x_s`` (arXiv:2311.11284)."""

    delta: float = 0.05
    inversion_steps: int = 5
    weighting: str = "sigma/alpha"

    def __post_init__(self):
        super().__post_init__()
        if self.inversion_steps < 1:
            raise ConfigError("inversion_steps", f"must be >= 1, got {self.inversion_steps}")
        if not 0 < self.delta < 1:
            raise ConfigError("delta", f"must be in (0, 1), got {self.delta}")

    def invert(self, ctx: Context, t_s: Tensor) -> Tensor:
        """DDIM inversion of the detached render from timestep 0 to ``t_s`` with the unconditional prediction."""
        x = ctx.x.detach()
        prior = ctx.prior
        for k in range(self.inversion_steps):
            t_a = t_s * k / self.inversion_steps
            t_b = t_s * (k + 1) / self.inversion_steps
            a, b = prior.noise_like(t_a, x), prior.noise_like(t_b, x)
            step = self.step_at(ctx, x, a, t_a)
            pred = self.predict(ctx, ("uncond",), x, t_a, step)["uncond"]
            x = b.alpha * pred.x0 + b.sigma * pred.eps
        return x

    def gradient(self, ctx: Context) -> Tensor:
        prior = ctx.prior
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        s = (t - self.delta * prior.num_train_timesteps).clamp_min(0)
        x_s = self.invert(ctx, s)
        noise_s = prior.noise_like(s, x_s)
        step_s = self.step_at(ctx, x_s, noise_s, s)
        at_s = self.predict(ctx, ("uncond",), x_s, s, step_s)["uncond"]
        noise_t = prior.noise_like(t, x_s)
        x_t = noise_t.alpha * at_s.x0 + noise_t.sigma * at_s.eps
        step = self.step_at(ctx, x_t, noise_t, t)
        baseline = Branch("interval", {**ctx.inputs["uncond"], "sample": x_s, "timestep": s.to(x_s.device)},
                          noise=noise_s)
        guided, preds = self.guided(ctx, x_t, t, step, also=("interval",), extra={"interval": baseline})
        space = self.space_for(prior)
        self.term("t", t / prior.num_train_timesteps)
        return self.weight(noise_t) * self.term("guided - interval", guided.to(space) - preds["interval"].to(space))
