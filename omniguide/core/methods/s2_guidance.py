"""Stochastic self guidance (S²-Guidance; Chen et al. 2025, "S^2-Guidance: Stochastic Self Guidance for
Training-Free Enhancement of Diffusion Models", arXiv:2508.12880).

The guiding branch is a stochastic sub-network of the conditional model: at every step a fresh random
``drop_ratio`` of its blocks is dropped (each returns its input,
:class:`~omniguide.core.perturbations.DroppedBlocks`), and guidance moves away from its prediction:

    pred = u + w (c - u) + omega (c - p)          form "difference" (default)
    pred = u + w (c - u) - omega p                form "subtract"

The authors' code is not released (AMAP-ML/S2-Guidance holds a README only), so the paper's exact
equation could not be checked here. "subtract" is the literal rule of a third-party ComfyUI/Forge port
(``prediction - omega * D_sub``, omega 0.25, drop ratio 0.1, the defaults used here); "difference" is the
same subtraction of the sub-network written as a guidance term (it adds ``omega c``), which keeps the
prediction's scale and reduces to CFG at ``omega = 0``. ``seed`` seeds the block draws (re-seeded per run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..branch import Perturbation
from ..errors import check_choice
from ..needs import BLOCKS
from ..perturbations import DroppedBlocks
from ..registry import register_guider
from ..scale import Scale
from .pag import PerturbedGuidance, perturbed_guidance

S2_FORMS = ("difference", "subtract")


@register_guider("s2-guidance")
@dataclass
class S2Guidance(PerturbedGuidance):
    """CFG plus ``omega (c - p)`` against a random sub-network ``p`` of the conditional model (blocks
    dropped afresh at each step; arXiv:2508.12880); see the module docstring for the forms."""

    needs: ClassVar[Mapping[str, str]] = {BLOCKS: "drops random blocks"}

    perturbed_scale: Scale = 0.25
    drop_ratio: float = 0.1
    s2_form: str = "difference"
    seed: int = 0
    branch: str = "s2"

    def __post_init__(self):
        check_choice(self.s2_form, S2_FORMS, "s2_form")
        super().__post_init__()

    def make_perturbation(self) -> Perturbation:
        return DroppedBlocks(self.layers, ratio=float(self.drop_ratio), seed=int(self.seed))

    def reset(self) -> None:
        self.perturbation.reseed()

    def guide(self, c: Tensor, u: Tensor | None, p: Tensor | None, w, s) -> Tensor:
        return perturbed_guidance(c, u, p, w, s, self.form, subtract=self.s2_form == "subtract")
