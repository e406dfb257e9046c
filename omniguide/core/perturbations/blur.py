"""SEG's query blur: the Gaussian blur itself and the token grid the queries are laid on.

The grid comes from the sample's shape: 2-D for images (aspect ratio of the sample), per frame for
video, 1-D for audio. ``sigma = inf`` replaces the queries by their mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, GuidanceError

INF_BLUR = 9999.0  # sigma above this is treated as infinite (official SEG-SDXL's threshold)


# -- the Gaussian blur -----------------------------------------------------------------------------
def gaussian_kernel_size(sigma: float) -> int:
    """SEG-SDXL's kernel size: the odd number ``ceil(6 sigma) + 1 - ceil(6 sigma) % 2``."""
    k = math.ceil(6 * sigma)
    return k + 1 - k % 2


def gaussian_blur(x: Tensor, sigma: float, dims: Sequence[int]) -> Tensor:
    """Separable Gaussian blur of ``x`` along ``dims`` with reflect padding (SEG-SDXL's blur).

    Per axis of size ``n`` the kernel has ``min(ceil(6 sigma)|odd, n if n odd else n + 1)`` taps at
    ``-h..h`` with weights ``exp(-x^2 / (2 sigma^2))`` normalised to 1; ``sigma = inf`` (or above
    9999) gives the mean over ``dims`` instead, the limit SEG calls infinite blur."""
    if math.isinf(sigma) or sigma > INF_BLUR:
        return x.mean(dim=tuple(dims), keepdim=True).expand_as(x)
    if sigma <= 0:
        raise ConfigError("blur_sigma", f"must be > 0, got {sigma}")
    for dim in dims:
        x = _blur_1d(x, sigma, dim % x.ndim)
    return x


def _blur_1d(x: Tensor, sigma: float, dim: int) -> Tensor:
    n = x.shape[dim]
    size = min(gaussian_kernel_size(sigma), n if n % 2 else n + 1)
    if size <= 1:
        return x
    half = (size - 1) / 2
    taps = torch.linspace(-half, half, size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, 1, n)
    flat = F.pad(flat, (size // 2, size // 2), mode="reflect")
    out = F.conv1d(flat, kernel.view(1, 1, -1))
    return out.reshape(moved.shape).movedim(-1, dim)


# -- the token grid --------------------------------------------------------------------------------
def token_grid(tokens: int, batch: int, sample_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """``(frames, grid)`` of ``tokens`` query tokens for a sample of ``sample_shape``.

    3-D ``[B, C, T]``: a 1-D grid of all tokens. 4-D ``[B, C, H, W]``: ``(h, w)`` with
    ``h * w = tokens`` and ``h / w = H / W`` (any down-sampling or patch size). 5-D
    ``[B, C, F, H, W]``: per-frame attention (query batch ``B * F``) or all frames in one sequence
    (query batch ``B``, ``tokens = f * h * w`` with the largest ``f <= F``)."""
    ndim = len(sample_shape)
    if ndim == 3:
        return 1, (tokens,)
    if ndim not in (4, 5):
        raise GuidanceError(f"seg: cannot lay queries on a grid for a {ndim}-D sample {tuple(sample_shape)}")
    height, width = sample_shape[-2], sample_shape[-1]
    frames = sample_shape[2] if ndim == 5 else 1
    b = sample_shape[0]
    options = [1] if batch == b * frames else [f for f in range(frames, 0, -1) if tokens % f == 0]
    if batch not in (b, b * frames):
        options = []
    for f in options:
        grid = _spatial_grid(tokens // f, height, width)
        if grid is not None:
            return f, grid
    raise GuidanceError(f"seg: cannot infer the token grid of {tokens} query tokens (query batch {batch}) for a sample "
                        f"{tuple(sample_shape)}; joint text+image tokens? pass grid=(h, w)")


def _spatial_grid(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    guess = math.sqrt(tokens * height / width)
    for h in sorted({max(1, math.floor(guess)), math.ceil(guess)}, key=lambda v: abs(v - guess)):
        if tokens % h == 0 and abs(math.log((h / (tokens // h)) / (height / width))) < 0.35:
            return h, tokens // h
    return None


def blur_queries(query: Tensor, sigma: float, frames: int, grid: Sequence[int]) -> Tensor:
    """Blur ``query [B, N, C]`` on its token grid: ``N = frames * prod(grid)``, row-major."""
    b, n, c = query.shape
    if frames * math.prod(grid) != n:
        raise GuidanceError(f"seg: grid {frames} x {tuple(grid)} does not hold {n} query tokens")
    x = query.reshape(b * frames, *grid, c)
    x = gaussian_blur(x, sigma, dims=range(1, 1 + len(grid)))
    return x.reshape(b, n, c)
