"""Normalized attention guidance (NAG; Chen et al. 2025, "Normalized Attention Guidance: Universal
Negative Guidance for Diffusion Models", arXiv:2505.21179; reference node: pamparamm
``nag_nodes.py`` -- scale 2, tau 2.5, alpha 0.5; official ChenDarYen/Normalized-Attention-Guidance).

Negative prompting where CFG fails (few-step, guidance-distilled models): inside every selected
context-attention module, the positive attention output is extrapolated away from the negative one,
L1-normalised and blended (:class:`~omniguide.core.perturbations.NormalizedAttention`):

    z~ = z+ + s (z+ - z-);    z^ = z~ min(||z~||_1 / ||z+||_1, tau) / (||z~||_1 / ||z+||_1)
    z  = alpha z^ + (1 - alpha) z+

The positive branch (``branch``) and the negative one (``<branch>-negative``: the ``negative`` branch's
inputs, by default ``uncond`` -- the negative prompt) run as rows of **one forward pass**: NFE 2, one
pass. The guided prediction is the positive rows'. ``scale != 1`` adds CFG on top, ``u + w (c_nag - u)``
with a plain unconditional pass (as the reference node composes with CFG). Forms elsewhere: the
official Flux code uses ``s + 1`` for ``s`` and an L2 norm (``norm="l2"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..branch import Branch
from ..guider import GuidanceStep, Guider
from ..needs import CROSS_ATTENTION
from ..perturbations import NormalizedAttention, as_selectors
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import cfg_against


@dataclass
class AttentionNegative(Guider):
    """What NAG and VSF share: a positive and a negative branch in one pass through a
    :class:`~omniguide.core.perturbations.NegativeContext` perturbation, optional CFG on top."""

    scale: Scale = 1.0
    layers: Any = None
    negative: str = "uncond"
    branch: str = "nag"

    def __post_init__(self):
        self.layers = as_selectors(self.layers)
        self.perturbation = self.make_perturbation()

    @property
    def negative_branch(self) -> str:
        return f"{self.branch}-negative"

    def make_perturbation(self):
        raise NotImplementedError

    def strength(self) -> float:
        raise NotImplementedError

    def branch_defaults(self) -> dict:
        p = self.perturbation
        return {self.branch: Branch(self.branch, base="cond", perturbation=p),
                self.negative_branch: Branch(self.negative_branch, base=self.negative, perturbation=p)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        needed = ("cond",) if self.strength() == 0 else (self.branch, self.negative_branch)
        if not is_neutral(resolve(self.scale, step), 1.0):
            needed = (*needed, "uncond")
        return needed

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return cfg_against(preds, step, "uncond", self.scale, cond=self.branch if self.branch in preds else "cond")


@register_guider("nag")
@dataclass
class NAG(AttentionNegative):
    """Normalized attention guidance in one forward pass (arXiv:2505.21179); see the module docstring."""

    needs: ClassVar[Mapping[str, str]] = {CROSS_ATTENTION: "normalises the attention outputs of the negative"}

    nag_scale: float = 2.0
    tau: float = 2.5
    alpha: float = 0.5
    norm: str = "l1"
    branch: str = "nag"

    def make_perturbation(self):
        return NormalizedAttention(self.layers, positive=self.branch, negative=self.negative_branch,
                                   scale=float(self.nag_scale), tau=float(self.tau), alpha=float(self.alpha),
                                   norm=self.norm)

    def strength(self) -> float:
        return float(self.nag_scale)
