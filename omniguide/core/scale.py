"""Scales: a number, a schedule over a named coordinate, or a tensor broadcast against the sample.

Any object deriving from :class:`DynamicScale` is a scale too: its value is computed from the
step (a :class:`ScaleSchedule`, a :class:`Piecewise` schedule over steps or noise-level bins, or
maps over the sample's declared axes such as the video modality's per-frame ramps and regions).
Dynamic scales are registered by name (``{name: piecewise, values: [...], at: [...]}`` in configs,
:data:`SCALES`; ``@register_scale("name")`` adds one).
A tensor scale must broadcast to the sample; one that does not is a one-line error.

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

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..io.config import Registry, construct, declared_types, describe, register_conversion
from .errors import ConfigError, GuidanceError

SHAPES = ("constant", "linear", "cosine")
SCHEDULE_COORDINATES = ("t", "step", "progress")


class DynamicScale:
    """Base of scales computed at each step: ``scale(step) -> float | Tensor`` (a tensor broadcast
    against the sample). ``reads_step`` / ``reads_noise`` are True when the value depends on the
    sampler's step index / on the noise level (the ``sigma`` coordinate)."""

    reads_step: bool = False
    reads_noise: bool = False

    def __call__(self, step):
        raise NotImplementedError


@dataclass(frozen=True)
class ScaleSchedule(DynamicScale):
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

    @property
    def reads_step(self) -> bool:
        return self.coordinate == "step"

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


@dataclass(frozen=True)
class Piecewise(DynamicScale):
    """A piecewise-constant scale over sampling steps or noise-level bins: ``values[i]`` in bin ``i``.

    ``coordinate`` ``t`` or ``sigma`` (falling during sampling): ``at`` is descending and bin ``i``
    is where ``at[i] <= x`` first holds (below every threshold: the last bin) -- LTX-Video's
    ``guidance_timesteps`` rule (``guidance_scale: [1, 1, 6, 8, 6, 1, 1]`` at
    ``[1.0, 0.996, 0.9933, 0.985, 0.9767, 0.9008, 0.618]``), and Wan 2.2's expert switch
    (``values = (high, low)``, ``at = (boundary, 0)``). ``coordinate`` ``step`` (rising from 0 to 1):
    ``at`` is ascending and bin ``i`` is the last with ``at[i] <= step``."""

    values: tuple[float, ...]
    at: tuple[float, ...]
    coordinate: str = "t"

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "at", tuple(float(v) for v in self.at))
        if self.coordinate not in ("t", "sigma", "step"):
            raise ConfigError("coordinate", f"a piecewise scale runs over t, sigma or step, got '{self.coordinate}'")
        if len(self.values) != len(self.at) or not self.values:
            raise ConfigError("at", f"{len(self.at)} bin starts for {len(self.values)} values (give one per value)")
        rising = self.coordinate == "step"
        pairs = list(zip(self.at, self.at[1:]))
        if not all((a < b) if rising else (a > b) for a, b in pairs):
            order = "ascending" if rising else "descending"
            raise ConfigError("at", f"bin starts over '{self.coordinate}' must be strictly {order}, "
                              f"got {list(self.at)}")

    @property
    def reads_step(self) -> bool:
        return self.coordinate == "step"

    @property
    def reads_noise(self) -> bool:
        return self.coordinate == "sigma"

    def index(self, x: Tensor) -> Tensor:
        """The bin of each value of the coordinate ``x`` (compared in ``x``'s precision, as
        LTX-Video compares its float32 timesteps with the thresholds)."""
        x = torch.as_tensor(x).detach().cpu()
        x = x if x.is_floating_point() else x.double()
        at = torch.tensor(self.at, dtype=x.dtype)
        if self.coordinate == "step":
            return (torch.searchsorted(at, x.reshape(-1), right=True) - 1).clamp(0, len(at) - 1).reshape(x.shape)
        below = x.unsqueeze(-1) >= at                  # at descending: the first threshold <= x
        first = torch.where(below.any(-1), below.int().argmax(-1), torch.full(x.shape, len(at) - 1))
        return first

    def __call__(self, step):
        index = self.index(step.coordinate(self.coordinate))
        values = torch.tensor(self.values, dtype=torch.float64)[index]
        return float(values) if values.ndim == 0 else values


