"""FreSca (Huang et al. 2025, "FreSca: Scaling in Frequency Space Enhances Diffusion Models",
arXiv:2504.02154; reference: ComfyUI ``nodes_fresca.py``, from WikiChao/FreSca).

The guidance direction is rescaled in Fourier space -- ``scale_low`` inside a centred box of
half-width ``cutoff`` frequency indices, ``scale_high`` outside -- and then CFG applies:

    D    = fftshift(FFT(c - u))                   over the declared frequency axes
    M    = scale_low on |k_j - n_j // 2| box [n_j//2 - cutoff, n_j//2 + cutoff), scale_high elsewhere
    pred = u + w IFFT(ifftshift(M D))             form "u+w(c-u)" (c + w ...: "c+w(c-u)")

The box is the reference's slice ``[n//2 - cutoff : n//2 + cutoff]`` on each frequency axis (one
index more on the negative side than on the positive). Defaults are ComfyUI's: ``scale_low = 1``,
``scale_high = 1.25``, ``cutoff = 20``. Linear in ``(c, u)``, so it runs in the model's own
parameterization (ComfyUI filters the denoised difference; at one noise level per sample they agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..axes import Axes
from ..errors import ConfigError
from ..guider import GuidanceStep, guided, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import CFGFamily, cfg


def frequency_scale(x: Tensor, dims: tuple[int, ...], low: float, high: float, cutoff: int) -> Tensor:
    """``x`` with its centred low-frequency box (half-width ``cutoff``) scaled by ``low`` and the rest by ``high``."""
    spec = torch.fft.fftshift(torch.fft.fftn(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x,
                                             dim=dims), dim=dims)
    inside = torch.ones((), dtype=torch.bool, device=x.device)
    for d in dims:
        n = x.shape[d]
        idx = torch.arange(n, device=x.device)
        box = (idx >= n // 2 - cutoff) & (idx < n // 2 + cutoff)
        inside = inside & box.reshape([n if i == d % x.ndim else 1 for i in range(x.ndim)])
    real = spec.real.dtype
    low_t, high_t = (torch.tensor(v, dtype=real, device=x.device) for v in (low, high))
    mask = torch.where(inside, low_t, high_t)
    out = torch.fft.ifftn(torch.fft.ifftshift(spec * mask, dim=dims), dim=dims).real
    return out.to(x.dtype)


@register_guider("fresca")
@dataclass
class FreSca(CFGFamily):
    """CFG on a frequency-rescaled direction: low frequencies x ``scale_low``, high x ``scale_high``
    (arXiv:2504.02154); see the module docstring."""

    scale: Scale = 7.5
    scale_low: float = 1.0
    scale_high: float = 1.25
    cutoff: int = 20
    form: str = "u+w(c-u)"
    axes: Axes | str | tuple | None = None

    def __post_init__(self):
        super().__post_init__()
        if int(self.cutoff) < 0:
            raise ConfigError("cutoff", f"a number of frequency indices >= 0, got {self.cutoff}")

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        flat = float(self.scale_low) == 1.0 and float(self.scale_high) == 1.0
        if flat and is_neutral(resolve(self.scale, step), self.neutral):
            return ("cond",)
        return ("cond", "uncond")

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            return passthrough(preds, step)
        dims = step.require_axes("fresca", self.axes).frequency
        kind = preds["cond"].kind
        c, u = preds["cond"].value, preds["uncond"].to(kind)
        d = frequency_scale(c - u, dims, float(self.scale_low), float(self.scale_high), int(self.cutoff))
        return guided(cfg(u + d, u, resolve(self.scale, step), self.form), step, kind)
