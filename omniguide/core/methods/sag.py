"""Self-attention guidance (SAG; Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance", arXiv:2210.00939; reference: diffusers' ``StableDiffusionSAGPipeline``).

Blur what the model attends to, and guide away from the prediction on the blurred sample. At each step:

1. the conditional and unconditional branches run in one pass while their self-attention map in one
   module (the UNet mid block's first self-attention, as the reference) is recorded;
2. from the source branch (``uncond`` with CFG, ``cond`` without -- the paper's Eq. 25):
   ``x0 = (x - sigma eps) / alpha``; mask ``M`` = the key tokens whose head-averaged attention summed over
   queries exceeds ``threshold`` (1), laid on the token grid and resized (nearest) to the sample;
   ``x0' = blur(x0) M + x0 (1 - M)`` (Gaussian, ``kernel_size`` 9, ``blur_sigma`` 1, reflect border);
   ``x' = alpha x0' + sigma eps`` (re-noised with the source's own noise);
3. the source branch runs on ``x'`` (a follow-up branch in the same step), and

       pred = u + w (c - u) + s (u - u(x'))          (``c + s (c - c(x'))`` without CFG)

in the model's own output space, as the reference. ``s = 0.75`` (diffusers' default). NFE 3 per step
(2 without CFG), in two forward passes. Image samples (``[B, C, H, W]``) and self-attention over image
tokens only: joint text-image attention (SD3, Flux) has no image-only map to threshold and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..branch import Branch
from ..errors import ConfigError, GuidanceError
from ..guider import FOLLOW_UP, NOISE_LEVEL, GuidanceStep, Guider, guided
from ..needs import SELF_ATTENTION
from ..perturbations import AttentionRecorder, as_selectors, token_grid
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import cfg, cfg_against


def gaussian_blur_2d(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """The reference's 2-D blur of ``[B, C, H, W]``: a separable normalised Gaussian, reflect padding."""
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(x.shape[1], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), kernel2d, groups=x.shape[1])


def attention_mask(probs: Tensor, threshold: float, sample_shape: tuple[int, ...]) -> Tensor:
    """``[B, 1, H, W]`` mask of the key tokens attended more than ``threshold`` in total (``probs``:
    head-averaged ``[B, queries, keys]``), laid on the token grid and resized to the sample (nearest)."""
    b, _, keys = probs.shape
    frames, grid = token_grid(keys, b, sample_shape)
    if frames != 1 or len(grid) != 2:
        raise GuidanceError(f"sag: needs image samples [B, C, H, W] with a 2-D token grid, got {tuple(sample_shape)}")
    mask = (probs.sum(dim=1) > threshold).to(probs.dtype).reshape(b, 1, *grid)
    return F.interpolate(mask, size=sample_shape[-2:])


@register_guider("sag")
@dataclass
class SAG(Guider):
    """Self-attention guidance: ``u + w (c - u) + s (u - u(x'))`` with ``x'`` the sample whose attended
    regions are blurred (arXiv:2210.00939); see the module docstring."""

    needs: ClassVar[Mapping[str, str]] = {
        SELF_ATTENTION: "blurs where self-attention looks",
        FOLLOW_UP: "sag evaluates the blurred sample after the first round",
        NOISE_LEVEL: "sag re-noises the blurred x0 to the step's level",
    }

    scale: Scale = 7.5
    sag_scale: Scale = 0.75
    blur_sigma: float = 1.0
    kernel_size: int = 9
    threshold: float = 1.0
    layers: Any = None
    branch: str = "sag"

    def __post_init__(self):
        if int(self.kernel_size) < 1 or int(self.kernel_size) % 2 == 0:
            raise ConfigError("kernel_size", f"an odd number of taps, got {self.kernel_size}")
        if not float(self.blur_sigma) > 0:
            raise ConfigError("blur_sigma", f"must be > 0, got {self.blur_sigma}")
        self.layers = as_selectors(self.layers)
        self.recorder = AttentionRecorder(self.layers)

    def cfg_on(self, step: GuidanceStep) -> bool:
        return not is_neutral(resolve(self.scale, step), 1.0)

    def source(self, step: GuidanceStep) -> str:
        return "uncond" if self.cfg_on(step) else "cond"

    def branch_defaults(self) -> dict:
        r = self.recorder
        return {f"{self.branch}-cond": Branch(f"{self.branch}-cond", base="cond", perturbation=r),
                f"{self.branch}-uncond": Branch(f"{self.branch}-uncond", base="uncond", perturbation=r)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if is_neutral(resolve(self.sag_scale, step), 0.0):
            return ("cond", "uncond") if self.cfg_on(step) else ("cond",)
        names = (f"{self.branch}-cond",)
        return (*names, f"{self.branch}-uncond") if self.cfg_on(step) else names

    def follow_up(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> dict:
        source = f"{self.branch}-{self.source(step)}"
        if source not in preds:
            return {}
        if step.x.ndim != 4:
            raise GuidanceError(f"sag: needs image samples [B, C, H, W], got {tuple(step.x.shape)}")
        pad = int(self.kernel_size) // 2
        if min(step.x.shape[-2:]) <= pad:
            raise GuidanceError(f"sag: a {step.x.shape[-2]} x {step.x.shape[-1]} sample is too small for the "
                                f"{self.kernel_size}-tap reflect-padded blur (each side must exceed {pad}); "
                                "give a smaller kernel_size")
        pred = preds[source]
        probs = self.recorder.maps.get(source)
        if probs is None:
            raise GuidanceError(f"sag: no attention map was recorded for branch '{source}' at {step.where}")
        x0, eps = pred.x0, pred.eps
        mask = attention_mask(probs.to(x0.dtype), float(self.threshold), tuple(step.x.shape))
        blurred = gaussian_blur_2d(x0, int(self.kernel_size), float(self.blur_sigma))
        degraded = blurred * mask + x0 * (1 - mask)
        sample = (step.noise.alpha * degraded + step.noise.sigma * eps).to(step.x.dtype)
        name = f"{self.branch}-degraded"
        return {name: Branch(name, base=self.source(step), inputs={"sample": sample})}

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        degraded = f"{self.branch}-degraded"
        if degraded not in preds:
            return cfg_against(preds, step, "uncond", self.scale)
        source = preds[f"{self.branch}-{self.source(step)}"]
        kind = source.kind
        c = preds[f"{self.branch}-cond"].value
        out = c if not self.cfg_on(step) else cfg(c, preds[f"{self.branch}-uncond"].value, resolve(self.scale, step))
        return guided(out + resolve(self.sag_scale, step) * (source.value - preds[degraded].value), step, kind)