Scale = float | int | Tensor | DynamicScale


@functools.cache
def scale_fields(cls: type) -> tuple[tuple[str, tuple[type, ...]], ...]:
    """``(field, declared classes)`` of the dataclass ``cls``'s fields declared as a :data:`Scale`."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):   # a user's class whose annotations do not resolve: nothing to check
        return ()
    declared = {f.name: declared_types(hints.get(f.name)) for f in dataclasses.fields(cls)}
    return tuple((name, kinds) for name, kinds in declared.items() if DynamicScale in kinds)


def check_scales(obj: Any) -> None:
    """Each scale field of ``obj`` holds a finite number, a tensor or a schedule (or None where declared
    so), as on the recipe path: ``APG(scale=None)`` or ``CFG(scale="7")`` is a ConfigError at the field."""
    for name, kinds in scale_fields(type(obj)):
        value = getattr(obj, name)
        if isinstance(value, bool) or (not math.isfinite(value) if isinstance(value, numbers.Real)
                                       else not isinstance(value, kinds)):
            raise ConfigError(name, f"{type(obj).__name__} takes a finite number, a tensor or a scale schedule, "
                                    f"got {describe(value)}")


def check_broadcast(value: Tensor, sample: Tensor, who: str = "scale") -> None:
    """A tensor scale must broadcast to the sample's shape (it may not grow the sample)."""
    try:
        shape = torch.broadcast_shapes(value.shape, sample.shape)
    except RuntimeError:
        shape = None
    if shape != sample.shape:
        raise GuidanceError(f"{who} of shape {tuple(value.shape)} does not broadcast to the sample "
                            f"{tuple(sample.shape)}")


def resolve(scale: Scale, step) -> float | Tensor:
    """The scale's value at this step: a float or a tensor broadcastable to the sample."""
    dynamic = isinstance(scale, DynamicScale)
    value = scale(step) if dynamic else scale
    if not isinstance(value, Tensor):
        return value if dynamic else float(value)
    value = value.to(device=step.x.device, dtype=step.x.dtype)
    if value.ndim:
        check_broadcast(value, step.x, f"{type(scale).__name__} scale" if dynamic else "scale")
    return value


def is_neutral(value: float | Tensor, neutral: float) -> bool:
    """True when a resolved scale makes the method return the base prediction everywhere."""
    if isinstance(value, Tensor):
        return bool(torch.all(value == neutral))
    return math.isclose(value, neutral, abs_tol=1e-12)


SCALES = Registry("scale")


def register_scale(name: str):
    """Class decorator: make a :class:`DynamicScale` dataclass buildable by name in a guider's
    scale fields (``scale: {name: ..., ...}``)."""
    return SCALES.register(name)


register_scale("piecewise")(Piecewise)
register_scale("schedule")(ScaleSchedule)


def build_scale(cfg: Any, path: str = "scale") -> Any:
    """A dynamic scale from ``{name: ..., **fields}`` or a schedule ``{shape: linear, scale: 7}``;
    anything else unchanged. It is the conversion of every field declared as a :class:`DynamicScale`."""
    if not isinstance(cfg, Mapping):
        return cfg
    if "name" not in cfg and "shape" in cfg:
        return construct(ScaleSchedule, cfg, path, "scale 'schedule'")
    return SCALES.build(cfg, path)


def _tensor(value: Any, path: str) -> Any:
    """A list of numbers for a field declared as a tensor: the tensor (per frame, band, ...)."""
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return torch.tensor(value)
    return value


register_conversion(DynamicScale, build_scale)
register_conversion(Tensor, _tensor)
