"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself",
arXiv:2406.02507; reference NVlabs/edm2 ``generate_images.py``: ``ref_Dx.lerp(Dx, guidance)``).

Guide the conditional model away from a weaker model (smaller, or trained less) given the *same*
condition:

    pred = D_weak + w (D - D_weak)              (the paper writes it for the denoiser D, i.e. x0)

It is linear, so it runs in the model's own parameterization with the same result. The weak model
is the branch ``weak`` (name configurable): ``Branch("weak", base="cond", model=weak_model)``, made
by :meth:`AutoGuidance.branch_defaults` when ``weak_model`` is given in code; in a config, the
branch table supplies it. diffusers' ``AutoGuidance`` differs: it perturbs the model with layer
skips / dropout on the *unconditional* inputs, which is not the paper's method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..branch import Branch
from ..guider import GuidanceStep, Guider
from ..needs import SECOND_MODEL
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale
from .common import cfg_against, cfg_branches


@register_guider("autoguidance")
@dataclass
class AutoGuidance(Guider):
    """``D_weak + w (D - D_weak)`` with ``D_weak`` a weaker model on the conditional inputs
    (Karras et al. 2024, arXiv:2406.02507). EDM2's presets use ``w`` around 2 to 2.5."""

    needs: ClassVar[Mapping[str, str]] = {SECOND_MODEL: "guides away from a weaker model"}

    scale: Scale = 2.0
    weak_model: Callable | None = field(default=None, repr=False, metadata={"need": SECOND_MODEL, "config": False})
    branch: str = "weak"

    def branch_defaults(self) -> dict:
        if self.weak_model is None:
            return {}
        return {self.branch: Branch(name=self.branch, base="cond", model=self.weak_model)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step, self.branch)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return cfg_against(preds, step, self.branch, self.scale)
