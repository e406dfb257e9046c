"""Token perturbation guidance (TPG; Rajabi et al. 2025, "Token Perturbation Guidance for Diffusion
Models", arXiv:2506.10036; official TaatiTeam/Token-Perturbation-Guidance ``pipeline_sdxl_tpg.py``).

The perturbed branch is the conditional branch with the input tokens of chosen transformer blocks
shuffled (:class:`~omniguide.core.perturbations.ShuffledTokens`, a fresh permutation per call):

    pred = u + w (c - u) + s (c - p)       = c + (w - 1)(c - u) + s (c - p)   (the official combine)
    pred = c + s (c - p)                   without CFG (the official TPG-only path)

Condition-agnostic, so it also guides unconditional models. ``s = 3`` (the official default); default
layers: the official SDXL down-block list (``d6``-``d23``: the down-region transformer blocks after the
first quarter), a transformer's first half of main blocks otherwise. ``seed`` seeds the permutations
(re-seeded per run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..branch import Perturbation
from ..needs import BLOCKS
from ..perturbations import ShuffledTokens
from ..registry import register_guider
from ..scale import Scale
from .pag import PerturbedGuidance


@register_guider("tpg")
@dataclass
class TPG(PerturbedGuidance):
    """``u + w (c - u) + s (c - p)`` (``c + s (c - p)`` without CFG), ``p`` = the conditional branch with
    the input tokens of selected transformer blocks shuffled (arXiv:2506.10036)."""

    needs: ClassVar[Mapping[str, str]] = {BLOCKS: "shuffles the tokens entering blocks"}

    perturbed_scale: Scale = 3.0
    seed: int = 0

    def make_perturbation(self) -> Perturbation:
        return ShuffledTokens(self.layers, seed=int(self.seed))

    def reset(self) -> None:
        self.perturbation.reseed()
