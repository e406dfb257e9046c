"""Guidance from another model's unconditional prior (Phunyaphibarn et al. 2025, "Unconditional Priors
Matter! Improving Conditional Generation of Fine-Tuned Diffusion Models", arXiv:2503.20240).

Fine-tuned conditional models learn their unconditional branch with little capacity; the base model
they were fine-tuned from (or any other diffusion model on the same latent space) has a better
unconditional prior. CFG takes the unconditional prediction from it:

    pred = u_base + w (c - u_base)                u_base = the base model on the unconditional inputs

The prior branch (``branch``, default ``prior``) is ``Branch("prior", base="uncond", model=base_model)``,
made by :meth:`PriorGuidance.branch_defaults` when ``base_model`` is given in code; through the pipeline
adapter, ``guide(pipe, PriorGuidance(base_model=base_unet))`` calls the base model the family's way, and a
branch table (``branches={"prior": Branch(..., inputs={...})}``) gives it inputs of its own (another
text encoder, no image condition). A base model that predicts another parameterization is converted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..branch import Branch
from ..guider import GuidanceStep
from ..needs import SECOND_MODEL
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale
from .common import CFGFamily, cfg_against, cfg_branches


@register_guider("prior-guidance")
@dataclass
class PriorGuidance(CFGFamily):
    """``u_base + w (c - u_base)`` with ``u_base`` another (base) model's unconditional prediction
    (arXiv:2503.20240); see the module docstring."""

    needs: ClassVar[Mapping[str, str]] = {SECOND_MODEL: "its unconditional branch runs on a base model"}

    scale: Scale = 7.5
    base_model: Callable | None = field(default=None, repr=False, metadata={"need": SECOND_MODEL, "config": False})
    branch: str = "prior"
    form: str = "u+w(c-u)"

    def branch_defaults(self) -> dict:
        if self.base_model is None:
            return {}
        return {self.branch: Branch(self.branch, base="uncond", model=self.base_model)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step, self.branch)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return cfg_against(preds, step, self.branch, self.scale, self.form)
