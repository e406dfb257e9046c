"""Scales: a number, a schedule over a named coordinate, or a tensor broadcast against the sample.

A schedule moves a guidance scale away from its *neutral* value (the scale at which the method
returns the conditional prediction: 1 for ``u + w(c - u)``, 0 for ``c + w(c - u)``) by a shape
``f`` with mean 1 over the noise range, so the average guidance strength is unchanged
(Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight Schedulers", arXiv:2404.13040):

    w(x) = neutral + (w - neutral) * f(x),   x in [0, 1], x = 1 at pure noise

* ``constant``: ``f = 1``
* ``linear``:   ``f = 2 (1 - x)``          (guidance grows as noise falls)
* ``cosine``:   ``f = cos(pi x) + 1``

``x`` is ``t``, ``1 - step`` (samplers) or ``1 - progress`` (score distillation: training
progress in [0, 1]; like ``step``, a ``linear`` schedule over ``progress`` grows from ``neutral`` at the
start of training to ``neutral + 2 (w - neutral)`` at the end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

SHAPES = ("constant", "linear", "cosine")
SCHEDULE_COORDINATES = ("t", "step", "progress")


@dataclass(frozen=True)
class ScaleSchedule:
    """A scale that varies over a coordinate (``t``, ``step`` or ``progress``); see the module docstring."""

    scale: float
    shape: str = "linear"
    coordinate: str = "t"
    neutral: float = 1.0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ConfigError("shape", f"unknown schedule shape '{self.shape}'; valid: {', '.join(SHAPES)}")
        if self.coordinate not in SCHEDULE_COORDINATES:
            raise ConfigError(
                "coordinate",
                f"a scale schedule needs a coordinate on [0, 1] ('t', 'step' or 'progress'), got '{self.coordinate}'",
            )

    def __call__(self, step) -> Tensor:
        # x = 1 at pure noise: 1 - step (1 at the first step, 0 at the last), or t
        x = step.coordinate("t") if self.coordinate == "t" else 1.0 - step.coordinate(self.coordinate)
        f = shape_factor(self.shape, x)
        return self.neutral + (self.scale - self.neutral) * f


def shape_factor(shape: str, x: Tensor) -> Tensor:
    if shape == "constant":
        return torch.ones_like(x)
    if shape == "linear":
        return 2.0 * (1.0 - x)
    if shape == "cosine":
        return torch.cos(math.pi * x) + 1.0
    raise ConfigError("shape", f"unknown schedule shape '{shape}'; valid: {', '.join(SHAPES)}")


Scale = float | int | Tensor | ScaleSchedule


def resolve(scale: Scale, step) -> float | Tensor:
    """The scale's value at this step: a float or a tensor broadcastable to the sample."""
    if isinstance(scale, ScaleSchedule):
        value = scale(step)
        return value.to(step.x.dtype).to(step.x.device) if isinstance(value, Tensor) else value
    if isinstance(scale, Tensor):
        return scale.to(device=step.x.device, dtype=step.x.dtype)
    return float(scale)


def is_neutral(value: float | Tensor, neutral: float) -> bool:
    """True when a resolved scale makes the method return the base prediction everywhere."""
    if isinstance(value, Tensor):
        return bool(torch.all(value == neutral))
    return math.isclose(value, neutral, abs_tol=1e-12)
