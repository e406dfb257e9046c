"""Attention-space negative guidance in one forward pass: normalized attention guidance (NAG) and
value sign flip (VSF), for few-step and guidance-distilled models where CFG's two predictions diverge.

Both run the positive branch and the negative branch as rows of one batched forward pass
(:class:`~omniguide.core.branch.RowsPerturbation`: the executor says which rows are which). In every
selected context-attention module (cross-attention, or joint text-image attention in SD3 / Flux
double blocks):

* the negative rows' image tokens are replaced by the positive rows' (the attention input), so the
  negative attention reads the positive image stream with the negative context -- the reference
  implementations' shared image stream (pamparamm's ``attn2`` replacement uses the positive queries;
  the official Flux NAG tiles the image tokens); the negative context stream itself evolves as the
  negative branch's own (joint models);
* :class:`NormalizedAttention` (NAG, Chen et al. 2025, arXiv:2505.21179, Algorithm 1) then replaces the
  positive rows' attention output ``z+`` (before the output projection) by

      z~ = z+ + s (z+ - z-);   r = ||z~||_1 / ||z+||_1 per token;   z^ = z~ min(r, tau) / r
      z  = alpha z^ + (1 - alpha) z+

  (``norm="l2"`` with ``s - 1`` for ``s`` is the official Flux code's variant);
* :class:`FlippedValues` (VSF, "Value Sign Flip", weathon/VSF ``processor.py``) lets the positive rows'
  image queries also attend to the negative context's keys with values multiplied by ``-scale`` and
  logits lowered by ``offset``; positive text queries do not see them (the reference's mask).

The positive rows' output is the guided prediction; the negative rows' output is not used.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..branch import RowsPerturbation
from ..errors import GuidanceError, check_choice
from .base import LayerPerturbation, check_fired, patched_forwards
from .sdpa import (
    InterceptSDPA,
    additive_mask,
    context_attention,
    is_joint_attention,
    require_context,
)
from .selection import select

NORMS = ("l1", "l2")


@dataclass(frozen=True)
class NegativeContext(LayerPerturbation, RowsPerturbation):
    """The common part: rows, the shared image stream, and the selected context-attention modules.
    ``positive`` / ``negative`` name the two branches whose rows share the forward pass."""

    positive: str = "cond"
    negative: str = "uncond"

    who = "negative attention"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        candidates = context_attention(module)
        if not candidates:
            raise GuidanceError(f"{self.who}: {type(module).__name__} has no cross- or joint-attention module")
        return select(module, self.layers, candidates, self.who, "context-attention module") if self.layers \
            else candidates

    def __call__(self, module: nn.Module, sample: Tensor):
        raise GuidanceError(f"{self.who}: the '{self.positive}' and '{self.negative}' branches must share one batched "
                            "forward pass (batch=False runs them apart)")

    def split(self, rows: Mapping[str, slice]) -> tuple[slice, slice]:
        missing = [n for n in (self.positive, self.negative) if n not in rows]
        if missing:
            raise GuidanceError(f"{self.who}: branch '{missing[0]}' is not in this forward pass (rows: "
                                f"{', '.join(rows)}); '{self.positive}' and '{self.negative}' must share one batched "
                                "forward pass (batch=False runs them apart)")
        return rows[self.positive], rows[self.negative]

    @contextlib.contextmanager
    def for_rows(self, module: nn.Module, sample: Tensor, rows: Mapping[str, slice]) -> Iterator:
        pos, neg = self.split(rows)
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def wrap(name, attention, forward):
            signature = inspect.signature(forward)

            def negative_forward(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)
                hidden = bound.arguments["hidden_states"]
                if neg != pos:   # the negative attention reads the positive image stream
                    hidden = hidden.clone()
                    hidden[neg] = hidden[pos]
                    bound.arguments["hidden_states"] = hidden
                context = bound.arguments.get("encoder_hidden_states")
                require_context(context, name, self.who)
                fired[name] += 1
                with self.inside(attention, pos, neg, context, hidden):
                    return forward(*bound.args, **bound.kwargs)
            return negative_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, "a call of the attention")

    def inside(self, attention: nn.Module, pos: slice, neg: slice, context: Tensor | None, hidden: Tensor):
        raise NotImplementedError


def nag_combine(z_pos: Tensor, z_neg: Tensor, scale: float, tau: float, alpha: float, norm: str = "l1") -> Tensor:
    """NAG on attention outputs ``[..., tokens, features]`` (see the module docstring)."""
    p = 1 if norm == "l1" else 2
    tilde = z_pos + scale * (z_pos - z_neg)
    ratio = torch.linalg.vector_norm(tilde, ord=p, dim=-1, keepdim=True) / \
        torch.linalg.vector_norm(z_pos, ord=p, dim=-1, keepdim=True).clamp_min(1e-12)
    hat = tilde * (torch.minimum(ratio, torch.full_like(ratio, tau)) / ratio.clamp_min(1e-12))
    return alpha * hat + (1 - alpha) * z_pos


@dataclass(frozen=True)
class NormalizedAttention(NegativeContext):
    """NAG (arXiv:2505.21179): the positive rows' attention output is extrapolated away from the negative
    rows', L1-normalised per token to at most ``tau`` times its length, and blended with ``alpha``."""

    scale: float = 2.0
    tau: float = 2.5
    alpha: float = 0.5
    norm: str = "l1"

    who = "nag"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.norm, NORMS, "norm")

    @contextlib.contextmanager
    def inside(self, attention, pos, neg, context, hidden):
        out = getattr(attention, "to_out", None)
        if out is None or not len(out):
            raise GuidanceError("nag: the attention module has no output projection 'to_out' to act before")

        def hook(projection, args):
            z = args[0]
            if neg == pos:
                return None
            z = z.clone()
            z[pos] = nag_combine(z[pos], z[neg], float(self.scale), float(self.tau), float(self.alpha), self.norm)
            return (z, *args[1:])

        handle = out[0].register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@dataclass(frozen=True)
