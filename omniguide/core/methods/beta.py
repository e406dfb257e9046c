"""β-CFG (Malarz et al. 2025, "Classifier-free Guidance with Adaptive Scaling", arXiv:2502.10574;
reference code gmum/beta-CFG, ``latent_diffusion.py`` ``BetaDDIMGeo``).

A normalized guidance direction whose strength follows a Beta density over the sampling progress:

    d    = c - u
    pred = u + w * beta_pdf(x; a, b) * d / ||d||^gamma        (per sample over the declared axes)

``x`` runs from 0 at the first (noisiest) step to 1 at the last: the ``step`` coordinate
``i / (N - 1)`` (the reference's ``step / total_steps``) with ``coordinate="step"``, or ``x = 1 - t``
with ``coordinate="t"``, which also works for score distillation. ``normalize=True`` divides the
density by its value at the mode ``(a - 1) / (a + b - 2)`` (the reference's optional
``normalize``; it needs ``a, b > 1``).

With ``gamma = 1`` the update has norm ``w * beta_pdf`` whatever the latent size (the reference has
no dimension factor in this variant). Where ``w * beta_pdf(x) = 0`` (``x = 0`` or ``1`` for
``a, b > 1``) the result is exactly ``u`` and only the unconditional branch runs; ``u`` is also the
fallback outside an interval. ``space=None`` (default) works on the model's own output, which for
the reference (an eps model) is the noise prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..axes import Axes, as_axes, norm
from ..errors import ConfigError
from ..guider import STEP_INDEX, GuidanceStep, Guider, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import check_space, guided_in, in_space


def beta_pdf(x: Tensor, a: float, b: float) -> Tensor:
    """The Beta(a, b) density ``x^(a-1) (1-x)^(b-1) / B(a, b)`` (``xlogy`` keeps ``0^0 = 1``)."""
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return torch.exp(torch.xlogy(a - 1.0, x) + torch.xlogy(b - 1.0, 1.0 - x) - log_norm)


@register_guider("beta")
@dataclass
class BetaCFG(Guider):
    """``u + w beta_pdf(x; a, b) (c - u) / ||c - u||^gamma`` (Malarz et al. 2025, arXiv:2502.10574)."""

    scale: Scale = 7.5
    a: float = 2.0
    b: float = 3.0
    gamma: float = 1.0
    normalize: bool = False
    coordinate: str = "step"
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        if self.a <= 0 or self.b <= 0:
            raise ConfigError("a", f"Beta parameters must be > 0, got a={self.a}, b={self.b}")
        if self.normalize and not (self.a > 1 and self.b > 1):
            raise ConfigError("normalize", f"needs a, b > 1, got {self.a}, {self.b}")
        if self.coordinate not in ("step", "t"):
            raise ConfigError("coordinate", f"'step' or 't', got '{self.coordinate}'")
        self.space = check_space(self.space)
        self.axes = as_axes(self.axes)

    @property
    def neutral(self) -> float:
        return 0.0

    @property
    def fallback(self) -> str:
        return "uncond"

    def progress(self, step: GuidanceStep) -> Tensor:
        """``x`` in [0, 1], 0 at pure noise."""
        if self.coordinate == "t":
            return 1.0 - step.coordinate("t").double()
        return step.coordinate("step").double()

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if self.coordinate == "step":
            needs[STEP_INDEX] = "beta's density runs over the 'step' coordinate (use coordinate='t')"
        return needs

    def strength(self, step: GuidanceStep) -> float | Tensor:
        """``w * beta_pdf(x)`` (over the mode's density when ``normalize``)."""
        pdf = beta_pdf(self.progress(step), self.a, self.b)
        if self.normalize:
            pdf = pdf / beta_pdf(torch.tensor((self.a - 1) / (self.a + self.b - 2), dtype=torch.float64),
                                 self.a, self.b)
        pdf = pdf.to(device=step.x.device, dtype=step.x.dtype)
        return resolve(self.scale, step) * (pdf if pdf.ndim else float(pdf))

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return ("uncond",) if is_neutral(self.strength(step), 0.0) else ("cond", "uncond")

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "cond" not in preds:
            return passthrough(preds, step, "uncond")
        axes = step.require_axes("beta", self.axes)
        kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
        d = c - u
        scaled = d / norm(d, axes).clamp_min(1e-12).pow(self.gamma)
        return guided_in(u + self.strength(step) * scaled, step, kind, "beta")
