"""Noise levels: ``x_t = alpha * x0 + sigma * eps``.

One form covers every path the project meets:

* VP / DDPM:        ``alpha = sqrt(abar_t)``, ``sigma = sqrt(1 - abar_t)``
* VE / EDM:         ``alpha = 1``, ``sigma = sigma_edm``
* rectified flow:   ``alpha = 1 - t``, ``sigma = t``

``alpha`` and ``sigma`` are tensors broadcastable to ``x_t`` (0-d for one level per batch,
``[B, 1, ...]`` per sample, ``[B, 1, F, 1, 1]`` per frame, ``[B, T, 1]`` per token).

Schedules, intervals and weights name the coordinate they read (see :meth:`NoiseLevel.coordinate`):

* ``sigma`` -- the EDM-equivalent noise level ``sigma / alpha`` (path independent);
* ``t``     -- model time in ``[0, 1]`` (1 = pure noise), carried by whoever knows it;
* ``step``  -- ``index / num_steps``, the fraction of sampling steps done; samplers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

COORDINATES = ("sigma", "t", "step")


def _as_tensor(value, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(value, dtype=dtype, device=device)


@dataclass(frozen=True)
class NoiseLevel:
    """``x_t = alpha * x0 + sigma * eps``; ``t`` is the model time in ``[0, 1]`` when known."""

    alpha: Tensor
    sigma: Tensor
    t: Tensor | None = None

    @staticmethod
    def vp(alpha_bar, t=None) -> NoiseLevel:
        """Variance preserving: ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``."""
        abar = _as_tensor(alpha_bar)
        return NoiseLevel(abar.sqrt(), (1 - abar).sqrt(), None if t is None else _as_tensor(t))

    @staticmethod
    def edm(sigma, t=None) -> NoiseLevel:
        """Variance exploding (EDM): ``alpha = 1``."""
        sigma = _as_tensor(sigma)
        return NoiseLevel(torch.ones_like(sigma), sigma, None if t is None else _as_tensor(t))

    @staticmethod
    def flow(t) -> NoiseLevel:
        """Rectified flow: ``alpha = 1 - t``, ``sigma = t``."""
        t = _as_tensor(t)
        return NoiseLevel(1 - t, t, t)

    @property
    def sigma_edm(self) -> Tensor:
        """The path-independent noise level ``sigma / alpha`` (infinite at pure noise)."""
        return self.sigma / self.alpha

    def to(self, like: Tensor) -> NoiseLevel:
        """Move to ``like``'s device and dtype (float64 stays float64)."""
        def cast(v):
            return None if v is None else v.to(device=like.device, dtype=like.dtype)
        return NoiseLevel(cast(self.alpha), cast(self.sigma), cast(self.t))

    def coordinate(self, name: str, index: int | None = None, num_steps: int | None = None) -> Tensor:
        """The value of a named coordinate: ``sigma``, ``t`` or ``step`` (see the module docstring)."""
        if name == "sigma":
            return self.sigma_edm
        if name == "t":
            if self.t is None:
                raise ConfigError("coordinate", "this noise level carries no model time 't'; use 'sigma'")
            return self.t
        if name == "step":
            if index is None or not num_steps:
                raise ConfigError(
                    "coordinate", "'step' exists only inside a sampler loop (score distillation has none)"
                )
            return torch.as_tensor(index / num_steps, dtype=self.sigma.dtype)
        raise ConfigError("coordinate", f"unknown coordinate '{name}'; valid: {', '.join(COORDINATES)}")


def coordinate_range(name: str) -> tuple[float, float]:
    """The valid range of a coordinate, for checking intervals."""
    if name == "sigma":
        return 0.0, float("inf")
    if name in ("t", "step"):
        return 0.0, 1.0
    raise ConfigError("coordinate", f"unknown coordinate '{name}'; valid: {', '.join(COORDINATES)}")
