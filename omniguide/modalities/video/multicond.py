"""Guidance on several conditions at once, each term with its own scale, schedule and interval.

* :class:`Nested` -- a chain of branches ``b_0 (∅) -> b_1 -> ... -> b_n (all conditions)``:

      pred = b_0 + sum_k s_k (b_k - b_{k-1})

  EchoMimicV3's text + audio guidance is ``chain: [uncond, text, cond]``, ``scales: [s_t, s_a]``:
  ``e_∅ + s_t (e_t - e_∅) + s_a (e_{t,a} - e_t)`` (antgroup/echomimic_v3
  ``pipeline_wan_fun_inpaint_audio.py``; 3 passes). All scales 1 give ``b_n``; a term outside its
  interval has scale 1 (no extrapolation), and a branch whose coefficient is 0 is not run.
* :class:`MultiModal` -- the delta form of LTX-2's multimodal guider (diffusers
  ``guiders/ltx2_guidance.py``; Lightricks/LTX-2 ``guiders.py``), in x0 space by default:

      pred = c + (g - 1)(c - u) + s_stg (c - p) + (m - 1)(c - iso),  then the CFG rescale towards c

  ``p`` is an STG-perturbed branch (any mode of :mod:`.stg`), ``iso`` the branch with the other
  modality isolated (the caller defines it, e.g. cross-attention disabled); each term is a core
  :class:`~omniguide.core.methods.terms.Term` (scale, schedule, interval on sigma, t or step).

Phase-aware negatives (EchoMimicV3's ``neg_scale`` for the first ``neg_steps`` steps) are a term
whose scale is piecewise over steps, e.g. ``{name: piecewise, values: [6.75, 4.5], at: [0, 0.1],
coordinate: step}``: the guidance *term* is scaled over the interval. The reference code instead
multiplies the negative prompt embeddings inside the step loop, so the scaling compounds
(1.5^3 after three steps) and persists after the phase; embeddings are never touched here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...core.axes import as_axes, std
from ...core.branch import Branch
from ...core.errors import ConfigError
from ...core.guider import NOISE_LEVEL, STEP_INDEX, GuidanceStep, Guider, guided, passthrough
from ...core.methods.common import check_space
from ...core.methods.terms import Term, as_term
from ...core.needs import CONDITIONS
from ...core.noise import COORDINATES
from ...core.prediction import Guided, Prediction
from ...core.registry import build_scale, register_guider
from ...core.scale import DynamicScale, Scale, ScaleSchedule, is_neutral, resolve
from .stg import MODES, stg_perturbation


@dataclass(frozen=True)
class NestedTerm:
    """One link of a :class:`Nested` chain: its scale, and optionally a window on one coordinate
    outside which the scale is 1."""

    scale: Scale = 1.0
    sigma: tuple[float, float] | None = None
    t: tuple[float, float] | None = None
    step: tuple[float, float] | None = None

    def __post_init__(self):
        Term(sigma=self.sigma, t=self.t, step=self.step)  # validates the window as a core term does

    @property
    def reads_step(self) -> bool:
        return self.step is not None or (isinstance(self.scale, DynamicScale) and self.scale.reads_step)

    def value(self, step: GuidanceStep):
        w = resolve(self.scale, step)
        for c in COORDINATES:
            window = getattr(self, c)
            if window is not None:
                x = step.coordinate(c)
                inside = ((x >= window[0]) & (x <= window[1])).to(step.x.dtype)
                w = 1.0 + (w - 1.0) * (inside if inside.ndim else float(inside))
        return w


def nested_term(spec: Any, path: str) -> NestedTerm:
    """A :class:`NestedTerm` from a number, schedule, tensor or ``{scale:, sigma|t|step: [lo, hi]}``."""
    if isinstance(spec, NestedTerm):
        return spec
    if isinstance(spec, Mapping) and "name" not in spec and "shape" not in spec:
        unknown = [k for k in spec if k not in ("scale", "sigma", "t", "step")]
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}", "unknown key for a nested term; valid: scale, sigma, t, step")
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        scale = spec.get("scale", 1.0)
        if isinstance(scale, Mapping):
            scale = build_scale(scale, f"{path}.scale") if "name" in scale else ScaleSchedule(**scale)
        try:
            return NestedTerm(**{**spec, "scale": scale})
        except ConfigError as err:
            raise ConfigError(f"{path}.{err.path}" if err.path else path, err.message) from None
    if isinstance(spec, Mapping):
        spec = build_scale(spec, path) if "name" in spec else ScaleSchedule(**spec)
    if isinstance(spec, (int, float, torch.Tensor, DynamicScale)):
        return NestedTerm(scale=spec)
    raise ConfigError(path, f"expected a scale or a nested-term mapping, got {type(spec).__name__}")


@register_guider("nested")
@dataclass
class Nested(Guider):
    """``b_0 + sum_k s_k (b_k - b_{k-1})`` over ``chain`` (see the module docstring); ``scales``
    has one entry per link (a number, schedule, piecewise scale or ``{scale:, step: [lo, hi]}``)."""

    needs: ClassVar[Mapping[str, str]] = {CONDITIONS: "nests the terms of several conditions"}

    chain: list = field(default_factory=lambda: ["uncond", "text", "cond"])
    scales: list = field(default_factory=lambda: [4.5, 2.5])

    def __post_init__(self):
        self.chain = list(self.chain)
        if len(self.chain) < 2 or len(set(self.chain)) != len(self.chain):
            raise ConfigError("chain", f"give at least two distinct branch names, got {self.chain}")
        if len(self.scales) != len(self.chain) - 1:
            raise ConfigError("scales", f"{len(self.scales)} scales for a chain of {len(self.chain)} branches "
                              f"(one per link: {len(self.chain) - 1})")
        self.terms = [nested_term(s, f"scales.{i}") for i, s in enumerate(self.scales)]

    @property
    def fallback(self) -> str:
        return self.chain[-1]

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if any(t.reads_step for t in self.terms):
            needs[STEP_INDEX] = "a nested term reads the 'step' coordinate"
        if any(t.sigma is not None or isinstance(t.scale, DynamicScale) and t.scale.reads_noise for t in self.terms):
            needs[NOISE_LEVEL] = "a nested term reads the 'sigma' coordinate"
        return needs

    def coefficients(self, step: GuidanceStep) -> dict[str, Any]:
        """The weight of each branch: ``b_n: s_n``, ``b_k: s_k - s_{k+1}``, ``b_0: 1 - s_1`` (sum 1),
        nonzero ones only."""
        s = [t.value(step) for t in self.terms]
        weights = {self.chain[0]: 1.0 - s[0]}
        for k in range(1, len(self.chain)):
            nxt = s[k] if k < len(s) else 0.0
            weights[self.chain[k]] = s[k - 1] - nxt
        return {name: w for name, w in weights.items() if not is_neutral(w, 0.0)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return tuple(self.coefficients(step)) or (self.fallback,)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        weights = self.coefficients(step)
        if list(weights) == [self.fallback] and is_neutral(weights[self.fallback], 1.0):
            return passthrough(preds, step, self.fallback)
        kind = preds[next(iter(weights))].kind
        return guided(sum(w * preds[n].to(kind) for n, w in weights.items()), step, kind)


@register_guider("multimodal")
@dataclass
class MultiModal(Guider):
    """LTX-2's delta form: ``c + (g - 1)(c - u) + s (c - p) + (m - 1)(c - iso)``, then the CFG
    rescale ``r`` towards ``c`` (diffusers' ``rescale_noise_cfg``), in ``space`` (x0 as LTX-2).

    ``guidance_scale`` / ``stg_scale`` / ``modality_scale``: a number, schedule, piecewise scale or
    a term mapping ``{scale:, shape:, coordinate:, sigma|t|step: [lo, hi]}`` in LTX-2's own
    convention (neutral 1, 0, 1); ``stg_mode`` / ``stg_layers``: the perturbed branch (``perturbed``);
    ``isolated``: the branch name with the other modality isolated (defined by the caller)."""

    needs: ClassVar[Mapping[str, str]] = {CONDITIONS: "weighs the terms of several conditions"}

    guidance_scale: Any = 3.0
    stg_scale: Any = 1.0
    modality_scale: Any = 1.0
    guidance_rescale: float = 0.0
    stg_mode: str = "transformer_block"
    stg_layers: Any = None
    isolated: str = "isolated"
    space: str | None = "x0"
    axes: Any = None

    def __post_init__(self):
        self.space = check_space(self.space)
        if self.stg_mode not in MODES:
            raise ConfigError("stg_mode", f"unknown STG mode '{self.stg_mode}'; valid: {', '.join(MODES)}")
        if not 0.0 <= float(self.guidance_rescale) <= 1.0:
            raise ConfigError("guidance_rescale", f"must lie in [0, 1], got {self.guidance_rescale}")
        self.axes = as_axes(self.axes)
        self.terms = {"uncond": self._delta(self.guidance_scale, 1.0, "guidance_scale"),
                      "perturbed": self._delta(self.stg_scale, 0.0, "stg_scale"),
                      self.isolated: self._delta(self.modality_scale, 1.0, "modality_scale")}
        self.perturbation = stg_perturbation(self.stg_mode, self.stg_layers)

    @staticmethod
    def _delta(spec: Any, neutral: float, path: str) -> Term:
        """A term in the delta convention (neutral 0) from a scale in LTX-2's (neutral ``neutral``)."""
        term = as_term(spec if isinstance(spec, (Mapping, Term)) else {"scale": spec}, path)
        if neutral == 0.0:
            return term
        scale = term.scale
        if isinstance(scale, ScaleSchedule):
            scale = ScaleSchedule(scale.scale - neutral, scale.shape, scale.coordinate, scale.neutral - neutral)
        elif isinstance(scale, DynamicScale):
            scale = _Shifted(scale, -neutral)
        else:
            scale = scale - neutral
        return Term(scale, term.shape, term.coordinate, term.sigma, term.t, term.step)

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        for name, term in self.terms.items():
            if term.step is not None or (isinstance(term.scale, DynamicScale) and term.scale.reads_step):
                needs[STEP_INDEX] = f"term '{name}' reads the 'step' coordinate"
            if term.sigma is not None or (isinstance(term.scale, DynamicScale) and term.scale.reads_noise):
                needs[NOISE_LEVEL] = f"term '{name}' reads the 'sigma' coordinate"
        return needs

    def branch_defaults(self) -> dict:
        return {"perturbed": Branch("perturbed", base="cond", perturbation=self.perturbation)}

    def active(self, step: GuidanceStep) -> dict[str, Any]:
        values = {name: term.value(step) for name, term in self.terms.items()}
        return {name: v for name, v in values.items() if not is_neutral(v, 0.0)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return ("cond", *self.active(step))

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        terms = self.active(step)
        if not terms:
            return passthrough(preds, step)
        kind = self.space or preds["cond"].kind
        c = preds["cond"].to(kind)
        out = c
        for name, w in terms.items():
            out = out + w * (c - preds[name].to(kind))
        if self.guidance_rescale > 0:
            axes = step.require_axes("multimodal", self.axes)
            r = float(self.guidance_rescale)
            out = r * out * (std(c, axes) / std(out, axes)) + (1 - r) * out
        return guided(out, step, kind)


@dataclass(frozen=True)
class _Shifted(DynamicScale):
    """A dynamic scale plus a constant (LTX-2's neutral-1 scales as deltas)."""

    inner: DynamicScale
    shift: float

    @property
    def reads_step(self) -> bool:
        return self.inner.reads_step

    def __call__(self, step):
        return resolve(self.inner, step) + self.shift
