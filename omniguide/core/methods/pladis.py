"""PLADIS (Kim et al. 2025, "PLADIS: Pushing the Limits of Attention in Diffusion Models at Inference
Time by Leveraging Sparsity", arXiv:2503.07677; reference: pamparamm ``pladis_nodes.py``, scale 2,
entmax 1.5).

No extra branch: the selected cross-attention maps are extrapolated from softmax towards a sparse
attention (:class:`~omniguide.core.perturbations.SparseAttention`),
``A = lambda sparse(S) + (1 - lambda) softmax(S)``, in every pass -- one forward pass per step, so it
works with guidance-distilled models. With ``scale != 1`` CFG runs on top with both branches under
PLADIS attention (the reference patches the model for every pass), batched in one pass:
``u_p + w (c_p - u_p)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..branch import Branch
from ..guider import GuidanceStep, Guider
from ..needs import CROSS_ATTENTION
from ..perturbations import SparseAttention, as_selectors
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import cfg_against


@register_guider("pladis")
@dataclass
class PLADIS(Guider):
    """Sparse-attention extrapolation (``lambda sparse + (1 - lambda) softmax``) in one pass, optional CFG."""

    needs: ClassVar[Mapping[str, str]] = {CROSS_ATTENTION: "makes cross-attention maps sparse"}

    scale: Scale = 1.0
    pladis_scale: float = 2.0
    sparse: str = "entmax1.5"
    layers: Any = None
    branch: str = "pladis"

    def __post_init__(self):
        self.layers = as_selectors(self.layers)
        self.perturbation = SparseAttention(self.layers, scale=float(self.pladis_scale), sparse=self.sparse)

    def branch_defaults(self) -> dict:
        p = self.perturbation
        return {self.branch: Branch(self.branch, base="cond", perturbation=p),
                f"{self.branch}-uncond": Branch(f"{self.branch}-uncond", base="uncond", perturbation=p)}

    def names(self) -> tuple[str, str]:
        """The (conditional, unconditional) branches: PLADIS's own, or the plain ones at ``pladis_scale = 0``."""
        if float(self.pladis_scale) == 0.0:   # lambda = 0 is plain softmax attention
            return "cond", "uncond"
        return self.branch, f"{self.branch}-uncond"

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        cond, uncond = self.names()
        return (cond,) if is_neutral(resolve(self.scale, step), 1.0) else (cond, uncond)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        cond, uncond = self.names()
        return cfg_against(preds, step, uncond, self.scale, cond=cond)
