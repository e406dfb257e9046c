"""Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
Perturbed-Attention Guidance", arXiv:2403.17377), and the algebra shared by SEG and skip-layer.

A *perturbed* branch is the conditional branch run through a deliberately degraded model (here:
self-attention maps replaced by the identity, so attention returns ``V``). Guidance moves away
from it, optionally on top of CFG:

    pred = u + w (c - u) + s (c - p)      = c + (w - 1)(c - u) + s (c - p)
    pred = c + s (c - p)                   when w is neutral: only ``cond`` and ``perturbed`` run

``w`` is ``scale`` in the named CFG ``form`` (``"u+w(c-u)"``; ``"c+w(c-u)"`` gives
``c + w (c - u) + s (c - p)``), ``s`` is ``perturbed_scale`` (neutral 0). Conventions: diffusers'
PAG *pipelines*, ComfyUI's PAG node, SEG-SDXL and (as we read it) the paper's equation use
``c + s (c - p)`` for PAG alone; the official ADM code and diffusers' modular
``PerturbedAttentionGuidance`` (native form) use ``p + s (c - p)``, which is ours with ``s - 1``.
The perturbation applies whenever the perturbed branch runs, CFG or not (diffusers' guiders skip
it when CFG is off). Linear, so it runs in the model's parameterization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..branch import Branch, Perturbation
from ..errors import ConfigError
from ..guider import NOISE_LEVEL, STEP_INDEX, GuidanceStep, Guider, guided, passthrough
from ..needs import SELF_ATTENTION
from ..noise import COORDINATES
from ..perturbations import IdentityAttention, as_selectors
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import cfg, check_form, form_neutral
from .terms import Term


def perturbed_guidance(cond, uncond, perturbed, w, s, form: str = "u+w(c-u)", subtract: bool = False):
    """``u + w (c - u) + s (c - p)`` (``uncond=None``: ``c + s (c - p)``; ``perturbed=None``: CFG);
    ``subtract``: ``- s p`` in place of ``+ s (c - p)``."""
    out = cond if uncond is None else cfg(cond, uncond, w, form)
    if perturbed is None:
        return out
    return out - s * perturbed if subtract else out + s * (cond - perturbed)


@dataclass
class PerturbedGuidance(Guider):
    """CFG plus a term ``s (c - p)`` against a perturbed copy of the conditional branch.

    ``layers`` picks where the perturbation acts (see :mod:`omniguide.core.perturbations`; ``None``
    is the method's default). ``perturbed_interval`` limits the perturbed term to
    ``[low, high]`` of ``perturbed_coordinate`` (``step``, ``t`` or ``sigma``; SD3.5 uses steps
    0.01-0.2), while CFG stays on. ``branch`` names the perturbed branch, so several perturbed
    guiders can coexist; a user-supplied branch of that name replaces the default one."""

    scale: Scale = 7.5
    perturbed_scale: Scale = 3.0
    layers: Any = None
    form: str = "u+w(c-u)"
    branch: str = "perturbed"
    perturbed_interval: tuple[float, float] | None = None
    perturbed_coordinate: str = "step"

    def __post_init__(self):
        check_form(self.form)
        self.layers = as_selectors(self.layers)
        coordinate, interval = self.perturbed_coordinate, self.perturbed_interval
        if coordinate not in COORDINATES:
            raise ConfigError("perturbed_coordinate",
                              f"unknown coordinate '{coordinate}'; valid: {', '.join(COORDINATES)}")
        window = {} if interval is None else {coordinate: tuple(interval)}
        try:
            self.term = Term(scale=self.perturbed_scale, **window)
        except ConfigError as err:
            raise ConfigError("perturbed_interval", err.message) from None
        self.perturbation = self.make_perturbation()

    def make_perturbation(self) -> Perturbation:
        raise NotImplementedError

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if self.perturbed_interval is not None and self.perturbed_coordinate == "step":
            needs[STEP_INDEX] = "the perturbed term's window is over the 'step' coordinate"
        if self.perturbed_interval is not None and self.perturbed_coordinate == "sigma":
            needs[NOISE_LEVEL] = "the perturbed term's window is over the 'sigma' coordinate"
        return needs

    @property
    def neutral(self) -> float:
        return form_neutral(self.form)

    def branch_defaults(self) -> dict:
        return {self.branch: Branch(name=self.branch, base="cond", perturbation=self.perturbation)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        needed = ["cond"]
        if not is_neutral(resolve(self.scale, step), self.neutral):
            needed.append("uncond")
        if not is_neutral(self.term.value(step), 0.0):
            needed.append(self.branch)
        return tuple(needed)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds and self.branch not in preds:
            return passthrough(preds, step)
        kind = preds["cond"].kind
        c = preds["cond"].value
        u = preds["uncond"].to(kind) if "uncond" in preds else None
        p = preds[self.branch].to(kind) if self.branch in preds else None
        return guided(self.guide(c, u, p, resolve(self.scale, step), self.term.value(step)), step, kind)

    def guide(self, c: Tensor, u: Tensor | None, p: Tensor | None, w, s) -> Tensor:
        return perturbed_guidance(c, u, p, w, s, self.form)


@register_guider("pag")
@dataclass
class PAG(PerturbedGuidance):
    """Perturbed-attention guidance: ``u + w (c - u) + s (c - p)``, ``c + s (c - p)`` without CFG,
    ``p`` = the conditional branch with selected self-attention maps replaced by the identity.

    Ahn et al. 2024, arXiv:2403.17377. Default layers: the UNet mid block's self-attention (paper,
    ComfyUI, diffusers' PAG pipelines), or a transformer's middle block. ``s = 3`` as in diffusers'
    PAG pipelines."""

    needs: ClassVar[Mapping[str, str]] = {SELF_ATTENTION: "perturbs self-attention maps (identity attention)"}

    def make_perturbation(self) -> Perturbation:
        return IdentityAttention(self.layers)
