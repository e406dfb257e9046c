"""Noise-free score distillation (Katzir et al. 2023, arXiv:2310.17590). With the CFG prediction
``pred_cfg = pred(∅) + s (pred(y) - pred(∅))`` the paper's ``w [s delta_C + delta_D]`` is

    g = w(t) (pred_guided - b),   b = 0 for t < split,   b = pred(neg) otherwise

(``delta_D = pred(∅)`` at small t, ``pred(∅) - pred(neg)`` at large t; the paper splits at
t = 200 of 1000, ``split = 0.2``). Written this way any guider gives ``pred_guided``; for CFG it
is exactly the paper's formula. ``b = 0`` is the zero-noise prediction, converted to ``space``
like every other prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ....core.prediction import Prediction
from ...registry import register_objective
from .base import Context, Objective

NFSD_NEGATIVE = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, "
                 "gloomy")


@register_objective("nfsd")
@dataclass
class NFSD(Objective):
    """``w (guided - b)``, ``b = 0`` below ``split``, the negative prediction above (arXiv:2310.17590)."""

    split: float = 0.2
    negative_prompt: str = NFSD_NEGATIVE

    def prompt_sets(self, prompt: str) -> dict[str, str]:
        return {"negative": self.negative_prompt}

    def gradient(self, ctx: Context) -> Tensor:
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, _, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        high = t >= self.split * ctx.prior.num_train_timesteps
        also = ("negative",) if bool(high.any()) else ()
        guided, preds = self.guided(ctx, x_t, t, step, also=also)
        space = self.space_for(ctx.prior)
        zero = Prediction(torch.zeros_like(x_t), "eps", x_t, noise).to(space)
        baseline = zero
        if also:
            mask = high.to(x_t.device).view(-1, *([1] * (x_t.ndim - 1)))
            baseline = torch.where(mask, preds["negative"].to(space), zero)
        self.term("t", t / ctx.prior.num_train_timesteps)
        self.term("high_t_share", high.float())
        return self.weight(noise) * self.term("guided - baseline", guided.to(space) - baseline)
