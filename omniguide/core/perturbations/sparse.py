"""PLADIS's perturbation: selected cross-attention maps extrapolated towards a sparse attention map
(Kim et al. 2025, "PLADIS: Pushing the Limits of Attention in Diffusion Models at Inference Time by
Leveraging Sparsity", arXiv:2503.07677; reference: pamparamm ``pladis_utils.py``):

    S     = q k^T / sqrt(d) (+ mask)
    A     = lambda * sparse(S) + (1 - lambda) * softmax(S)          lambda = 2 (the reference's default)
    out   = A v

``sparse`` is alpha-entmax with alpha = 1.5 (the paper's default) or sparsemax (alpha = 2), both
computed exactly by sorting (Peters et al. 2019; Martins & Astudillo 2016), written here from their
definitions. One forward pass, no extra branch: PLADIS works with guidance-distilled models.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import GuidanceError, check_choice
from .base import LayerPerturbation, check_fired, patched_forwards
from .sdpa import InterceptSDPA, attention_logits, context_attention, repeat_heads, require_context
from .selection import select

SPARSE = ("entmax1.5", "sparsemax")


def _masked(z: Tensor, dim: int) -> Tensor:
    """Shift by the maximum; masked (-inf) entries become a large finite negative."""
    z = z - z.amax(dim=dim, keepdim=True).clamp_min(torch.finfo(z.dtype).min)
    return z.masked_fill(~torch.isfinite(z), -1e4)


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``z`` onto the simplex: ``(z - tau)_+`` with ``sum = 1``."""
    z = _masked(z, dim)
    srt = z.sort(dim=dim, descending=True).values
    k = torch.arange(1, z.shape[dim] + 1, dtype=z.dtype, device=z.device)
    k = k.reshape([-1 if i == dim % z.ndim else 1 for i in range(z.ndim)])
    cumsum = srt.cumsum(dim)
    support = (1 + k * srt > cumsum).sum(dim=dim, keepdim=True)
    tau = (cumsum.gather(dim, support - 1) - 1) / support.to(z.dtype)
    return (z - tau).clamp_min(0)


def entmax15(z: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax: ``[(z / 2 - tau)_+]^2`` with ``tau`` such that it sums to 1 (exact, by sorting)."""
    z = _masked(z, dim) / 2
    srt = z.sort(dim=dim, descending=True).values
    k = torch.arange(1, z.shape[dim] + 1, dtype=z.dtype, device=z.device)
    k = k.reshape([-1 if i == dim % z.ndim else 1 for i in range(z.ndim)])
    mean = srt.cumsum(dim) / k
    mean_sq = (srt * srt).cumsum(dim) / k
    delta = (1 - k * (mean_sq - mean * mean)) / k
    tau = mean - delta.clamp_min(0).sqrt()
    support = (tau <= srt).sum(dim=dim, keepdim=True)
    return (z - tau.gather(dim, support - 1)).clamp_min(0) ** 2


def default_pladis_layers(root: nn.Module) -> tuple[str, ...]:
    """The paper's default, and the reference node's: every cross-attention module (a UNet's down, mid
    and up blocks alike), every context attention of a transformer."""
    return tuple(context_attention(root))


@dataclass(frozen=True)
class SparseAttention(LayerPerturbation):
    """Attention maps ``lambda * sparse + (1 - lambda) * softmax`` in the selected context-attention modules."""

    scale: float = 2.0
    sparse: str = "entmax1.5"

    who = "pladis"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.sparse, SPARSE, "sparse")

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        candidates = context_attention(module)
        if not candidates:
            raise GuidanceError(f"pladis: {type(module).__name__} has no cross- or joint-attention module")
        return select(module, self.layers or default_pladis_layers(module), candidates, self.who,
                      "context-attention module")

    def attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask=None, scale=None) -> Tensor:
        logits = attention_logits(query, key, attn_mask, scale)
        sparse = entmax15(logits) if self.sparse == "entmax1.5" else sparsemax(logits)
        probs = float(self.scale) * sparse + (1 - float(self.scale)) * torch.softmax(logits, dim=-1)
        return (probs @ repeat_heads(value, query.shape[-3]).to(probs.dtype)).to(query.dtype)

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def handler(name):
            def sparse_attention(query, key, value, attn_mask=None, scale=None, **_):
                fired[name] += 1
                return self.attention(query, key, value, attn_mask, scale)
            return sparse_attention

        def wrap(name, attention, forward):
            signature = inspect.signature(forward)

            def pladis_forward(*args, **kwargs):
                require_context(signature.bind(*args, **kwargs).arguments.get("encoder_hidden_states"), name, self.who)
                with InterceptSDPA(handler(name)):
                    return forward(*args, **kwargs)
            return pladis_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, "scaled_dot_product_attention")
