"""Rectified-flow score distillation (Yang et al. 2024, "Text-to-Image Rectified Flow as Plug-and-Play
Priors", arXiv:2406.03293), for flow-matching priors (SD3, the zoo prior trained as flow):

    x_t = (1 - t) x + t n,     L = w(t) || (n - x) - sg(v_guided(x_t; y, t)) ||^2
    g   = dL/dx = 2 w(t) (v_guided - (n - x))

i.e. the flow-space SDS gradient with twice the weight (``eps_guided - n = (1 - t)(v_guided - (n - x))``).
The reference code (``RFDS_sd3.py``) uses CFG 100 and t in [0.3, 0.98]. Here t is drawn uniformly in
that range (``t_sampling: uniform``, the default) with uniform weighting; ``t_sampling: logit-normal``
draws ``sigmoid(N(0, 1))`` mapped into it instead. The value of ``L`` is logged (``rfds_loss``); it is
a real objective value.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ...registry import register_objective
from ...schedules import Annealed
from .base import Context, Objective


@register_objective("rfds")
@dataclass
class RFDS(Objective):
    """``2 w (v_guided - (n - x))`` on a rectified-flow prior (arXiv:2406.03293)."""

    needs_flow = True
    t_min: Annealed = 0.3          # the reference range; annealed like every objective's
    t_max: Annealed = 0.98
    weighting: str = "uniform"

    def gradient(self, ctx: Context) -> Tensor:
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, n, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        guided, _ = self.guided(ctx, x_t, t, step)
        v = guided.to("flow")
        residual = self.term("v_guided - (n - x)", v - (n - ctx.x.detach()))
        w = self.weight(noise)
        self.term("t", t / ctx.prior.num_train_timesteps)
        self.term("rfds_loss", (w * residual ** 2).flatten(1).sum(1))
        return 2 * w * residual
