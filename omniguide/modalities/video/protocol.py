"""The protocol for denoisers with per-frame noise levels, and what a window's history is.

A *full-sequence* denoiser (Diffusion Forcing, Chen et al. 2024, arXiv:2407.01392; DFoT, Song et al.
2025, arXiv:2502.06764) takes a window of frames, each at its own noise level:
``net(window [B, C, F, H, W], timestep [B, F], **conditions) -> prediction [B, C, F, H, W]``.
Conditioning on history is then "history frames at noise level 0".

:class:`HistoryDenoiser` turns such a net into what the guidance core drives: the *sample* is the
frames to generate alone, and the history enters as ordinary model inputs,

    model(sample [B, C, Fg, H, W], timestep, history=[B, C, Fh, H, W], history_timestep=[B, Fh],
          history_at=(window positions of the history frames), **conditions) -> prediction of the Fg frames

so every branch of a guider sees the same sample at the same noise level, and a branch that sets
history frames clean, noised or masked is a plain input override (merged by value, batched by the
executor). Generated frames keep their noise level from the sampler; history frames carry theirs.

History is **tri-state** per frame (DFoT's ``context_mask``): ``GIVEN`` (ground truth), ``GENERATED``
(produced earlier in the rollout) or, implicitly, ``TARGET`` (to generate in this window). The
distinction matters: generated history can be fed at a small *stabilization* level, and guidance
must mask it like given history (the reference code once masked only ground-truth history in the
unconditional branch, so generated history was never guided; DFoT commit 2afc548, issue #4).
:class:`History` holds the clean frames, their states and one fixed noise draw, and turns a tuple
of per-frame levels (0 = clean, 1 = fully masked, ``k`` = noised to ``k``: only low frequencies
survive) into the model inputs of one branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...core.errors import GuidanceError
from ...core.model_call import default_output
from ...core.noise import NoiseSchedule

TARGET, GIVEN, GENERATED = 0, 1, 2
STATE_NAMES = {TARGET: "target", GIVEN: "given", GENERATED: "generated"}


@dataclass
class History:
    """The history of one window.

    ``frames`` ``[B, C, Fh, H, W]``: clean history (ground truth or earlier output); ``state``:
    ``GIVEN`` or ``GENERATED`` per frame; ``noise``: one fixed draw like ``frames``, used for every
    noised or masked frame of every branch (so branches differ only where their levels differ);
    ``positions``: where the history frames sit in the window (default: the first ``Fh``);
    ``schedule``: the model's noise path (``x_k = alpha_k x0 + sigma_k eps`` at level ``k``, model
    timestep ``k * num_train_timesteps``); ``axis``: the frame (sequence) axis of ``frames``;
    ``stabilization``: the level at which *generated* frames are fed when a branch wants them clean
    (a number, or ``[oldest, newest]`` interpolated over the generated frames by age, so the far
    past can be noisier; Diffusion Forcing's stabilization, DFoT's ``stabilization_level``)."""

    frames: Tensor
    state: tuple[int, ...]
    noise: Tensor
    schedule: NoiseSchedule
    positions: tuple[int, ...] | None = None
    axis: int = 2
    stabilization: float | Sequence[float] = 0.0

    def __post_init__(self):
        self.state = tuple(int(s) for s in self.state)
        n = self.frames.shape[self.axis]
        if len(self.state) != n:
            raise GuidanceError(f"history: {len(self.state)} frame states for {n} history frames")
        bad = [s for s in self.state if s not in (GIVEN, GENERATED)]
        if bad:
            raise GuidanceError(f"history: frame state {bad[0]} is neither GIVEN (1) nor GENERATED (2)")
        if self.noise.shape != self.frames.shape:
            raise GuidanceError(f"history: noise {tuple(self.noise.shape)} does not match frames "
                                f"{tuple(self.frames.shape)}")
        if self.positions is not None:
            self.positions = tuple(int(p) for p in self.positions)
            if len(self.positions) != n or len(set(self.positions)) != n:
                raise GuidanceError(f"history: positions {self.positions} must name {n} distinct window slots")

    def __len__(self) -> int:
        return len(self.state)

    @property
    def generated(self) -> tuple[bool, ...]:
        """True for frames generated earlier in the rollout."""
        return tuple(s == GENERATED for s in self.state)

    @property
    def clean_levels(self) -> tuple[float, ...]:
        """Each frame's level when fed "clean": 0 for given frames, the stabilization level for
        generated ones (see the class docstring)."""
        return stabilization_levels(self.state, self.stabilization)

    def inputs(self, levels: Sequence[float]) -> dict[str, Any]:
        """The model inputs of a branch that feeds history frame ``i`` at noise level ``levels[i]``:
        ``history`` (``alpha x0 + sigma noise`` per frame; exactly ``x0`` at 0 and ``noise`` at 1 on a
        flow path), ``history_timestep`` ``[B, Fh]`` and ``history_at``."""
        if len(levels) != len(self):
            raise GuidanceError(f"history: {len(levels)} levels for {len(self)} history frames")
        if any(not 0.0 <= float(k) <= 1.0 for k in levels):
            raise GuidanceError(f"history: levels {tuple(levels)} must lie in [0, 1]")
        k = torch.tensor([float(v) for v in levels], dtype=torch.float64)
        timestep = k * self.schedule.num_train_timesteps
        noise = self.schedule.noise(timestep)
        alpha = torch.where(k == 0, torch.ones_like(k), noise.alpha)
        sigma = torch.where(k == 0, torch.zeros_like(k), noise.sigma)
        shape = [1] * self.frames.ndim
        shape[self.axis] = len(self)
        alpha = alpha.to(self.frames).view(shape)
        sigma = sigma.to(self.frames).view(shape)
        batch = self.frames.shape[0]
        return {"history": alpha * self.frames + sigma * self.noise,
                "history_timestep": timestep.to(self.frames.dtype).to(self.frames.device).expand(batch, -1).clone(),
                "history_at": self.positions if self.positions is not None else tuple(range(len(self)))}


class HistoryDenoiser(nn.Module):
    """A full-sequence denoiser ``net(window, timestep [B, F], **conditions)`` seen through the protocol
    of the module docstring: ``model(sample, timestep, history=None, history_timestep=None,
    history_at=None, **conditions)`` returns the prediction of the ``sample`` frames only.

    ``axis`` is the frame (sequence) axis (2 for ``[B, C, F, H, W]``, 2 for audio ``[B, C, T]``);
    ``max_window`` (default: ``net.config.max_frames`` when the net has one) bounds history plus
    sample, and a longer window is a one-line error. The net may return a tensor, an object with
    ``.sample`` or a tuple (diffusers' ``return_dict=False``)."""

    def __init__(self, net: nn.Module, axis: int = 2, max_window: int | None = None):
        super().__init__()
        self.net = net
        self.axis = axis
        config = getattr(net, "config", None)
        self.max_window = max_window if max_window is not None else getattr(config, "max_frames", None)

    def forward(self, sample: Tensor, timestep: Any, history: Tensor | None = None,
                history_timestep: Tensor | None = None, history_at: Sequence[int] | None = None,
                **conditions: Any) -> Tensor:
        axis = self.axis
        n_gen = sample.shape[axis]
        n_hist = 0 if history is None else history.shape[axis]
        total = n_gen + n_hist
        if self.max_window is not None and total > self.max_window:
            raise GuidanceError(f"history of {n_hist} frames plus {n_gen} to generate is longer than the model's "
                                f"window of {self.max_window}")
        batch = sample.shape[0]
        t_gen = _per_frame(timestep, batch, n_gen, sample.device)
        if history is None:
            return default_output(self.net(sample, t_gen, **conditions))
        if history_timestep is None:
            raise GuidanceError("history given without history_timestep (one noise level per history frame)")
        at = tuple(range(n_hist)) if history_at is None else tuple(int(p) for p in history_at)
        if len(at) != n_hist or any(not 0 <= p < total for p in at):
            raise GuidanceError(f"history_at {at} must place {n_hist} history frames in a window of {total}")
        gen_at = [p for p in range(total) if p not in at]
        shape = list(sample.shape)
        shape[axis] = total
        window = sample.new_empty(shape)
        index = [slice(None)] * sample.ndim
        index[axis] = list(at)
        window[tuple(index)] = history.to(sample.dtype)
        index[axis] = gen_at
        window[tuple(index)] = sample
        t = t_gen.new_empty(batch, total)
        t[:, list(at)] = _per_frame(history_timestep, batch, n_hist, sample.device).to(t.dtype)
        t[:, gen_at] = t_gen
        out = default_output(self.net(window, t, **conditions))
        return out[tuple(index)]


def stabilization_levels(state: Sequence[int], stabilization: float | Sequence[float] = 0.0) -> tuple[float, ...]:
    """Clean levels per history frame: 0 for ``GIVEN``; for ``GENERATED`` frames ``stabilization``
    (a number), or ``[oldest, newest]`` linearly interpolated over the generated frames in order."""
    if isinstance(stabilization, (int, float)):
        ends = (float(stabilization), float(stabilization))
    else:
        ends = tuple(float(v) for v in stabilization)
        if len(ends) != 2:
            raise GuidanceError(f"stabilization: give one level or [oldest, newest], got {list(stabilization)}")
    if any(not 0.0 <= e < 1.0 for e in ends):
        raise GuidanceError(f"stabilization: levels {list(ends)} must lie in [0, 1)")
    generated = [i for i, s in enumerate(state) if s == GENERATED]
    out = [0.0] * len(state)
    for j, i in enumerate(generated):
        frac = j / (len(generated) - 1) if len(generated) > 1 else 1.0
        out[i] = round(ends[0] + (ends[1] - ends[0]) * frac, 6)
    return tuple(out)


def _per_frame(timestep: Any, batch: int, frames: int, device) -> Tensor:
    """A timestep as ``[batch, frames]``: a scalar, ``[batch]``, ``[frames]`` or ``[batch, frames]``."""
    t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    if t.ndim == 0 or t.numel() == 1:
        return t.reshape(1, 1).expand(batch, frames)
    if t.ndim == 1 and t.shape[0] == batch:
        return t.reshape(batch, 1).expand(batch, frames)
    if t.ndim == 1 and t.shape[0] == frames:
        return t.reshape(1, frames).expand(batch, frames)
    if t.ndim == 2 and t.shape == (batch, frames):
        return t
    raise GuidanceError(f"timestep of shape {tuple(t.shape)} is neither per sample nor per frame "
                        f"for {batch} samples of {frames} frames")
