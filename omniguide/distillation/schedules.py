"""Values annealed over training progress (``progress`` in [0, 1]: step / max_steps).

A value is a number, or ``{values: [a, b], progress: [p0, p1], shape: linear}``: ``a`` until
``p0``, ``b`` from ``p1``, interpolated in between by ``shape`` (``linear``, ``sqrt`` -- HiFA's
square-root annealing -- or ``cosine``). A jump at one point (threestudio's
``max_step_percent: [5000, 0.98, 0.5, 5001]``) is ``progress: [0.5, 0.5]``. Named fields replace
threestudio's positional lists whose int-versus-float entries decide steps versus epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError
from ..io.config import construct, register_conversion

ANNEAL_SHAPES = ("linear", "sqrt", "cosine")


@dataclass(frozen=True)
class Anneal:
    """``values[0]`` before ``progress[0]``, ``values[1]`` after ``progress[1]``, ``shape`` in between."""

    values: tuple[float, float]
    progress: tuple[float, float] = (0.0, 1.0)
    shape: str = "linear"

    def __post_init__(self):
        if len(self.values) != 2 or len(self.progress) != 2:
            raise ConfigError("", "an annealed value needs values: [start, end] and progress: [from, to]")
        p0, p1 = (float(p) for p in self.progress)
        if not 0.0 <= p0 <= p1 <= 1.0:
            raise ConfigError("progress", f"[{p0}, {p1}] must satisfy 0 <= from <= to <= 1")
        if self.shape not in ANNEAL_SHAPES:
            raise ConfigError("shape", f"unknown shape '{self.shape}'; valid: {', '.join(ANNEAL_SHAPES)}")
        if not all(math.isfinite(float(v)) for v in self.values):
            raise ConfigError("values", f"must be finite numbers, got {list(self.values)}")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "progress", (p0, p1))

    def __call__(self, progress: float) -> float:
        a, b = self.values
        p0, p1 = self.progress
        if progress < p0:
            return a
        if progress >= p1:
            return b
        x = (progress - p0) / (p1 - p0)
        f = {"linear": x, "sqrt": math.sqrt(x), "cosine": 0.5 - 0.5 * math.cos(math.pi * x)}[self.shape]
        return a + (b - a) * f


Annealed = float | Anneal


def as_anneal(value: Any, path: str) -> float | Anneal:
    """A number stays a number; a mapping becomes an :class:`Anneal` (errors name ``path``). It is
    the conversion of every config field declared as an :class:`Anneal` (objectives' ``t_min`` ...)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    if isinstance(value, (Anneal, int, float)) and not isinstance(value, bool):
        return value if isinstance(value, Anneal) else float(value)
    if isinstance(value, Mapping):
        return construct(Anneal, value, path, "an annealed value", errors_as="an annealed value takes values, "
                         "progress, shape")
    raise ConfigError(path, f"expected a number or {{values: [a, b], progress: [p0, p1]}}, got {value!r}")


register_conversion(Anneal, as_anneal)


def at(value: float | Anneal, progress: float) -> float:
    """The value at ``progress``."""
    return value(progress) if isinstance(value, Anneal) else float(value)
