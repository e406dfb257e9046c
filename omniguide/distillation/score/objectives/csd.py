"""Classifier score distillation (Yu et al. 2023, "Text-to-3D with Classifier Score Distillation",
arXiv:2310.19415): the classifier score alone, optionally against a negative prompt with an
annealed weight:

    g = w(t) s [ (pred(y) - pred(∅)) - beta(p) (pred(neg) - pred(∅)) ]

``beta`` annealed from 0 to 1 reproduces the official code's coefficient schedule
(cond 1, negative 0 -> -1, null -1 -> 0: ``csd-if.yaml``). ``normalize`` divides each sample's
weighted gradient ``w(t) s [...]`` by its norm, after the weighting as the code's ``grad_normalize``
does, so every sample's gradient has norm 1 under every weighting. The predictions are the core's branch
predictions; CSD has no guided combination, so the guider is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import register_objective
from ...schedules import Annealed, at
from .base import Context, Objective


@register_objective("csd")
@dataclass
class CSD(Objective):
    """``w s [(c - u) - beta (neg - u)]`` (Yu et al. 2023, arXiv:2310.19415)."""

    guidance: float = 1.0
    negative_weight: Annealed = 0.0
    negative_prompt: str = "oversaturated color, ugly, tiling, low quality, noisy"
    normalize: bool = False
    weighting: str = "uniform"

    def prompt_sets(self, prompt: str) -> dict[str, str]:
        return {"negative": self.negative_prompt}

    def gradient(self, ctx: Context) -> Tensor:
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, _, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        beta = at(self.negative_weight, ctx.progress)
        names = ("cond", "uncond") + (("negative",) if beta != 0 else ())
        preds = self.predict(ctx, names, x_t, t, step)
        space = self.space_for(ctx.prior)
        c, u = preds["cond"].to(space), preds["uncond"].to(space)
        g = self.term("cond - uncond", c - u)
        if beta != 0:
            g = g - beta * self.term("negative - uncond", preds["negative"].to(space) - u)
        g = self.weight(noise) * self.guidance * g
        if self.normalize:
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, *([1] * (g.ndim - 1)))
        self.term("t", t / ctx.prior.num_train_timesteps)
        self.term("negative_weight", torch.tensor(beta))
        return g
