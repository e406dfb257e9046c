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
* ``step``  -- ``index / (num_steps - 1)``: 0 at the first sampling step, 1 at the last; samplers
  only. Interval, Schedule, Terms and β-CFG all read this one definition.
"""

from __future__ import annotations

import math
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
                raise ConfigError("coordinate",
                                  "'step' exists only inside a sampler loop (score distillation has none)")
            return torch.as_tensor(index / max(num_steps - 1, 1), dtype=self.sigma.dtype)
        raise ConfigError("coordinate", f"unknown coordinate '{name}'; valid: {', '.join(COORDINATES)}")


def coordinate_range(name: str) -> tuple[float, float]:
    """The valid range of a coordinate, for checking intervals."""
    if name == "sigma":
        return 0.0, float("inf")
    if name in ("t", "step"):
        return 0.0, 1.0
    raise ConfigError("coordinate", f"unknown coordinate '{name}'; valid: {', '.join(COORDINATES)}")


def per_sample(noise: NoiseLevel, ndim: int) -> NoiseLevel:
    """A noise level with one value per sample (``[B]``) reshaped to broadcast against a ``ndim``-D
    sample (``[B, 1, ..., 1]``); 0-d and already-broadcastable levels are returned unchanged."""
    def shape(v):
        return v.reshape(v.shape[0], *([1] * (ndim - 1))) if v is not None and v.ndim == 1 else v
    return NoiseLevel(shape(noise.alpha), shape(noise.sigma), shape(noise.t))


@dataclass(frozen=True)
class NoiseSchedule:
    """A model's training noise path: the noise level of its input at a timestep, and back.

    * ``vp``   -- ``alpha_bar`` from the training table (``alphas_cumprod``). Between integer
      timesteps ``log(sigma / alpha)`` is interpolated linearly, which is how diffusers' Euler
      schedulers map continuous timesteps to sigmas, so fractional timesteps read correctly.
    * ``flow`` -- ``t = timestep / num_train_timesteps``; ``alpha = 1 - t``, ``sigma = t``.
    * ``edm``  -- EDM-preconditioned models (Karras et al. 2022, arXiv:2206.00364) as diffusers'
      EDM and cosine schedulers drive them: the timestep is ``c_noise(s)`` of the sample's noise
      ``s`` -- ``0.25 log s`` (``preconditioning="log"``: EDMEuler, EDMDPMSolver) or
      ``atan(s) 2/pi`` (``"atan"``: CosineDPMSolver, Stable Audio) -- and the model sees
      ``c_in x = x / sqrt(s^2 + sigma_data^2)``. In units of ``x0 / sigma_data`` that input is VP
      with ``alpha = sigma_data / sqrt(s^2 + sigma_data^2)``, ``sigma = s / sqrt(s^2 + sigma_data^2)``,
      and the EDM ``v_prediction`` output ``F`` (``x0 = c_skip x + c_out F``) is exactly ``v``.

    ``t`` (model time in [0, 1]) is ``timestep / num_train_timesteps`` for vp and flow, and
    ``atan(s / sigma_data) 2/pi`` for edm (stable-audio-tools' ``t`` with ``sigma_data = 1``).
    Timesteps may be scalars or tensors (per sample, per frame); the noise level has their shape."""

    kind: str
    num_train_timesteps: int = 1000
    alphas_cumprod: Tensor | None = None
    sigma_data: float = 1.0
    preconditioning: str = "log"

    def __post_init__(self):
        if self.kind not in ("vp", "flow", "edm"):
            raise ConfigError("noise_schedule", f"unknown kind '{self.kind}'; valid: vp, flow, edm")
        if self.kind == "edm" and self.preconditioning not in ("log", "atan"):
            raise ConfigError("noise_schedule",
                              f"unknown EDM preconditioning '{self.preconditioning}'; valid: log, atan")
        if self.kind == "vp" and self.alphas_cumprod is None:
            raise ConfigError("noise_schedule", "a vp schedule needs its alphas_cumprod table")

    @staticmethod
    def vp(alphas_cumprod: Tensor) -> NoiseSchedule:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        return NoiseSchedule("vp", len(abar), abar)

    @staticmethod
    def flow(num_train_timesteps: int = 1000) -> NoiseSchedule:
        return NoiseSchedule("flow", int(num_train_timesteps))

    @staticmethod
    def edm(sigma_data: float = 1.0, preconditioning: str = "log") -> NoiseSchedule:
        return NoiseSchedule("edm", 1, None, float(sigma_data), preconditioning)

    def _edm_sigma(self, ts: Tensor) -> Tensor:
        return torch.exp(4 * ts) if self.preconditioning == "log" else torch.tan(ts * (math.pi / 2))

    def _log_sigmas(self) -> Tensor:
        abar = self.alphas_cumprod
        return 0.5 * (torch.log1p(-abar) - torch.log(abar))

    def noise(self, timestep) -> NoiseLevel:
        """The noise level of the model input at ``timestep`` (float64)."""
        ts = torch.as_tensor(timestep, dtype=torch.float64).detach().cpu()
        unit = ts / self.num_train_timesteps
        if self.kind == "flow":
            return NoiseLevel.flow(unit)
        if self.kind == "edm":
            s, sd = self._edm_sigma(ts), self.sigma_data
            norm = torch.rsqrt(s * s + sd * sd)
            return NoiseLevel(sd * norm, s * norm, torch.atan(s / sd) * (2 / math.pi))
        log_sigmas = self._log_sigmas()
        low = ts.floor().clamp(0, len(log_sigmas) - 2)
        frac = (ts - low).clamp(0, 1)
        low = low.long()
        log_sigma = (1 - frac) * log_sigmas[low] + frac * log_sigmas[low + 1]
        scale = torch.rsqrt(1 + torch.exp(2 * log_sigma))          # alpha = 1 / sqrt(1 + s^2)
        return NoiseLevel(scale, torch.exp(log_sigma) * scale, unit)

    def timestep(self, noise: NoiseLevel) -> Tensor:
        """The (continuous) timestep whose noise level is ``noise``: the inverse of :meth:`noise`."""
        if self.kind == "flow":
            t = noise.sigma / (noise.alpha + noise.sigma)
            return t.double() * self.num_train_timesteps
        if self.kind == "edm":
            s = noise.sigma_edm.double().cpu() * self.sigma_data
            return 0.25 * torch.log(s) if self.preconditioning == "log" else torch.atan(s) * (2 / math.pi)
        log_sigmas = self._log_sigmas()
        target = torch.log(noise.sigma_edm.double().cpu()).clamp(log_sigmas[0], log_sigmas[-1])
        high = torch.searchsorted(log_sigmas, target.reshape(-1)).clamp(1, len(log_sigmas) - 1).reshape(target.shape)
        lo, hi = log_sigmas[high - 1], log_sigmas[high]
        return (high - 1).double() + (target - lo) / (hi - lo)
