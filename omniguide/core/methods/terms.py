"""Multi-term guidance: a base prediction pushed away from any number of other branches,

    pred = b + s * sum_k s_k (b - p_k)            b = the ``base`` branch (default ``cond``)

the general form behind CFG (``p = uncond``, ``s_k = w - 1``), PAG / SEG / skip-layer guidance
with CFG (``c + (w - 1)(c - u) + s (c - p)``; Ahn et al. 2024, arXiv:2403.17377), LTX-2's
CFG + STG + modality terms, multi-condition and negative-prompt stacks, and autoguidance
(``s_k = w - 1`` against the weak branch).

Each term has its own scale (a number, a tensor broadcast against the sample, or a schedule with
neutral 0) and optionally its own window over ``sigma``, ``t`` or ``step``. A term that is off at
a step (outside its window, or scale 0) is not requested, so it costs nothing. ``scale`` is a
global multiplier (neutral 0), which lets ``Schedule(Terms(...))`` shape every term at once.
Linear, so it runs in the base branch's own parameterization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ...io.config import construct
from ..errors import ConfigError
from ..guider import NOISE_LEVEL, STEP_INDEX, GuidanceStep, Guider, guided, passthrough, plain
from ..noise import COORDINATES, coordinate_range
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import DynamicScale, Scale, ScaleSchedule, is_neutral, resolve


@dataclass(frozen=True)
class Term:
    """One term ``scale * (base - branch)``: ``shape`` (constant, linear, cosine over ``coordinate``)
    makes the scale a schedule with neutral 0; at most one of ``sigma``, ``t``, ``step`` is a window."""

    scale: Scale = 1.0
    shape: str = "constant"
    coordinate: str = "t"
    sigma: tuple[float, float] | None = None
    t: tuple[float, float] | None = None
    step: tuple[float, float] | None = None

    def __post_init__(self):
        windows = [c for c in COORDINATES if getattr(self, c) is not None]
        if len(windows) > 1:
            raise ConfigError("", f"give at most one window of sigma=, t=, step= (got {windows})")
        for c in windows:
            low, high = (float(v) for v in getattr(self, c))
            lo_ok, hi_ok = coordinate_range(c)
            if not lo_ok <= low <= high <= hi_ok:
                raise ConfigError(c, f"window [{low}, {high}] is outside [{lo_ok}, {hi_ok}] or reversed")
        if self.shape != "constant" and not isinstance(self.scale, (int, float)):
            raise ConfigError("shape", "a scheduled term needs a numeric scale")
        if self.shape != "constant":
            ScaleSchedule(float(self.scale), self.shape, self.coordinate, 0.0)  # validates shape/coordinate

    def value(self, step: GuidanceStep):
        """The term's scale at this step (0 where it is off)."""
        scale = self.scale
        if self.shape != "constant":
            scale = ScaleSchedule(float(scale), self.shape, self.coordinate, 0.0)
        w = resolve(scale, step)
        for c in COORDINATES:
            if getattr(self, c) is not None:
                x = step.coordinate(c)
                low, high = getattr(self, c)
                inside = ((x >= low) & (x <= high)).to(step.x.dtype)
                w = w * (inside if inside.ndim else float(inside))
        return w


def as_term(spec: Any, path: str) -> Term:
    """A :class:`Term` from a number, tensor, schedule, ``Term`` or ``{scale:, shape:, sigma: ...}``."""
    if isinstance(spec, Term):
        return spec
    if isinstance(spec, Mapping):
        scale = spec.get("scale")
        if isinstance(scale, Mapping) and "name" not in scale:   # a term's schedule is neutral at 0
            spec = {**spec, "scale": ScaleSchedule(**{"neutral": 0.0, **scale})}
        return construct(Term, spec, path, "a term")
    if isinstance(spec, (int, float, torch.Tensor, DynamicScale)):
        return Term(scale=spec)
    raise ConfigError(path, f"expected a scale or a term mapping, got {type(spec).__name__}")


@register_guider("terms")
@dataclass
class Terms(Guider):
    """``base + scale * sum_k s_k (base - branch_k)``; see the module docstring. ``terms`` maps branch
    names to a scale or a term (``{scale:, shape:, coordinate:, sigma|t|step: [lo, hi]}``)."""

    terms: Mapping[str, Any] = field(default_factory=lambda: {"uncond": 6.5})
    base: str = "cond"
    scale: Scale = 1.0

    def __post_init__(self):
        if not self.terms:
            raise ConfigError("terms", "give at least one term, e.g. {'uncond': 4}")
        if self.base in self.terms:
            raise ConfigError(f"terms.{self.base}", "a term cannot use the base branch")
        self.parsed = {name: as_term(spec, f"terms.{name}") for name, spec in self.terms.items()}

    @property
    def neutral(self) -> float:
        return 0.0

    @property
    def fallback(self) -> str:
        return self.base

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        for name, term in self.parsed.items():
            if term.step is not None or (term.shape != "constant" and term.coordinate == "step") or (
                    isinstance(term.scale, DynamicScale) and term.scale.reads_step):
                needs[STEP_INDEX] = f"term '{name}' reads the 'step' coordinate"
            if term.sigma is not None or (isinstance(term.scale, DynamicScale) and term.scale.reads_noise):
                needs[NOISE_LEVEL] = f"term '{name}' reads the 'sigma' coordinate"
        return needs

    def active(self, step: GuidanceStep) -> dict[str, Any]:
        """Branch name -> effective scale, for the terms that are on at this step."""
        s = resolve(self.scale, step)
        if is_neutral(s, 0.0):
            return {}
        values = {name: term.value(step) for name, term in self.parsed.items()}
        return {name: s * v for name, v in values.items() if not is_neutral(v, 0.0)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return (self.base, *self.active(step))

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        kind = preds[self.base].kind
        base = preds[self.base].value
        out = base
        for name, w in self.active(step).items():
            if name in preds:
                out = out + w * (base - preds[name].to(kind))
        if out is base:
            return passthrough(preds, step, self.base)
        return guided(out, step, kind)

    def config(self) -> dict:
        out = super().config()
        out["terms"] = {name: _plain_term(term) for name, term in self.parsed.items()}
        return out


def _plain_term(term: Term) -> dict:
    """A term as config: the scale always, other fields where they differ from the default."""
    return {f.name: plain(getattr(term, f.name)) for f in dataclasses.fields(Term)
            if f.name == "scale" or getattr(term, f.name) != f.default}
