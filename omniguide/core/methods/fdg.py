"""Frequency-decoupled guidance (Sadat et al. 2025, "Guidance in the Frequency Domain Enables
High-Fidelity Sampling at Low CFG Scales", arXiv:2506.19713, Algorithm 2).

Split ``c`` and ``u`` into frequency bands over the declared frequency axes, guide each band with its
own scale, and merge:

    c_k, u_k = band_k(c), band_k(u)                      k = 0 (finest) ... L-1 (coarsest, "low")
    d_k      = c_k - u_k;   d_k = p d_k_par + d_k_orth    (optional, projection on c_k; p = 1: off)
    g_k      = u_k + w_k d_k                               form "u+w(c-u)" (c_k + w_k d_k: "c+w(c-u)")
    pred     = merge(g_0 ... g_{L-1})

``scale`` is the low (coarsest) band's scale and ``scale_high`` the other bands' (one value, or one
per band from the finest); the paper recommends ``w_low < w_high`` (5 and 10 for SDXL).

Bands (pure torch, any number of frequency axes -- ``T`` for audio, ``H, W`` for images):

* ``pyramid`` -- a Laplacian pyramid with the 5-tap binomial kernel, reflect borders and linear
  2x resampling, separable over the axes. On 2-D it reproduces kornia's ``build_laplacian_pyramid``
  / ``pyrup`` (diffusers' FDG). A side not divisible by ``2^(L-1)`` is reflect-padded to the next
  multiple and cropped back (kornia pads to a power of two and diffusers returns the padded size).
* ``fft`` -- two bands: an ideal radial low-pass of relative radius ``cutoff`` (1 = Nyquist).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..axes import Axes
from ..errors import ConfigError, GuidanceError, check_choice
from ..guider import GuidanceStep
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import CFGFamily, project

TRANSFORMS = ("pyramid", "fft")
_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _along(x: Tensor, dim: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a 1-D op on ``[N, 1, L]`` lines along ``dim``."""
    moved = x.movedim(dim, -1)
    out = fn(moved.reshape(-1, 1, moved.shape[-1]))
    return out.reshape(*moved.shape[:-1], out.shape[-1]).movedim(-1, dim)


def _blur(v: Tensor) -> Tensor:
    kernel = torch.tensor(_BINOMIAL, dtype=v.dtype, device=v.device).view(1, 1, 5)
    return F.conv1d(F.pad(v, (2, 2), mode="reflect"), kernel)


def _down(v: Tensor) -> Tensor:
    return F.interpolate(_blur(v), size=v.shape[-1] // 2, mode="linear", align_corners=False)


def _up(v: Tensor) -> Tensor:
    return _blur(F.interpolate(v, size=v.shape[-1] * 2, mode="linear", align_corners=False))


def _each(x: Tensor, dims: tuple[int, ...], fn: Callable[[Tensor], Tensor]) -> Tensor:
    for d in dims:
        x = _along(x, d, fn)
    return x


def split_bands(x: Tensor, dims: tuple[int, ...], levels: int = 2, transform: str = "pyramid",
                cutoff: float = 0.25) -> list[Tensor]:
    """Frequency bands of ``x`` over ``dims``, finest first; :func:`merge_bands` inverts it exactly."""
    if transform == "fft":
        spec = torch.fft.fftn(x, dim=dims)
        radius = sum(torch.fft.fftfreq(x.shape[d], device=x.device).abs().div(0.5).pow(2).reshape(
            [x.shape[d] if i == d % x.ndim else 1 for i in range(x.ndim)]) for d in dims).sqrt()
        low = torch.fft.ifftn(spec * (radius <= cutoff), dim=dims).real.to(x.dtype)
        return [x - low, low]
    bands = []
    for _ in range(levels - 1):
        low = _each(x, dims, _down)
        bands.append(x - _each(low, dims, _up))
        x = low
    return [*bands, x]


def merge_bands(bands: list[Tensor], dims: tuple[int, ...], transform: str = "pyramid") -> Tensor:
    """Rebuild from :func:`split_bands` output."""
    if transform == "fft":
        return bands[0] + bands[1]
    x = bands[-1]
    for band in reversed(bands[:-1]):
        x = _each(x, dims, _up) + band
    return x


def pad_for_pyramid(x: Tensor, dims: tuple[int, ...], levels: int, who: str = "fdg") -> Tensor:
    """Reflect-pad each of ``dims`` up to a multiple of ``2^(levels-1)`` (at least 2 per coarsest side)."""
    stride = 2 ** (levels - 1)
    for d in dims:
        n = x.shape[d]
        target = max(-(-n // stride) * stride, 2 * stride)
        if target - n >= n:
            raise GuidanceError(f"{who}: axis {d} has {n} entries, too short for a {levels}-level pyramid")
        if target > n:
            x = _along(x, d, lambda v, p=target - n: F.pad(v, (0, p), mode="reflect"))
    return x


@register_guider("fdg")
@dataclass
class FDG(CFGFamily):
    """Frequency-decoupled guidance: CFG per frequency band with ``scale`` (low band) and
    ``scale_high`` (higher bands); see the module docstring (Sadat et al. 2025, arXiv:2506.19713).

    Linear (and so the same in every space) unless ``parallel_weight != 1``; ``space=None`` runs in
    the model's own parameterization as diffusers does."""

    scale: Scale = 5.0
    scale_high: Scale | tuple = 10.0
    levels: int = 2
    parallel_weight: float = 1.0
    transform: str = "pyramid"
    cutoff: float = 0.25
    form: str = "u+w(c-u)"
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.transform, TRANSFORMS, "transform")
        if int(self.levels) < 2 or (self.transform == "fft" and self.levels != 2):
            raise ConfigError("levels", f"needs >= 2 bands (2 with transform='fft'), got {self.levels}")
        if isinstance(self.scale_high, tuple) and len(self.scale_high) != self.levels - 1:
            raise ConfigError("scale_high", f"give one scale or {self.levels - 1} (one per upper band)")

    def band_scales(self, step: GuidanceStep) -> list:
        high = self.scale_high
        if not isinstance(high, tuple):
            high = (high,) * (self.levels - 1)
        return [resolve(s, step) for s in (*high, self.scale)]

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if all(is_neutral(w, self.neutral) for w in self.band_scales(step)):
            return ("cond",)
        return ("cond", "uncond")

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        axes = step.require_axes("fdg", self.axes)
        dims = axes.frequency
        size = [c.shape[d] for d in dims]
        if self.transform == "pyramid":
            c, u = (pad_for_pyramid(v, dims, self.levels) for v in (c, u))
        scales = self.band_scales(step)
        if self.transform == "pyramid" and any(isinstance(w, Tensor) and w.ndim == c.ndim and
                                               any(w.shape[d] != 1 for d in dims) for w in scales):
            raise GuidanceError("fdg: a tensor scale must be constant along the frequency axes "
                                "(the coarser pyramid bands have fewer entries); use transform='fft'")
        bands = []
        for w, ck, uk in zip(scales, *(split_bands(v, dims, self.levels, self.transform,
                                                                   self.cutoff) for v in (c, u))):
            dk = ck - uk
            if self.parallel_weight != 1.0:
                par, orth = project(dk, ck, axes)
                dk = self.parallel_weight * par + orth
            bands.append((uk if self.form == "u+w(c-u)" else ck) + w * dk)
        out = merge_bands(bands, dims, self.transform)
        for d, n in zip(dims, size):
            out = out.narrow(d, 0, n)
        return out
