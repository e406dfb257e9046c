"""Per-frame noise levels for training denoisers that condition on history (Diffusion Forcing style).

A model that history guidance drives must have seen, in training, the situations it is queried in:
a prefix (or a subset) of frames given clean, slightly noisy or fully masked while the other frames
share one noise level. :func:`history_levels` draws such levels; the zoo's video model and its
audio model both train on them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def history_levels(n: int, frames: int, generator: torch.Generator, p_clean: float, p_masked: float,
                   p_structured: float, block: int = 1) -> Tensor:
    """``[n, frames]`` noise levels in [0, 1], constant over blocks of ``block`` frames.

    A clip is *structured* with probability ``p_structured``: some blocks are history (a prefix 80 %
    of the time, else a random subset) at one level per clip (clean 60 %, small 0-0.1 10 %, uniform
    15 %, masked 15 %; each history block also masked alone with probability 0.2), the other blocks
    share one uniform level. Otherwise every block is independent: uniform, with atoms at 0 (clean,
    ``p_clean``) and 1 (masked, ``p_masked``)."""
    if frames % block:
        raise ValueError(f"{frames} frames are not a whole number of {block}-frame blocks")
    m = frames // block
    t = torch.rand(n, m, generator=generator)
    u = torch.rand(n, m, generator=generator)
    t = torch.where(u < p_clean, torch.zeros_like(t), t)
    t = torch.where((u >= p_clean) & (u < p_clean + p_masked), torch.ones_like(t), t)
    structured = torch.rand(n, generator=generator) < p_structured
    count = torch.randint(0, m, (n,), generator=generator)
    prefix = torch.arange(m).unsqueeze(0) < count.unsqueeze(1)
    subset = torch.rand(n, m, generator=generator) < count.unsqueeze(1) / m
    history = torch.where((torch.rand(n, generator=generator) < 0.8).unsqueeze(1), prefix, subset)
    kind = torch.rand(n, generator=generator)
    level = torch.where(kind < 0.6, torch.zeros(n), torch.where(kind < 0.7, 0.1 * torch.rand(n, generator=generator),
                        torch.where(kind < 0.85, torch.rand(n, generator=generator), torch.ones(n))))
    level = torch.where(torch.rand(n, m, generator=generator) < 0.2, torch.ones(n, m), level.unsqueeze(1))
    shared = torch.rand(n, 1, generator=generator).expand(n, m)
    structured_t = torch.where(history, level, shared)
    return torch.where(structured.unsqueeze(1), structured_t, t).repeat_interleave(block, dim=1)
