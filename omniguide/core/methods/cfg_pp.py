"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
Models", arXiv:2406.08070).

The guided noise ``eps_l = u + l (c - u)`` with ``l`` in [0, 1] gives the denoised estimate, but
the sampler re-noises with the *unconditional* noise:

    x0     = (x_t - sigma_t eps_l) / alpha_t
    x_prev = alpha_prev x0 + sigma_prev u            (DDIM; Euler and DPM-Solver++ alike)

So the result is an inconsistent pair (guided ``x0``, unconditional ``eps``); the sampler steps
from the pair. ``l = 0`` is unconditional sampling and needs only the unconditional branch. Guidance
off (outside an :class:`~omniguide.core.methods.interval.Interval`) is the conditional prediction, as
for every guider (the guidance-interval paper's fallback), not the ``l = 0`` unconditional one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..guider import NOISE_LEVEL, REANCHOR, GuidanceStep, Guider, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve


@register_guider("cfg++")
@dataclass
class CFGPlusPlus(Guider):
    """CFG++: denoise with ``u + l (c - u)``, re-noise with ``u`` (Chung et al. 2024). ``scale`` is l."""

    needs: ClassVar[Mapping[str, str]] = {
        REANCHOR: "CFG++ denoises with the guided x0 but re-noises with the unconditional eps",
        NOISE_LEVEL: "CFG++ re-noises with the unconditional eps at the step's level",
    }

    scale: Scale = 0.6

    def __post_init__(self):
        if isinstance(self.scale, (int, float)) and not 0.0 <= self.scale <= 1.0:
            raise ConfigError("scale", f"CFG++ uses a scale (lambda) in [0, 1], got {self.scale}")

    @property
    def neutral(self) -> float:
        return 0.0  # lambda = 0: unconditional sampling

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if is_neutral(resolve(self.scale, step), 0.0):
            return ("uncond",)
        return ("cond", "uncond")

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "cond" not in preds:
            return passthrough(preds, step, "uncond")
        lam = resolve(self.scale, step)
        cond, uncond = preds["cond"], preds["uncond"]
        # x0 is affine in eps at fixed x_t, so x0(u + l(c - u)) = x0_u + l (x0_c - x0_u); this form
        # also holds at alpha = 0 (flow models at t = 1), where dividing by alpha would not.
        x0 = uncond.x0 + lam * (cond.x0 - uncond.x0)
        return Guided(x0, uncond.eps, step.x, step.noise, consistent=False)