class FlippedValues(NegativeContext):
    """VSF: the positive rows' image queries also attend to the negative context with values times
    ``-scale`` and logits lowered by ``offset`` (see the module docstring)."""

    scale: float = 3.5
    offset: float = 0.1

    who = "vsf"
    # every reference encodes the negative prompt without padding: its padding keys are masked out of the
    # flipped block through the per-row key mask (the pipeline adapter passes the tokenizer's mask)
    masks_negative_padding = True

    @contextlib.contextmanager
    def inside(self, attention, pos, neg, context, hidden):
        joint = is_joint_attention(attention)
        if joint and context is None:
            raise GuidanceError("vsf: a joint attention module was called without its context stream")
        text = context.shape[1] if joint else None
        image = hidden.shape[1]

        def handler(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                                 is_causal=is_causal, scale=scale)
            out = out.clone()
            out[pos] = self.flipped(query, key, value, attn_mask, scale, pos, neg, text, image)
            return out

        with InterceptSDPA(handler):
            yield

    def flipped(self, query, key, value, attn_mask, scale, pos, neg, text: int | None, image: int) -> Tensor:
        q, k, v = query[pos], key[pos], value[pos]
        if text is None:   # cross-attention: the whole key sequence is the context
            k_neg, v_neg = key[neg], value[neg]
            base = additive_mask(attn_mask[pos] if _per_row(attn_mask, query) else attn_mask, q)
            extra = additive_mask(attn_mask[neg] if _per_row(attn_mask, query) else attn_mask, q)
            extra = -self.offset if extra is None else extra - self.offset
            mask = _concat_masks(base, extra, q, k.shape[-2], k_neg.shape[-2])
        else:
            if attn_mask is not None:
                raise GuidanceError("vsf: joint attention with an attention mask is not supported")
            first = _text_first(query, pos, neg, text, image)
            where = slice(0, text) if first else slice(query.shape[-2] - text, query.shape[-2])
            k_neg, v_neg = key[neg][..., where, :], value[neg][..., where, :]
            lq = q.shape[-2]
            mask = torch.zeros(lq, k.shape[-2] + text, dtype=q.dtype, device=q.device)
            mask[:, k.shape[-2]:] = -self.offset
            mask[where, k.shape[-2]:] = float("-inf")   # positive text queries do not see the negative
        k2 = torch.cat([k, k_neg], dim=-2)
        v2 = torch.cat([v, -float(self.scale) * v_neg], dim=-2)
        return F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask, scale=scale)


def _per_row(mask: Tensor | None, query: Tensor) -> bool:
    return mask is not None and mask.ndim >= 1 and mask.shape[0] == query.shape[0] and query.shape[0] > 1


def _concat_masks(base, extra, q: Tensor, lk: int, lneg: int) -> Tensor:
    """``[rows?, heads?, Lq, Lk + Lneg]`` additive mask from the two parts (scalars broadcast)."""
    rows, rows_neg = (*q.shape[:-1], lk), (*q.shape[:-1], lneg)
    a = torch.zeros(rows, dtype=q.dtype, device=q.device) if base is None else base.expand(rows)
    b = extra.expand(rows_neg) if isinstance(extra, Tensor) else \
        torch.full(rows_neg, float(extra), dtype=q.dtype, device=q.device)
    return torch.cat([a, b], dim=-1)


def _text_first(query: Tensor, pos: slice, neg: slice, text: int, image: int) -> bool:
    """Whether the context tokens come first in the joint sequence (Flux) or last (SD3): the image
    queries of both rows are equal (shared stream), so the image block is where they agree."""
    def same(where: slice) -> bool:
        return torch.allclose(query[pos][..., where, :], query[neg][..., where, :], rtol=0, atol=1e-6)
    image_last, image_first = same(slice(text, text + image)), same(slice(0, image))
    if image_first and not image_last:
        return False
    return True
