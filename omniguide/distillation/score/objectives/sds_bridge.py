"""Score distillation as a bridge between image distributions (McAllister et al. 2024,
"Rethinking Score Distillation as a Bridge Between Image Distributions", arXiv:2406.09417).

Two stages. Until ``stage_two`` (a training-progress fraction) it is SDS with the target prompt
(``prompt + target_modifier``). From then on the baseline is the *source* distribution -- the
same prompt with a degradation phrase -- instead of the injected noise:

    g = w(t) lambda (pred_guided(x_t; y + tgt) - pred_guided(x_t; y + src))

Both terms come from the same guider; for CFG at scale ``s`` this is the reference code's
``w lambda s (pred(y + tgt) - pred(y + src))``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ....core.prediction import Prediction
from ...registry import register_objective
from .base import Context, Objective

DEGRADATION = ", oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"


@register_objective("sds-bridge")
@dataclass
class SDSBridge(Objective):
    """SDS, then ``w lambda (guided(y + tgt) - guided(y + src))`` from ``stage_two`` on (arXiv:2406.09417)."""

    stage_two: float = 0.5
    source_modifier: str = DEGRADATION
    target_modifier: str = ", detailed high resolution, high quality, sharp"
    bridge_scale: float = 1.0
    source_prompt: str | None = None
    weighting: str = "uniform"

    def prompt_sets(self, prompt: str) -> dict[str, str]:
        """Per-view prompts (``{prompt}`` is each view's prompt) with the modifiers appended;
        ``source_prompt`` replaces the source entirely (e.g. ``""``: the unconditional
        distribution, for priors whose vocabulary has no words for degradations)."""
        source = self.source_prompt if self.source_prompt is not None else "{prompt}" + self.source_modifier
        return {"source": source, "target": "{prompt}" + self.target_modifier}

    def gradient(self, ctx: Context) -> Tensor:
        t = self.sample_timesteps(ctx, ctx.x.shape[0])
        x_t, eps, noise = self.noisy(ctx, t)
        step = self.step_at(ctx, x_t, noise, t)
        space = self.space_for(ctx.prior)
        target, _ = self.guided(ctx, x_t, t, step, cond="target")
        self.term("t", t / ctx.prior.num_train_timesteps)
        if ctx.progress < self.stage_two:
            baseline = Prediction(eps, "eps", x_t, noise).to(space)
            return self.weight(noise) * self.term("target - noise", target.to(space) - baseline)
        source, _ = self.guided(ctx, x_t, t, step, cond="source")
        diff = self.term("target - source", target.to(space) - source.to(space))
        return self.weight(noise) * self.bridge_scale * diff
