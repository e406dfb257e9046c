"""CFG with a cached guidance residual (after FasterCache's CFG-Cache, Lv et al. 2024, "FasterCache:
Training-Free Video Diffusion Model Acceleration with High Quality", arXiv:2410.19355).

The residual ``d = c - u`` changes slowly between neighbouring steps, so it is computed on a full
step (cond + uncond) and reused for the next ``every - 1`` steps, where only ``cond`` runs:

    full step i:      d = c_i - u_i                      (cached, in ``space``; default the model's own)
    cached step j:    d_j = low(d) * low_weight + high(d) * high_weight
    pred              = c_j + (w - 1) d_j                 (= u + w (c - u) with u = c - d)

``low`` / ``high`` are the two bands of :func:`fdg.split_bands` (FFT, radius ``cutoff`` relative to
Nyquist; 0.4 is about FasterCache's ``min(H, W) // 5``) over the frequency axes, used only when a
weight is not 1. ``high_weight = 0`` reuses only the smooth part of the residual, whose
high-frequency detail goes stale fastest; FasterCache instead reweights both bands over time.
With ``every = k`` the uncond branch runs on ``ceil(N / k)`` of ``N`` guided steps.

The cache is state: reset per run (``reset()`` and step 0), refused for score distillation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..axes import Axes
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import CFGFamily, cfg, cfg_branches, guided_in, in_space
from .fdg import merge_bands, split_bands


@register_guider("cfg-cache")
@dataclass
class CFGCache(CFGFamily):
    """CFG whose residual ``c - u`` is recomputed every ``every`` steps and reused in between
    (after FasterCache, arXiv:2410.19355); see the module docstring."""

    scale: Scale = 7.5
    every: int = 2
    low_weight: float = 1.0
    high_weight: float = 1.0
    cutoff: float = 0.4
    form: str = "u+w(c-u)"
    space: str | None = None
    axes: Axes | str | tuple | None = None
    _cache: tuple[int, Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    stateful = True

    def __post_init__(self):
        super().__post_init__()
        if int(self.every) < 1:
            raise ConfigError("every", f"recompute the residual every k >= 1 steps, got {self.every}")

    def reset(self) -> None:
        self._cache = None

    def fresh(self, step: GuidanceStep) -> bool:
        """True when this step recomputes the residual (no cache, or it is ``every`` steps old)."""
        if step.index is None:
            raise GuidanceError(f"cfg-cache: needs a sampler step index, but this is {step.where}")
        return step.index == 0 or self._cache is None or step.index - self._cache[0] >= int(self.every)

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        needed = cfg_branches(self, step)
        return needed if len(needed) == 1 or self.fresh(step) else ("cond",)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        w = resolve(self.scale, step)
        if is_neutral(w, self.neutral):
            return passthrough(preds, step)
        if "uncond" in preds:
            kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
            self._cache = (step.index, c - u)
            return guided_in(cfg(c, u, w, self.form), step, kind, "cfg-cache")
        if self._cache is None:
            raise GuidanceError(f"cfg-cache: no cached residual at {step.where}; 'uncond' is needed")
        kind, (c,) = in_space(preds, self.space, "cond")
        d = self._cache[1]
        if self.low_weight != 1.0 or self.high_weight != 1.0:
            dims = step.require_axes("cfg-cache", self.axes).frequency
            high, low = split_bands(d, dims, 2, "fft", self.cutoff)
            d = merge_bands([self.high_weight * high, self.low_weight * low], dims, "fft")
        return guided_in(cfg(c, c - d, w, self.form), step, kind, "cfg-cache")
