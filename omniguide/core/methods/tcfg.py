"""Tangential damping CFG (Kwon et al. 2025, "TCFG: Tangential Damping Classifier-free Guidance",
arXiv:2503.18137).

Per sample, stack the conditional and unconditional predictions (flattened over the declared axes)
as the rows of ``A = [c; u]``; ``v1`` is the top right-singular vector of ``A``. The unconditional
prediction keeps only its component along ``v1`` (its "tangential" part is damped), then CFG runs:

    u'   = <u, v1> v1
    pred = u' + w (c - u')              form "u+w(c-u)" (diffusers, ComfyUI)

``v1`` comes from the 2x2 Gram matrix ``G = A A^T`` (its top eigenvector ``a`` gives
``v1 = a^T A / sqrt(lambda_max)``), in float64: the same vector as the SVD at a fraction of the cost.
The projection is scale-invariant per sample, so ComfyUI's ``x - x0`` (``sigma eps``) equals eps space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..axes import Axes, dot
from ..guider import GuidanceStep
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, cfg


def tangential_damp(cond: Tensor, uncond: Tensor, axes: Axes) -> Tensor:
    """``u`` projected on the top right-singular vector of ``[c; u]`` (per sample over ``axes.reduce``)."""
    c, u = cond.double(), uncond.double()
    cc, cu, uu = dot(c, c, axes), dot(c, u, axes), dot(u, u, axes)
    gram = torch.stack([torch.stack([cc, cu], -1), torch.stack([cu, uu], -1)], -2)  # [..., 2, 2]
    lam, vecs = torch.linalg.eigh(gram)                     # ascending: the last pair is the top one
    a0, a1 = vecs[..., 0, -1], vecs[..., 1, -1]
    coeff = (a0 * cu + a1 * uu) / lam[..., -1].clamp_min(1e-300)   # <u, v1> / ||a^T A||
    return (coeff * (a0 * c + a1 * u)).to(uncond.dtype)


@register_guider("tcfg")
@dataclass
class TCFG(CFGFamily):
    """CFG with the unconditional prediction projected on the top singular direction of ``[c; u]``
    (Kwon et al. 2025, arXiv:2503.18137): ``u' + w (c - u')``.

    ``space``: where the projection runs; ``None`` (default) is the model's own output, as in
    diffusers; ``"eps"`` is the paper's noise/score view (the same for eps models; avoid it for flow
    models, where eps carries no information at ``t = 1`` and converting back divides by ``alpha = 0``)."""

    scale: Scale = 7.5
    form: str = "u+w(c-u)"
    space: str | None = None
    axes: Axes | str | tuple | None = None

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        axes = step.require_axes("tcfg", self.axes)
        return cfg(c, tangential_damp(c, u, axes), resolve(self.scale, step), self.form)
