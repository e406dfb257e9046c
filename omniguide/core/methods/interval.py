"""Guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models", arXiv:2404.07724).

Guide only while a coordinate lies in ``[low, high]``; elsewhere return the fallback branch, so
those steps cost one forward pass. The paper's SDXL interval is ``sigma in (0.28, 5.42]``.

The coordinate is ``sigma`` (EDM-equivalent, path independent), ``t`` (model time) or ``step``
(``index / (num_steps - 1)``: 0 at the first step, 1 at the last). When the noise level is a tensor (per frame,
per token) the interval applies element-wise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..guider import NOISE_LEVEL, STEP_INDEX, GuidanceStep, Guider, passthrough
from ..noise import COORDINATES, coordinate_range
from ..prediction import Guided, Prediction
from ..registry import register_guider
from .common import Wrapper


@register_guider("interval")
@dataclass
class Interval(Wrapper):
    """Apply ``guider`` only where ``low <= coordinate <= high``; give exactly one of sigma, t, step."""

    guider: Guider
    sigma: tuple[float, float] | None = None
    t: tuple[float, float] | None = None
    step: tuple[float, float] | None = None

    def __post_init__(self):
        given = [c for c in COORDINATES if getattr(self, c) is not None]
        if len(given) != 1:
            raise ConfigError("", f"give exactly one of sigma=, t=, step= (got {given or 'none'})")
        self.coordinate = given[0]
        bounds = getattr(self, self.coordinate)
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigError(self.coordinate, f"expected [low, high], got {bounds!r}") from None
        lo_ok, hi_ok = coordinate_range(self.coordinate)
        if not (lo_ok <= low <= high <= hi_ok):
            raise ConfigError(
                self.coordinate,
                f"interval [{low}, {high}] is outside the coordinate's range [{lo_ok}, {hi_ok}] or reversed",
            )
        self.bounds = (low, high)

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if self.coordinate == "step":
            needs[STEP_INDEX] = "the interval is over the 'step' coordinate (use 'sigma' or 't')"
        if self.coordinate == "sigma":
            needs[NOISE_LEVEL] = "the interval is over the 'sigma' coordinate (use 't' or 'step')"
        return needs

    def inside(self, step: GuidanceStep) -> torch.Tensor:
        value = step.coordinate(self.coordinate)
        return (value >= self.bounds[0]) & (value <= self.bounds[1])

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        mask = self.inside(step)
        if not bool(mask.any()):
            return (self.fallback,)
        needed = self.guider.branches(step)
        if not bool(mask.all()) and self.fallback not in needed:
            needed = (*needed, self.fallback)
        return needed

    def follow_up(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> dict:
        """The wrapped guider's follow-up round, only where it guides."""
        return self.guider.follow_up(preds, step) if bool(self.inside(step).any()) else {}

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        mask = self.inside(step)
        if not bool(mask.any()):
            return passthrough(preds, step, self.fallback)
        inner = self.guider.combine(preds, step)
        if bool(mask.all()):
            return inner
        off = passthrough(preds, step, self.fallback)
        mask = mask.to(inner.x0.device)
        return Guided(
            torch.where(mask, inner.x0, off.x0), torch.where(mask, inner.eps, off.eps),
            step.x, step.noise, consistent=inner.consistent,
        )
