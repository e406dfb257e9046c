"""A model output with its parameterization, and exact conversions between all four.

With ``x = alpha * x0 + sigma * eps`` (see :mod:`noise`):

* ``eps``  -- the noise;                         ``x0  = (x - sigma * eps) / alpha``
* ``x0``   -- the denoised sample;               ``eps = (x - alpha * x0) / sigma``
* ``v``    -- ``v = alpha * eps - sigma * x0`` (Salimans & Ho 2022);
             ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``, ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``
* ``flow`` -- rectified-flow velocity ``eps - x0`` (what diffusers' flow-matching models predict);
             ``x0 = (x - sigma f) / (alpha + sigma)``, ``eps = (x + alpha f) / (alpha + sigma)``

Every parameterization is an affine function of ``(x0, eps)`` at a fixed noise level, so the
conversions are exact (up to rounding) and any linear guidance rule gives the same result in
every space. Non-linear rules (norms, projections, std) declare the space they work in.

Without a noise level (``noise=None``: logits, which no ``x = alpha x0 + sigma eps`` describes) there
is nothing to convert along: the value stands for every parameterization, so a guider's space
changes nothing there (guiders that need alpha or sigma declare ``noise-level``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .errors import GuidanceError
from .noise import NoiseLevel

PARAMETERIZATIONS = ("eps", "x0", "v", "flow")

# diffusers' scheduler names for the same things
DIFFUSERS_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}


def check_parameterization(kind: str, where: str = "parameterization") -> str:
    name = DIFFUSERS_PREDICTION_TYPES.get(kind, kind)
    if name not in PARAMETERIZATIONS:
        valid = ", ".join((*PARAMETERIZATIONS, *DIFFUSERS_PREDICTION_TYPES))
        raise GuidanceError(f"{where}: unknown parameterization '{kind}'; valid: {valid}")
    return name


def to_x0_eps(value: Tensor, kind: str, x: Tensor, noise: NoiseLevel | None) -> tuple[Tensor, Tensor]:
    """Split a prediction of ``kind`` at sample ``x`` into ``(x0, eps)``."""
    kind = DIFFUSERS_PREDICTION_TYPES.get(kind, kind)
    if noise is None and kind in PARAMETERIZATIONS:
        return value, value
    a, s = noise.alpha, noise.sigma
    if kind == "eps":
        return (x - s * value) / a, value
    if kind == "x0":
        return value, (x - a * value) / s
    if kind == "v":
        norm = a * a + s * s
        return (a * x - s * value) / norm, (s * x + a * value) / norm
    if kind == "flow":
        norm = a + s
        return (x - s * value) / norm, (x + a * value) / norm
    raise GuidanceError(f"unknown parameterization '{kind}'; valid: {', '.join(PARAMETERIZATIONS)}")


def from_x0_eps(x0: Tensor, eps: Tensor, kind: str, noise: NoiseLevel | None) -> Tensor:
    """Express the pair ``(x0, eps)`` in parameterization ``kind``."""
    kind = DIFFUSERS_PREDICTION_TYPES.get(kind, kind)
    if noise is None and kind in PARAMETERIZATIONS:
        return x0
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return noise.alpha * eps - noise.sigma * x0
    if kind == "flow":
        return eps - x0
    raise GuidanceError(f"unknown parameterization '{kind}'; valid: {', '.join(PARAMETERIZATIONS)}")


def convert(value: Tensor, src: str, dst: str, x: Tensor, noise: NoiseLevel | None) -> Tensor:
    """Convert a prediction between parameterizations at sample ``x``."""
    src, dst = DIFFUSERS_PREDICTION_TYPES.get(src, src), DIFFUSERS_PREDICTION_TYPES.get(dst, dst)
    if src == dst:
        return value
    x0, eps = to_x0_eps(value, src, x, noise)
    return from_x0_eps(x0, eps, dst, noise)


@dataclass(frozen=True)
class Prediction:
    """One branch's model output: ``value`` in parameterization ``kind`` at sample ``x``."""

    value: Tensor
    kind: str
    x: Tensor
    noise: NoiseLevel | None

    def __post_init__(self):
        object.__setattr__(self, "kind", check_parameterization(self.kind, "prediction"))

    def to(self, kind: str) -> Tensor:
        """This prediction as a tensor in parameterization ``kind``."""
        return convert(self.value, self.kind, kind, self.x, self.noise)

    @property
    def eps(self) -> Tensor:
        return self.to("eps")

    @property
    def x0(self) -> Tensor:
        return self.to("x0")

    def with_value(self, value: Tensor, kind: str | None = None) -> Prediction:
        return Prediction(value, kind or self.kind, self.x, self.noise)


@dataclass(frozen=True)
class Guided:
    """A guider's result: a denoised estimate and a noise estimate at sample ``x``.

    For most methods the two are consistent (``x = alpha x0 + sigma eps``). CFG++ is the exception:
    guided ``x0`` with the *unconditional* ``eps``; samplers step from the pair
    (``x_next = alpha_next x0 + sigma_next eps`` for first-order solvers).
    """

    x0: Tensor
    eps: Tensor
    x: Tensor
    noise: NoiseLevel | None
    consistent: bool = True

    @staticmethod
    def from_value(value: Tensor, kind: str, x: Tensor, noise: NoiseLevel | None) -> Guided:
        x0, eps = to_x0_eps(value, kind, x, noise)
        return Guided(x0, eps, x, noise, True)

    def to(self, kind: str) -> Tensor:
        """The guided prediction in parameterization ``kind``; for an inconsistent pair this is the
        prediction that, at the re-anchored sample ``alpha x0 + sigma eps``, reproduces both ``x0`` and ``eps``."""
        return from_x0_eps(self.x0, self.eps, kind, self.noise)
