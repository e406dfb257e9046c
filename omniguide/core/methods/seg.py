"""Smoothed energy guidance (Hong 2024, "Smoothed Energy Guidance: Guiding Diffusion Models with
Reduced Energy Curvature of Attention", arXiv:2408.00760; reference SusungHong/SEG-SDXL).

The perturbed branch is the conditional branch with its self-attention *queries* Gaussian-blurred
on their token grid, which smooths the attention energy landscape; ``blur_sigma = inf`` (the
paper's limit, and our default) replaces every query by the mean query:

    pred = c + (w - 1)(c - u) + s (c - p)   = u + w (c - u) + s (c - p)      (SEG-SDXL, CFG on)
    pred = c + s (c - p)                                                     (SEG-SDXL, CFG off)

Both are the official code's combine, so ``perturbed_scale`` is the official ``seg_scale``.
Differences from diffusers 0.42.1's ``SmoothedEnergyGuidance`` (which never applies its hook, has
the finite/infinite blur branches swapped and assumes a square token grid) are listed in
``docs/perturbed_guidance.md``; here the grid follows the sample's aspect ratio (or ``grid=``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..branch import Perturbation
from ..errors import ConfigError
from ..needs import SELF_ATTENTION
from ..perturbations import BlurredQueries
from ..registry import register_guider
from .pag import PerturbedGuidance


@register_guider("seg")
@dataclass
class SEG(PerturbedGuidance):
    """Smoothed energy guidance: ``u + w (c - u) + s (c - p)`` (``c + s (c - p)`` without CFG), ``p``
    = the conditional branch with self-attention queries blurred by a Gaussian of ``blur_sigma``
    tokens (``inf``: the mean query). Hong 2024, arXiv:2408.00760. Default layers: the UNet mid
    block (SEG-SDXL's default) or a transformer's middle block; ``s = 3`` as in SEG-SDXL."""

    needs: ClassVar[Mapping[str, str]] = {SELF_ATTENTION: "blurs self-attention queries"}

    blur_sigma: float = math.inf
    grid: tuple[int, ...] | None = None

    def __post_init__(self):
        if not float(self.blur_sigma) > 0:
            raise ConfigError("blur_sigma", f"must be > 0 (inf for the mean query), got {self.blur_sigma}")
        if self.grid is not None and (not self.grid or any(int(g) < 1 for g in self.grid)):
            raise ConfigError("grid", f"expected positive token-grid sizes such as [h, w], got {self.grid}")
        super().__post_init__()

    def make_perturbation(self) -> Perturbation:
        grid = None if self.grid is None else tuple(int(g) for g in self.grid)
        return BlurredQueries(self.layers, sigma=float(self.blur_sigma), grid=grid)
