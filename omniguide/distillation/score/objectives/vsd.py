"""Variational score distillation (Wang et al. 2023, "ProlificDreamer", arXiv:2305.16213) and
adversarial score distillation (Wei et al. 2024, "ASD", arXiv:2312.00739).

The scene's gradient uses a trained estimator ``phi`` of the current renders' score as baseline:

    g = w(t) (pred_guided(x_t; y) - pred_phi(x_t; y))      (estimator CFG ``estimator_scale``, 1: cond only)

and the estimator (its own optimizer) minimises, at a fresh ``t'`` and noise ``eps'`` on the
detached renders, in the prior's parameterization (``eps'`` for an eps model):

    L_phi = || pred_phi - target(eps') ||^2 + gamma || pred_phi - sg(pred_prior(x_t'; y)) ||^2

``gamma = 0`` is VSD; ``gamma < 0`` (default -0.75 for ``asd``) pushes the estimator away from
the prior's conditional prediction (ASD's "discriminator"). Both predictions are branches of the
core's executor: the estimator is a branch with its own ``model=``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ....core.branch import Branch
from ....core.errors import ConfigError
from ....core.prediction import Prediction
from ....errors import did_you_mean
from ...registry import register_objective
from ..estimators import ESTIMATOR_KINDS
from .base import Context, Objective


@register_objective("vsd")
@dataclass
class VSD(Objective):
    """``w (guided - pred_phi)`` with a trained estimator (arXiv:2305.16213); see the module docstring."""

    estimator: str = "lora"
    lora_rank: int = 4
    estimator_lr: float = 1e-4
    estimator_scale: float = 1.0
    estimator_t: tuple[float, float] = (0.0, 1.0)
    gamma: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.estimator not in ESTIMATOR_KINDS:
            hint = did_you_mean(self.estimator, ESTIMATOR_KINDS)
            raise ConfigError("estimator", f"unknown estimator '{self.estimator}'{hint}")
        lo, hi = (float(v) for v in self.estimator_t)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError("estimator_t", f"[{lo}, {hi}] must lie in [0, 1]")
        if not -1.0 < self.gamma < 1.0:
            raise ConfigError("gamma", f"must be in (-1, 1) so the estimator's loss stays bounded, got {self.gamma}")

    def branches(self, ctx: Context) -> dict[str, Branch]:
        model = ctx.estimator.call
        return {"estimator": Branch("estimator", dict(ctx.inputs["cond"]), model=model),
                "estimator-uncond": Branch("estimator-uncond", dict(ctx.inputs["uncond"]), model=model)}

    def gradient(self, ctx: Context) -> Tensor:
        if ctx.estimator is None:
            raise ConfigError("objective.name", f"'{self.name}' needs a trained estimator and none was built")
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, _, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        also = ("estimator",) + (("estimator-uncond",) if self.estimator_scale != 1 else ())
        guided, preds = self.guided(ctx, x_t, t, step, also=also, extra=self.branches(ctx))
        space = self.space_for(ctx.prior)
        est = preds["estimator"].to(space)
        if self.estimator_scale != 1:
            u = preds["estimator-uncond"].to(space)
            est = u + self.estimator_scale * (est - u)
        self.term("t", t / ctx.prior.num_train_timesteps)
        return self.weight(noise) * self.term("guided - estimator", guided.to(space) - est)

    def estimator_loss(self, ctx: Context, logs: dict[str, Tensor]) -> Tensor:
        prior, x = ctx.prior, ctx.x.detach()
        lo, hi = (float(v) for v in self.estimator_t)
        n = prior.num_train_timesteps
        t = (lo + (hi - lo) * ctx.draws.rand(x.shape[0])) * n
        t = (t if prior.is_flow else t.floor().clamp(0, n - 1)).to(torch.float32)
        noise = prior.noise_like(t, x)
        eps = ctx.draws.randn(x)
        x_t = noise.alpha * x + noise.sigma * eps
        target = Prediction(eps, "eps", x_t, noise).to(prior.parameterization)
        pred = ctx.estimator.call(x_t, t.to(x.device), dict(ctx.inputs["cond"]))
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        logs["estimator_mse"] = loss.detach()
        if self.gamma != 0:
            step = self.step_at(ctx, x_t, noise, t)
            with torch.no_grad():
                prior_cond = self.predict(ctx, ("cond",), x_t, t, step)["cond"].value
            away = torch.nn.functional.mse_loss(pred.float(), prior_cond.float())
            logs["estimator_to_prior_mse"] = away.detach()
            loss = loss + self.gamma * away
        logs["estimator_loss"] = loss.detach()
        return loss


@register_objective("asd")
@dataclass
class ASD(VSD):
    """VSD with the estimator pushed away from the prior's conditional prediction (``gamma < 0``,
    Wei et al. 2024, arXiv:2312.00739)."""

    gamma: float = -0.75
