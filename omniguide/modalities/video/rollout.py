"""Long rollouts: sliding windows over a sequence axis, generated frames fed back as history (with
history guidance), optional keyframes-then-interpolate, and memory that stays flat as the video grows.

Sliding window (DFoT ``_predict_sequence``, Song et al. 2025, arXiv:2502.06764): the model sees at
most ``window`` frames. Each window keeps the newest ``c = min(context, produced)`` frames as
history and generates ``h = min(remaining, window - c, chunk)`` new ones; the history's frames are
marked ``GIVEN`` (the frames the rollout started from) or ``GENERATED``. Finished frames go to a
``sink(frames, start)`` in order and only the history is kept, so peak memory does not depend on
the length.

Keyframes then interpolate (DFoT ``keyframe_density``): with ``keyframe_stride = s > 1`` the rollout
first generates keyframes ``s`` frames apart (the model is told the stride through
``keyframe_inputs``), then fills each gap with one interpolation window whose history is the two
keyframes around it (window positions ``0`` and ``s``). Keyframes and gaps alternate, so frames
are still emitted in order with flat memory.

Every window is one run of the core sampler (:func:`omniguide.core.sampler.sample`) on the
protocol of :mod:`.protocol`; the branches are ``conditions`` (the model's external conditions),
``cond`` (conditions + clean history) and ``uncond`` (``cond`` with the null conditions), plus what
the guider defines; a :class:`~.history.HistoryGuidance` anywhere in the guider is bound to each
window's history first. The same machinery runs on any sequence axis (``axis``), e.g. audio
``[B, C, T]`` continuation (:mod:`omniguide.zoo.audio_rollout`).

A model enters a rollout as a :class:`RolloutSubject` (its protocol model call, noise path, layout
and conditions); :meth:`Rollout.of` builds the rollout of one prompt from it, so the video and the
audio models of the zoo share one construction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...core.branch import Branch
from ...core.errors import ConfigError
from ...core.guider import Guider
from ...core.model_call import ModelCall
from ...core.noise import NoiseSchedule
from ...core.sampler import sample
from .history import CONDITIONS, HistoryGuidance
from .protocol import GENERATED, GIVEN, History

Sink = Callable[[Tensor, int], None]


@dataclass(frozen=True)
class RolloutPlan:
    """``window``: frames per model call; ``context``: history frames kept; ``chunk``: new frames per
    window (at most ``window - context``); ``keyframe_stride``: 1 for a plain sliding window, ``s > 1``
    for keyframes ``s`` apart then interpolation (``s + 1 <= window``)."""

    window: int
    context: int
    chunk: int
    keyframe_stride: int = 1

    def __post_init__(self):
        if self.window < 1:
            raise ConfigError("window", f"must be >= 1, got {self.window}")
        if not 0 <= self.context < self.window:
            raise ConfigError("context", f"history of {self.context} frames is longer than the window allows "
                              f"(context must be < window = {self.window})")
        if not 1 <= self.chunk <= self.window - self.context:
            raise ConfigError("chunk", f"must be in [1, window - context] = [1, {self.window - self.context}], "
                              f"got {self.chunk}")
        if self.keyframe_stride < 1:
            raise ConfigError("keyframe_stride", f"must be >= 1, got {self.keyframe_stride}")
        if self.keyframe_stride > 1 and self.keyframe_stride + 1 > self.window:
            raise ConfigError("keyframe_stride", f"an interpolation window holds stride + 1 = "
                              f"{self.keyframe_stride + 1} frames, more than the window of {self.window}")

    def windows(self, given: int, total: int) -> list[tuple[int, int]]:
        """``(history frames, new frames)`` of each sliding window, for ``given`` start frames and
        ``total`` frames in all (plain rollout)."""
        out, produced = [], given
        while produced < total:
            c = min(self.context, produced)
            h = min(total - produced, self.window - c, self.chunk)
            out.append((c, h))
            produced += h
        return out


class RolloutSubject(Protocol):
    """What a rollout needs from a model: ``model`` (the protocol call, see :mod:`.protocol`),
    ``schedule`` (its noise path), ``layout`` / ``axis`` (the sample's axes and its sequence axis),
    ``window`` (frames per model call at most), and the external conditions of a prompt for ``n``
    samples with their null values."""

    layout: str
    axis: int

    @property
    def model(self) -> Callable | ModelCall: ...

    @property
    def schedule(self) -> NoiseSchedule: ...

    @property
    def window(self) -> int: ...

    def conditions(self, prompt: str, n: int) -> dict[str, Any]: ...

    def null(self, n: int) -> dict[str, Any]: ...


def check_frame_multiple(multiple: int, **counts: int) -> None:
    """Each named frame count (``window``, ``history``, ``context``, ``chunk``, ``frames``) is a multiple
    of ``multiple``, so every window of a sliding rollout is (it holds ``c + h`` frames, each a
    minimum or difference of these): a one-line error naming the first that is not. Models whose
    UNet halves the frame axis ``n`` times need multiples of ``2^n``."""
    if multiple <= 1:
        return
    for key, value in counts.items():
        if value % multiple:
            raise ConfigError(key, f"{value} frames is not a multiple of {multiple}; the model takes windows of a "
                              f"multiple of {multiple} frames")


@dataclass
class RolloutResult:
    """What a rollout did: frames emitted, windows run, NFE (branch evaluations) and forward passes."""

    frames: int = 0
    windows: int = 0
    nfe: int = 0
    forward_passes: int = 0
    generated: int = 0
    window_log: list[dict] = field(default_factory=list)

    @property
    def nfe_per_frame(self) -> float:
        return self.nfe / max(self.generated, 1)


def bind_history(guider: Guider, history: History, null: Mapping[str, Any]) -> None:
    """Bind ``history`` to every :class:`HistoryGuidance` in ``guider`` (itself or wrapped)."""
    if isinstance(guider, HistoryGuidance):
        guider.bind(history, null)
    if dataclasses.is_dataclass(guider):
        for f in dataclasses.fields(guider):
            value = getattr(guider, f.name, None)
            if isinstance(value, Guider):
                bind_history(value, history, null)
    inner = getattr(guider, "scheduled", None)   # Schedule wraps a copy of its guider
    if isinstance(inner, Guider) and inner is not guider:
        bind_history(inner, history, null)


@dataclass
class Rollout:
    """Runs a rollout (see the module docstring).

    ``model``: a protocol model (:class:`~.protocol.HistoryDenoiser`, or its :class:`ModelCall`);
    ``scheduler``: a diffusers scheduler; ``guider``: any guider; ``schedule``: the model's noise
    path (for noised and masked history); ``conditions`` / ``null``: the model's external
    conditions and their null values; ``keyframe_inputs``: condition overrides for keyframe windows
    (e.g. ``{"stride": 4}``); ``stabilization``: level of generated history fed clean (a number or
    ``[oldest, newest]``); ``axes``: the sample's layout."""

    model: Callable | ModelCall
    scheduler: Any
    guider: Guider
    plan: RolloutPlan
    schedule: NoiseSchedule
    conditions: Mapping[str, Any] = field(default_factory=dict)
    null: Mapping[str, Any] = field(default_factory=dict)
    keyframe_inputs: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 10
    stabilization: float | list = 0.0
    axes: str = "BCFHW"
    axis: int = 2
    batch: bool = True
    progress: bool = True
    on_window: Callable[[dict], None] | None = None

    @classmethod
    def of(cls, subject: RolloutSubject, prompt: str, samples: int, scheduler: Any, guider: Guider,
           plan: RolloutPlan, **options: Any) -> Rollout:
        """The rollout of ``prompt`` (``samples`` at once) on ``subject``'s model, conditions and layout;
        ``options``: the other fields (``steps``, ``stabilization``, ``keyframe_inputs`` ...)."""
        return cls(subject.model, scheduler, guider, plan, subject.schedule,
                   conditions=subject.conditions(prompt, samples), null=subject.null(samples),
                   axes=subject.layout, axis=subject.axis, **options)

    def __call__(self, given: Tensor, total: int, sink: Sink, generator: torch.Generator | None = None
                 ) -> RolloutResult:
        """Roll out from ``given`` clean frames to ``total`` frames; every frame (the given ones first)
        goes to ``sink`` in order."""
        n_given = given.shape[self.axis]
        if n_given < 1:
            raise ConfigError("history", "a rollout needs at least one given frame")
        if total < n_given:
            raise ConfigError("frames", f"{total} frames in all is fewer than the {n_given} given frames")
        result = RolloutResult()
        sink(given, 0)
        result.frames = n_given
        if self.plan.keyframe_stride > 1:
            self._keyframes(given, total, sink, generator, result)
        else:
            self._sliding(given, total, sink, generator, result)
        return result

    # -- one window -------------------------------------------------------------------------------------
    def window(self, history: Tensor, state: tuple[int, ...], new: int, generator: torch.Generator | None,
               inputs: Mapping[str, Any] | None = None, positions: tuple[int, ...] | None = None,
               result: RolloutResult | None = None, label: str = "window") -> Tensor:
        """Generate ``new`` frames given ``history`` (clean) with per-frame ``state``; returns them."""
        shape = list(history.shape)
        shape[self.axis] = new
        noise_h = torch.randn(history.shape, generator=generator, dtype=history.dtype).to(history.device)
        hist = History(history, state, noise_h, self.schedule, positions, self.axis, self.stabilization)
        bind_history(self.guider, hist, self.null)
        conditions = {**self.conditions, **(inputs or {})}
        branches = {CONDITIONS: Branch(CONDITIONS, inputs=conditions),
                    "cond": Branch("cond", inputs=hist.inputs(hist.clean_levels), base=CONDITIONS),
                    "uncond": Branch("uncond", inputs=dict(self.null), base="cond")}
        noise = torch.randn(shape, generator=generator, dtype=history.dtype).to(history.device)
        out = sample(self.model, self.scheduler, self.guider, noise, branches, num_steps=self.steps,
                     axes=self.axes, batch=self.batch, progress=self.progress, generator=generator)
        if result is not None:
            result.windows += 1
            result.nfe += out.nfe
            result.forward_passes += out.forward_passes
            result.generated += new
            entry = {"kind": label, "history": len(state), "new": new, "nfe": out.nfe,
                     "forward_passes": out.forward_passes, "generated_history": sum(s == GENERATED for s in state)}
            result.window_log.append(entry)
            if self.on_window is not None:
                self.on_window(entry)
        return out.sample

    # -- plain sliding windows ----------------------------------------------------------------------------
    def _sliding(self, given: Tensor, total: int, sink: Sink, generator, result: RolloutResult) -> None:
        axis, plan = self.axis, self.plan
        history, state = self._keep(given, (GIVEN,) * given.shape[axis], plan.context)
        produced = given.shape[axis]
        bar = tqdm(total=len(plan.windows(produced, total)), disable=not self.progress, desc="windows", leave=False)
        while produced < total:
            new = min(total - produced, plan.window - history.shape[axis], plan.chunk)
            frames = self.window(history, state, new, generator, result=result)
            sink(frames, produced)
            produced += new
            result.frames = produced
            history, state = self._keep(torch.cat([history, frames], dim=axis), state + (GENERATED,) * new,
                                        plan.context)
            bar.update(1)
        bar.close()

    def _keep(self, frames: Tensor, state: tuple[int, ...], context: int) -> tuple[Tensor, tuple[int, ...]]:
        """The newest ``context`` frames (a copy, so older frames can be freed) and their states."""
        n = frames.shape[self.axis]
        keep = min(context, n)
        return frames.narrow(self.axis, n - keep, keep).clone(), state[n - keep:]

    # -- keyframes, then interpolation -------------------------------------------------------------------------
    def _keyframes(self, given: Tensor, total: int, sink: Sink, generator, result: RolloutResult) -> None:
        axis, plan, s = self.axis, self.plan, self.plan.keyframe_stride
        n_given = given.shape[axis]
        # given frames s apart, ending at the last one
        picks = list(range(n_given - 1, -1, -s))[::-1][-max(plan.context, 1):]
        keys = given.index_select(axis, torch.tensor(picks, device=given.device))
        key_state = (GIVEN,) * len(picks)
        last_key = given.narrow(axis, n_given - 1, 1)
        last_state = GIVEN
        produced = n_given                                   # frames emitted so far
        remaining_keys = math.ceil((total - produced) / s)
        bar = tqdm(total=remaining_keys, disable=not self.progress, desc="keyframes", leave=False)
        while produced < total:
            if plan.context:
                history, hstate = self._keep(keys, key_state, plan.context)
            else:
                history, hstate = keys.narrow(axis, 0, 0), ()
            new_keys = min(math.ceil((total - produced) / s), plan.window - history.shape[axis], plan.chunk)
            generated = self.window(history, hstate, new_keys, generator, self.keyframe_inputs, result=result,
                                    label="keyframes")
            for j in range(new_keys):
                key = generated.narrow(axis, j, 1)
                pair = torch.cat([last_key, key], dim=axis)
                between = self.window(pair, (last_state, GENERATED), s - 1, generator, positions=(0, s),
                                      result=result, label="interpolate")
                frames = torch.cat([between, key], dim=axis)
                count = min(s, total - produced)
                sink(frames.narrow(axis, 0, count), produced)
                produced += count
                result.frames = produced
                last_key, last_state = key, GENERATED
                bar.update(1)
                if produced >= total:
                    break
            keys, key_state = self._keep(torch.cat([keys, generated], dim=axis), key_state + (GENERATED,) * new_keys,
                                         max(plan.context, 1))
        bar.close()
