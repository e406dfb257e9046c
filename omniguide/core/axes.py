"""Axes: which tensor dims a method reduces over (norms, projections, std) and transforms (FFT).

Never "all non-batch dims" by default: an audio latent ``[B, C, T]``, a video ``[B, C, F, H, W]``
and an image ``[B, C, H, W]`` differ, and APG, rescale, TCFG, CFG-Zero* and FDG all depend on it
(ComfyUI's APG hard-codes dims ``[-1, -2, -3]``, which on a 3-D audio latent includes the batch).
The caller -- a modality adapter, the sampler, or the user -- declares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import GuidanceError

# layout letter -> role; B batch, C channels, F frames, T time, H/W space, D features, L tokens
_FREQUENCY_LETTERS = set("THWDL")


@dataclass(frozen=True)
class Axes:
    """``reduce``: dims for norms, inner products and standard deviations.
    ``frequency``: dims for Fourier / pyramid transforms (FDG, frequency-banded caches).
    ``layout``: the letters the dims came from, for error messages and docs."""

    reduce: tuple[int, ...]
    frequency: tuple[int, ...] = ()
    layout: str = ""

    @staticmethod
    def from_layout(layout: str, per_frame: bool = False) -> Axes:
        """``Axes.from_layout("BCHW")`` -> reduce (1, 2, 3), frequency (2, 3).

        ``per_frame=True`` keeps the frame axis ``F`` out of the reduction, so statistics are
        taken per frame (video)."""
        layout = layout.upper()
        if not layout.startswith("B") or len(set(layout)) != len(layout):
            raise GuidanceError(f"axes layout '{layout}': must start with 'B' and name each dim once")
        reduce = tuple(i for i, c in enumerate(layout) if c != "B" and not (per_frame and c == "F"))
        frequency = tuple(i for i, c in enumerate(layout) if c in _FREQUENCY_LETTERS)
        return Axes(reduce=reduce, frequency=frequency or reduce, layout=layout)

    def config(self) -> str | dict:
        """A plain value that :func:`as_axes` turns back into these axes."""
        if self.layout and Axes.from_layout(self.layout) == self:
            return self.layout
        return {"reduce": list(self.reduce), "frequency": list(self.frequency), "layout": self.layout}

    def check(self, x: Tensor, who: str = "axes") -> None:
        for d in (*self.reduce, *self.frequency):
            if not -x.ndim <= d < x.ndim or d % x.ndim == 0:
                raise GuidanceError(f"{who}: axis {d} is invalid for a {x.ndim}-D sample {tuple(x.shape)} "
                                    f"(layout '{self.layout or '?'}'; the batch dim 0 is never reduced)")


def as_axes(value: Axes | str | Sequence[int] | Mapping | None) -> Axes | None:
    """Accept an :class:`Axes`, a layout string ("BCT"), a tuple of reduce dims, or a mapping
    ``{reduce: [...], frequency: [...]}`` (what :meth:`Axes.config` writes)."""
    if value is None or isinstance(value, Axes):
        return value
    if isinstance(value, str):
        return Axes.from_layout(value)
    if isinstance(value, Mapping):
        reduce = tuple(int(d) for d in value["reduce"])
        frequency = tuple(int(d) for d in value.get("frequency", reduce))
        return Axes(reduce, frequency, str(value.get("layout", "")))
    dims = tuple(int(d) for d in value)
    return Axes(reduce=dims, frequency=dims)


def _accumulate(a: Tensor) -> Tensor:
    """Half-precision sums over a whole latent overflow (65k entries of order 1 exceed fp16's
    65504), so reductions accumulate in float32; the result stays float32 and promotes."""
    return a.float() if a.dtype in (torch.float16, torch.bfloat16) else a


def dot(a: Tensor, b: Tensor, axes: Axes) -> Tensor:
    """Inner product over ``axes.reduce``, keeping dims for broadcasting."""
    return (_accumulate(a) * _accumulate(b)).sum(dim=axes.reduce, keepdim=True)


def norm(a: Tensor, axes: Axes) -> Tensor:
    """Euclidean norm over ``axes.reduce``, keeping dims."""
    return _accumulate(a).pow(2).sum(dim=axes.reduce, keepdim=True).sqrt()


def std(a: Tensor, axes: Axes) -> Tensor:
    """Standard deviation over ``axes.reduce`` (unbiased, as torch and diffusers), keeping dims."""
    return _accumulate(a).std(dim=axes.reduce, keepdim=True)
