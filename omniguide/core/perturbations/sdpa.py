"""Intercepting ``F.scaled_dot_product_attention`` inside selected attention modules, and the pieces
the attention-space methods share: the attention logits with a mask, and the context-attention
modules (cross-attention and joint text-image attention) of a diffusers denoiser.

diffusers' attention processors (``AttnProcessor2_0``, SD3's ``JointAttnProcessor2_0``, Flux's
processor through the native attention backend) all call ``F.scaled_dot_product_attention`` with
``[batch, heads, tokens, head_dim]`` tensors, so one :class:`InterceptSDPA` mode reaches all of them
without replacing processors (duck-typed; no diffusers import).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import GuidanceError
from .selection import is_attention

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    """The arguments of one ``scaled_dot_product_attention`` call by name (defaults filled in)."""
    return {"attn_mask": None, "scale": None, "is_causal": False, **dict(zip(SDPA_ARGS, args)), **kwargs}


class InterceptSDPA(TorchFunctionMode):
    """Answers ``F.scaled_dot_product_attention(...)`` with ``handler(**arguments)`` while active; other
    functions run unchanged. Inside the handler the mode is off, so it may call SDPA itself."""

    def __init__(self, handler: Callable[..., Tensor]):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return self.handler(**sdpa_arguments(args, kwargs))


def additive_mask(attn_mask: Tensor | None, like: Tensor) -> Tensor | None:
    """A boolean (True = attend) or additive mask as an additive float mask."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros((), dtype=like.dtype, device=like.device).masked_fill(~attn_mask, float("-inf"))
    return attn_mask.to(like.dtype)


def attention_logits(query: Tensor, key: Tensor, attn_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """``q k^T * scale + mask`` in float32 (float64 stays float64), ``[..., Lq, Lk]``; grouped-query keys repeated."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, k = query.to(dtype), key.to(dtype)
    if k.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-2, -1) * scale
    mask = additive_mask(attn_mask, logits)
    return logits if mask is None else logits + mask


def repeat_heads(value: Tensor, heads: int) -> Tensor:
    return value.repeat_interleave(heads // value.shape[-3], dim=-3) if value.shape[-3] != heads else value


def is_joint_attention(module: nn.Module) -> bool:
    """Joint text-image attention (SD3, Flux double blocks): the context has its own projections."""
    return getattr(module, "add_k_proj", None) is not None


def is_context_attention(name: str, module: nn.Module) -> bool:
    """An attention module that sees the condition: cross-attention or joint text-image attention."""
    if not is_attention(module):
        return False
    return bool(getattr(module, "is_cross_attention", False)) or is_joint_attention(module) or name.endswith("attn2")


def context_attention(root: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in root.named_modules() if is_context_attention(n, m)}


def require_context(context: Tensor | None, name: str, who: str) -> None:
    """A context-attention module called without a context attends to the sample only (AudioLDM's and
    MusicLDM's UNets, whose prompt enters as class labels): there is no prompt attention to act on."""
    if context is None:
        raise GuidanceError(f"{who}: {name} was called without a context (encoder_hidden_states=None), so it "
                            "attends to the sample only; this model takes its condition elsewhere (e.g. as class "
                            "labels) and has no prompt attention to act on")
