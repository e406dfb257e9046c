"""PixArt-Σ (``PixArtSigmaPipeline``): a DiT with a T5 encoder, an attention mask on the text, and
a learned variance: PixArt's transformers output ``2C`` channels, of which the pipeline keeps the
first ``C`` (the noise). The adapter guides those and hands back ``[guided, zeros]``, whose second
half the pipeline discards before the scheduler step.

``encode_prompt`` returns ``(embeds, mask, negative_embeds, negative_mask)``; the negative
defaults to ``""``. The conditions are ``encoder_hidden_states`` and ``encoder_attention_mask``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.model_call import default_output
from ..base import Family, register_family


def encode(original, arguments: dict, negatives: dict):
    embeds, mask, negative, negative_mask = original(
        **{**arguments, **negatives, "do_classifier_free_guidance": True})
    return ((embeds, mask, None, None), {"prompt_embeds": embeds, "prompt_attention_mask": mask},
            {"prompt_embeds": negative, "prompt_attention_mask": negative_mask})


def learned_variance(module: nn.Module) -> bool:
    """True when the transformer predicts a variance next to the noise (``out = 2 x in`` channels)."""
    return module.config.out_channels == 2 * module.config.in_channels


def output(module: nn.Module):
    """The predicted noise inside the output: its first half of channels under a learned variance."""
    if not learned_variance(module):
        return default_output
    return lambda out: default_output(out).chunk(2, dim=1)[0]


def pack(module: nn.Module, guided: Tensor) -> Tensor:
    return torch.cat([guided, torch.zeros_like(guided)], dim=1) if learned_variance(module) else guided


PIXART = register_family(Family(
    name="pixart",
    pipelines=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "prompt_attention_mask"},
    negatives=("negative_prompt", "negative_prompt_embeds", "negative_prompt_attention_mask"),
    output=output,
    pack=pack,
))
