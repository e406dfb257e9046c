"""Score distillation sampling (Poole et al. 2022, "DreamFusion", arXiv:2209.14988):

    g = w(t) (pred_guided(x_t; y, t) - eps),    x_t = alpha_t x + sigma_t eps

with ``pred_guided`` from *any* registered guider (CFG, APG, CFG-rescale, intervals, terms ...),
in ``space`` (``eps``; for flow priors ``flow``: ``w (v_guided - (eps - x))``). threestudio's
default scale 100 is in the ``c + s (c - u)`` form: ``CFG(scale=101)`` here, or
``CFG(scale=100, form="c+w(c-u)")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ....core.prediction import Prediction
from ...registry import register_objective
from .base import Context, Objective


@register_objective("sds")
@dataclass
class SDS(Objective):
    """``w(t) (guided - eps)`` (DreamFusion, arXiv:2209.14988)."""

    def gradient(self, ctx: Context) -> Tensor:
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, eps, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        guided, preds = self.guided(ctx, x_t, t, step)
        space = self.space_for(ctx.prior)
        baseline = Prediction(eps, "eps", x_t, noise).to(space)
        w = self.weight(noise)
        self.term("t", t / ctx.prior.num_train_timesteps)
        if "uncond" in preds:
            self.term("cond - uncond", preds["cond"].to(space) - preds["uncond"].to(space))
        return w * self.term("guided - noise", guided.to(space) - baseline)
