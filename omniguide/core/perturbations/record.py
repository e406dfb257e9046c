"""Self-attention guidance's observer: records the self-attention map of one module during a forward
pass without changing it (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance", arXiv:2210.00939; diffusers' ``StableDiffusionSAGPipeline`` stores
``softmax(q k^T / sqrt d)`` of ``mid_block.attentions[0].transformer_blocks[0].attn1``).

:class:`AttentionRecorder` is a :class:`~omniguide.core.branch.RowsPerturbation`, so the branches it is
attached to share one forward pass and their rows stay known: ``maps[branch]`` is the head-averaged
attention map ``[rows, queries, keys]`` of that branch. The output is the module's own (the map is
computed alongside).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..branch import RowsPerturbation
from ..errors import GuidanceError
from .base import LayerPerturbation, check_fired, patched_forwards
from .sdpa import InterceptSDPA, attention_logits, is_joint_attention
from .selection import default_attention_layers, select_self_attention

SAG_UNET_LAYER = "mid_block.attentions.0.transformer_blocks.0.attn1"


@dataclass(frozen=True)
class AttentionRecorder(LayerPerturbation, RowsPerturbation):
    """Record the head-averaged self-attention map of one selected module, per branch of the pass.
    Default: diffusers SAG's UNet module (the mid block's first self-attention), else a transformer's
    middle block."""

    maps: dict = field(default_factory=dict, compare=False, repr=False)

    who = "sag"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        if self.layers is None:
            names = dict(module.named_modules())
            layers = (SAG_UNET_LAYER,) if SAG_UNET_LAYER in names else default_attention_layers(module)
        else:
            layers = self.layers
        found = select_self_attention(module, layers, self.who)
        joint = [n for n, m in found.items() if is_joint_attention(m)]
        if joint:
            raise GuidanceError(f"sag: {joint[0]} is a joint text-image attention; SAG needs a self-attention map "
                                "over image tokens only (UNets, PixArt, DiT)")
        if len(found) != 1:
            raise GuidanceError(f"sag: select exactly one self-attention module, got {len(found)} "
                                f"({', '.join(list(found)[:3])}...)")
        return found

    def __call__(self, module: nn.Module, sample: Tensor):
        return self.for_rows(module, sample, {})

    @contextlib.contextmanager
    def for_rows(self, module: nn.Module, sample: Tensor, rows: Mapping[str, slice]) -> Iterator:
        targets = self.targets(module)
        name = next(iter(targets))
        fired = dict.fromkeys(targets, 0)
        self.maps.clear()

        def handler(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
            if query.shape[-2] != key.shape[-2]:
                raise GuidanceError(f"sag: {name} is not a self-attention over the image tokens (queries "
                                    f"{query.shape[-2]}, keys {key.shape[-2]})")
            fired[name] += 1
            probs = torch.softmax(attention_logits(query, key, attn_mask, scale), dim=-1).mean(dim=-3)
            for branch, where in rows.items():
                self.maps[branch] = probs[where]
            self.maps[None] = probs
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale)

        def wrap(_, attention, forward):
            def recording_forward(*args, **kwargs):
                with InterceptSDPA(handler):
                    return forward(*args, **kwargs)
            return recording_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, "scaled_dot_product_attention")
