"""History guidance (Song, Chen et al. 2025, "History-Guided Video Diffusion", arXiv:2502.06764;
reference code kwsong0113/diffusion-forcing-transformer ``algorithms/dfot/history_guidance.py``)
as weighted branch tables on the guidance core.

Every term is "the same model, the same sample, history frames at other noise levels". A
*segment* picks history frames and, per frame, a range ``(k, k')`` of noise levels (0 = clean,
1 = fully masked); its term is ``s(x | h^k) - s(x | h^k')`` (frames outside the segment masked in
both). The composed prediction, with ``∅`` = every history frame masked, is

    pred = p(x | ∅) + sum_s w_s [ p(x | h_s^start) - p(x | h_s^end) ]

so the table of branch weights always sums to 1; identical branches (same per-frame levels, same
external condition) are merged, zero weights dropped, and the predictions -- not sampler outputs,
which the reference code composes after its DDIM step -- are combined. With ``drop_condition``
(DFoT's ``use_external_cond_guidance``) the *end* branches also drop the external condition.

Schemes (``s`` = prediction, ``h`` = history, ``h~_k`` = history noised to ``k``, keeping only
its low frequencies):

=============== =================================== ==============================================
scheme          segments -> weights                 prediction
=============== =================================== ==============================================
conditional     full -> 1, no condition dropping    ``s(x|h)``
vanilla (HG-v)  full -> w                           ``s(x|∅) + w [s(x|h) - s(x|∅)]``
fractional      full -> 1, (k, 1) on all -> w - 1   ``s(x|h) + (w - 1) [s(x|h~_k) - s(x|∅)]``
(HG-f)
temporal (HG-t) subset H_i -> w_i                   ``s(x|∅) + sum_i w_i [s(x|h_{H_i}) - s(x|∅)]``
custom          segments and weights from YAML, or an explicit table whose weights must sum to 1
=============== =================================== ==============================================

Stabilized forms (``stabilized_vanilla`` ...) are the same tables fed with *generated* history at
its stabilization level wherever a branch wants it clean (level 0): :class:`~.protocol.History`
carries that level per frame, so the ``cond`` branch of the rollout and the guider's clean branches
agree and merge. Generated history is masked in the unconditional branch like given history (the
reference code's ``SimpleHistoryGuidanceManager`` once masked only ground truth, so rollouts were
unguided after the first window; DFoT commit 2afc548).

``text_scale`` composes text CFG on the full-history branch inside the same table,
``+ (w_t - 1) [s(x | h, c) - s(x | h, ∅_c)]``; ``stg_scale`` adds spatiotemporal skip guidance
``+ s (s(x | h, c) - s_perturbed(x | h, c))`` (a perturbed copy of the full-history branch, any
mode of :mod:`.stg`, one extra forward pass); and the guider composes with the core's wrappers
(``Interval``, ``Schedule``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...core.branch import Branch
from ...core.errors import ConfigError, GuidanceError
from ...core.guider import GuidanceStep, Guider, guided, passthrough
from ...core.needs import HISTORY
from ...core.prediction import Guided, Prediction
from ...core.registry import register_guider
from ...core.scale import Scale, ScaleSchedule, is_neutral, resolve
from .protocol import History
from .stg import stg_perturbation

Range = tuple[float, float]
SCHEMES = ("conditional", "vanilla", "fractional", "temporal", "custom")
STABILIZED = {"stabilized_conditional": "conditional", "stabilized_vanilla": "vanilla",
              "stabilized_fractional": "fractional"}
CONDITIONS = "conditions"   # the branch holding the model's external conditions (caption, ...)
STG_BRANCH = "perturbed"    # the full-history branch with STG's perturbation


def _round(level: float) -> float:
    return round(float(level), 6)


@dataclass(frozen=True)
class Segment:
    """History frames ``frames`` (``None``: all; negative indices count from the newest) with
    noise-level ranges ``(k, k')`` per chosen frame: one range for all, two interpolated linearly
    over the chosen frames, or one per chosen frame (DFoT's three rules). ``ranges_if_generated``
    replaces ``ranges`` for generated frames (``None``: the same)."""

    frames: tuple[int, ...] | None = None
    ranges: tuple[Range, ...] = ((0.0, 1.0),)
    ranges_if_generated: tuple[Range, ...] | None = None

    def __post_init__(self):
        for name in ("ranges", "ranges_if_generated"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(tuple(float(v) for v in r) for r in value)
            object.__setattr__(self, name, value)
            for r in value:
                if len(r) != 2 or not 0.0 <= r[0] <= r[1] <= 1.0:
                    raise ConfigError(name, f"a range is (k, k') with 0 <= k <= k' <= 1, got {list(r)}")
        if self.frames is not None:
            object.__setattr__(self, "frames", tuple(int(f) for f in self.frames))

    @staticmethod
    def parse(spec: Any, path: str) -> Segment:
        """From ``{frames: all | [..], ranges: all | [[k, k'], ...], ranges_if_generated: ...}``."""
        if isinstance(spec, Segment):
            return spec
        if not isinstance(spec, Mapping):
            raise ConfigError(path, f"expected a segment mapping, got {type(spec).__name__}")
        unknown = [k for k in spec if k not in ("frames", "ranges", "ranges_if_generated")]
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}", "unknown key; valid: frames, ranges, ranges_if_generated")

        def ranges(value):
            if value is None:
                return None
            if value == "all":
                return ((0.0, 1.0),)
            return tuple((0.0, 1.0) if r == "all" else tuple(r) for r in value)
        frames = spec.get("frames", "all")
        try:
            return Segment(None if frames == "all" else tuple(frames), ranges(spec.get("ranges", "all")),
                           ranges(spec.get("ranges_if_generated")))
        except ConfigError as err:
            raise ConfigError(f"{path}.{err.path}", err.message) from None

    @staticmethod
    def _expand(ranges: tuple[Range, ...], n: int, where: str) -> list[Range]:
        if len(ranges) == n:
            return list(ranges)
        if len(ranges) == 2:
            if n == 1:
                return [ranges[1]]
            (a0, b0), (a1, b1) = ranges
            return [(a0 + (a1 - a0) * i / (n - 1), b0 + (b1 - b0) * i / (n - 1)) for i in range(n)]
        if len(ranges) == 1:
            return list(ranges) * n
        raise GuidanceError(f"{where}: {len(ranges)} ranges for {n} chosen history frames (give 1, 2 or {n})")

    def levels(self, generated: Sequence[bool], where: str = "segment") -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(start, end)`` per-frame levels for a history whose frames are generated or not;
        frames outside the segment are masked (level 1) in both."""
        n = len(generated)
        chosen = list(range(n)) if self.frames is None else list(self.frames)
        for f in chosen:
            if not -n <= f < n:
                raise GuidanceError(f"{where}: frame {f} is outside a history of {n} frames")
        chosen = [f % n for f in chosen] if n else []
        ranges = self._expand(self.ranges, len(chosen), where) if chosen else []
        gen_ranges = self._expand(self.ranges_if_generated or self.ranges, len(chosen), where) if chosen else []
        start, end = [1.0] * n, [1.0] * n
        for i, f in enumerate(chosen):
            k0, k1 = gen_ranges[i] if generated[f] else ranges[i]
            start[f], end[f] = _round(k0), _round(k1)
        return tuple(start), tuple(end)


FULL = Segment()


@dataclass(frozen=True)
class Key:
    """One branch of a history table: per-frame levels (0 = the frame's clean level) and whether
    the external condition is dropped."""

    levels: tuple[float, ...]
    drop: bool = False

    @property
    def name(self) -> str:
        """``cond`` / ``uncond`` for full history with / without the condition; else
        ``history(0,0,1,1)`` (``|null`` when the condition is dropped)."""
        if all(k == 0 for k in self.levels):
            return "uncond" if self.drop else "cond"
        text = ",".join(f"{k:g}" for k in self.levels)
        return f"history({text})" + ("|null" if self.drop else "")


def compose(segments: Sequence[Segment], weights: Sequence[Any], generated: Sequence[bool],
            drop_condition: bool, text_weight: Any = 0.0) -> dict[Key, Any]:
    """The table ``{Key: weight}`` (weights sum to 1; zero entries kept, see :func:`active`):
    start at ``∅`` with weight 1, add ``w`` to each segment's start branch and subtract it from its
    end branch; ``text_weight`` adds ``t [(h, c) - (h, ∅_c)]``."""
    if len(segments) != len(weights):
        raise ConfigError("weights", f"{len(weights)} weights for {len(segments)} history segments")
    n = len(generated)
    table: dict[Key, Any] = {Key((1.0,) * n, drop_condition): 1.0}

    def add(key: Key, w: Any) -> None:
        table[key] = table.get(key, 0.0) + w
    for i, (segment, w) in enumerate(zip(segments, weights)):
        start, end = segment.levels(generated, f"segment {i}")
        add(Key(start, False), w)
        add(Key(end, drop_condition), -w)
    if not is_neutral(text_weight, 0.0):
        add(Key((0.0,) * n, False), text_weight)
        add(Key((0.0,) * n, True), -text_weight)
    return table


def active(table: Mapping[Key, Any]) -> dict[Key, Any]:
    """The entries with a nonzero weight."""
    return {k: w for k, w in table.items() if not is_neutral(w, 0.0)}


def check_sum(table: Mapping[Key, Any], where: str) -> None:
    """Weights of a table must sum to 1 (everywhere, for tensor weights)."""
    total = sum(table.values(), 0.0)
    ok = bool(torch.allclose(total, torch.ones_like(total), atol=1e-6)) if isinstance(total, torch.Tensor) \
        else abs(float(total) - 1.0) <= 1e-6
    if not ok:
        value = total if not isinstance(total, torch.Tensor) else f"{float(total.mean()):.6g} (mean)"
        raise ConfigError(where, f"history table weights must sum to 1, they sum to {value}")


def scheme_table(scheme: str, scale: Any, k: float, subsets: Sequence | None, weights: Sequence | None,
                 segments: Sequence[Segment] | None) -> tuple[list[Segment], list[Any], bool]:
    """``(segments, weights, conditional)`` of a named scheme; ``conditional`` forbids dropping the condition."""
    if scheme == "conditional":
        return [FULL], [1.0], True
    if scheme == "vanilla":
        return [FULL], [scale], False
    if scheme == "fractional":
        return [FULL, Segment(ranges=((k, 1.0),))], [1.0, _minus_one(scale)], False
    if scheme == "temporal":
        return [Segment(frames=None if s == "all" else tuple(s)) for s in subsets], list(weights), False
    return list(segments), list(weights), False


def _minus_one(scale: Any) -> Any:
    if isinstance(scale, ScaleSchedule):
        return ScaleSchedule(scale.scale - 1.0, scale.shape, scale.coordinate, scale.neutral - 1.0)
    return scale - 1.0


@register_guider("history")
@dataclass
class HistoryGuidance(Guider):
    """History guidance as a weighted branch table (see the module docstring).

    ``scheme``: conditional, vanilla, fractional, temporal, custom (``stabilized_*`` names accepted:
    the stabilization level lives in the history, see :class:`~.protocol.History`); ``scale``: the
    guidance weight ``w`` of vanilla and fractional (a number, schedule or tensor); ``k``: the noise
    level of fractional guidance's low-frequency history; ``subsets`` / ``weights``: temporal
    guidance's history subsets (frame indices, negatives from the newest, or ``all``) and weights;
    ``segments`` + ``weights`` or ``table`` (``[{levels: [...] | k, drop: bool, weight: w}]``,
    weights summing to 1): custom tables; ``drop_condition``: end branches also drop the external
    condition; ``text_scale``: text CFG on the full-history branch (``u + w(c - u)`` form, 1 = off);
    ``stg_scale`` / ``stg_mode`` / ``stg_layers``: STG on the full-history branch (0 = off).

    The rollout calls :meth:`bind` with each window's history and the null values of the external
    conditions; the guider's branches inherit a branch named ``conditions`` (the model's external
    conditions). Unbound (a model without history, e.g. a diffusers pipeline) the table is over
    zero history frames and uses the caller's ``cond`` / ``uncond``."""

    needs: ClassVar[Mapping[str, str]] = {HISTORY: "guides with history frames at their own noise levels"}

    scheme: str = "vanilla"
    scale: Scale = 2.0
    k: float = 0.5
    subsets: list | None = None
    weights: list | None = None
    segments: list | None = None
    table: list | None = None
    drop_condition: bool = True
    text_scale: Scale = 1.0
    stg_scale: Scale = 0.0
    stg_mode: str = "attention_values"
    stg_layers: Any = None
    _history: History | None = field(default=None, init=False, repr=False, compare=False)
    _null: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        scheme = STABILIZED.get(self.scheme, self.scheme)
        if scheme not in SCHEMES:
            valid = ", ".join((*SCHEMES, *STABILIZED))
            raise ConfigError("scheme", f"unknown history guidance scheme '{self.scheme}'; valid: {valid}")
        self.base_scheme = scheme
        if not 0.0 < float(self.k) < 1.0:
            raise ConfigError("k", f"fractional guidance's noise level must lie in (0, 1), got {self.k}")
        if scheme == "temporal":
            if not self.subsets or self.weights is None or len(self.subsets) != len(self.weights):
                raise ConfigError("subsets", "temporal guidance needs subsets and as many weights "
                                  f"(got {len(self.subsets or [])} subsets, {len(self.weights or [])} weights)")
        if scheme == "custom":
            if (self.segments is None) == (self.table is None):
                raise ConfigError("segments", "custom history guidance needs either segments (+ weights) or table")
            if self.segments is not None:
                self.parsed_segments = [Segment.parse(s, f"segments.{i}") for i, s in enumerate(self.segments)]
                if self.weights is None or len(self.weights) != len(self.parsed_segments):
                    raise ConfigError("weights", f"{len(self.weights or [])} weights for "
                                      f"{len(self.parsed_segments)} segments")
            else:
                self._check_table()
        self.parsed_segments = getattr(self, "parsed_segments", None)
        self.perturbation = stg_perturbation(self.stg_mode, self.stg_layers)

    def _check_table(self) -> None:
        total = 0.0
        for i, row in enumerate(self.table):
            if not isinstance(row, Mapping) or "levels" not in row or "weight" not in row:
                raise ConfigError(f"table.{i}", "expected {levels: [...] or a level, weight: w, drop: bool}")
            unknown = [k for k in row if k not in ("levels", "weight", "drop")]
            if unknown:
                raise ConfigError(f"table.{i}.{unknown[0]}", "unknown key; valid: levels, weight, drop")
            levels = row["levels"] if isinstance(row["levels"], (list, tuple)) else [row["levels"]]
            if any(not 0.0 <= float(v) <= 1.0 for v in levels):
                raise ConfigError(f"table.{i}.levels", f"levels must lie in [0, 1], got {list(levels)}")
            total += float(row["weight"])
        if abs(total - 1.0) > 1e-6:
            raise ConfigError("table", f"history table weights must sum to 1, they sum to {total:g}")

    # -- the table at one step -----------------------------------------------------------------------
    @property
    def fallback(self) -> str:
        return "cond"

    def composed(self, generated: Sequence[bool], step: GuidanceStep | None = None) -> dict[Key, Any]:
        """The full table for a history whose frames are generated or not (weights resolved at
        ``step``; ``None``: the configured numbers, schedules at unit weight)."""
        def value(s):
            if step is not None:
                return resolve(s, step)
            return s.scale if isinstance(s, ScaleSchedule) else s
        if self.base_scheme == "custom" and self.table is not None:
            return self._explicit(len(generated))
        segments, weights, conditional = scheme_table(
            self.base_scheme, self.scale, self.k, self.subsets, self.weights, self.parsed_segments)
        text = value(self.text_scale) - 1.0
        return compose(segments, [value(w) for w in weights], generated,
                       self.drop_condition and not conditional, text)

    def _explicit(self, n: int) -> dict[Key, Any]:
        table: dict[Key, Any] = {}
        for i, row in enumerate(self.table):
            levels = row["levels"]
            levels = tuple(levels) if isinstance(levels, (list, tuple)) else (levels,) * n
            if len(levels) != n:
                raise GuidanceError(f"history table row {i}: {len(levels)} levels for a history of {n} frames")
            key = Key(tuple(_round(v) for v in levels), bool(row.get("drop", False)))
            table[key] = table.get(key, 0.0) + float(row["weight"])
        return table

    def plan(self, step: GuidanceStep) -> dict[str, Any]:
        """``{branch name: weight}`` of the nonzero entries at this step (names of :class:`Key`).
        Without a bound history the table is over zero history frames (DFoT with an empty history):
        only the external-condition terms remain, on the caller's ``cond`` / ``uncond`` branches
        (vanilla guidance is then CFG with weight ``scale``)."""
        generated = self._history.generated if self._history is not None else ()
        table = active(self.composed(generated, step))
        check_sum(table, "history")
        return {key.name: w for key, w in table.items()}

    # -- binding a window's history --------------------------------------------------------------------
    def bind(self, history: History, null: Mapping[str, Any]) -> None:
        """Use ``history`` for the next sampling run; ``null`` are the model inputs that drop the
        external conditions (e.g. ``{"caption": <null caption>}``)."""
        self._history = history
        self._null = dict(null)
        self.composed(history.generated)   # a subset or table that does not fit this history fails now

    def branch_for(self, key: Key) -> Branch:
        """The branch of one table entry: history inputs at the key's levels (level 0 = each frame's
        clean level, the stabilization level for generated frames), the null conditions if dropped."""
        history = self._history
        if history is None:
            raise GuidanceError("history guidance: no history bound; the rollout calls guider.bind(history, null) "
                                "before each window")
        clean = history.clean_levels
        levels = tuple(clean[i] if k == 0 else k for i, k in enumerate(key.levels))
        inputs = history.inputs(levels)
        if key.drop:
            inputs.update(self._null)
        return Branch(key.name, inputs=inputs, base=CONDITIONS)

    def branch_defaults(self) -> dict:
        off = isinstance(self.stg_scale, (int, float)) and self.stg_scale == 0
        out = {} if off else {STG_BRANCH: Branch(STG_BRANCH, base="cond", perturbation=self.perturbation)}
        if self._history is not None:
            out.update({key.name: self.branch_for(key) for key in self.composed(self._history.generated)})
        return out

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        names = tuple(self.plan(step))
        if not is_neutral(resolve(self.stg_scale, step), 0.0):
            names = (*names, *(("cond",) if "cond" not in names else ()), STG_BRANCH)
        return names

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        weights = self.plan(step)
        s = resolve(self.stg_scale, step)
        stg = STG_BRANCH in preds and not is_neutral(s, 0.0)
        if list(weights) == ["cond"] and not stg:
            return passthrough(preds, step)
        kind = preds[next(iter(weights))].kind
        out = sum(w * preds[name].to(kind) for name, w in weights.items())
        if stg:
            out = out + s * (preds["cond"].to(kind) - preds[STG_BRANCH].to(kind))
        return guided(out, step, kind)
