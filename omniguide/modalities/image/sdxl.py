"""Stable Diffusion XL (``StableDiffusionXLPipeline``, img2img): two text encoders; the pooled
embedding and the size/crop ids reach the UNet through ``added_cond_kwargs``.

``encode_prompt`` returns ``(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)``;
with no negative prompt and ``force_zeros_for_empty_prompt`` the negative is zeros, as in the
pipeline. The conditions are ``encoder_hidden_states`` and ``added_cond_kwargs.text_embeds``; the
time ids are shared by both branches (the pipeline's ``negative_original_size`` and friends, which
only matter with its own CFG, are not used)."""

from __future__ import annotations

from ..base import Family, register_family
from .sd import check
from .sd3 import encode  # the same four-tuple contract as SD3's encode_prompt

SDXL = register_family(Family(
    name="sdxl",
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    denoiser="unet",
    sample="sample",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "added_cond_kwargs.text_embeds": "pooled_prompt_embeds"},
    negatives=("negative_prompt", "negative_prompt_2", "negative_prompt_embeds", "negative_pooled_prompt_embeds"),
    check=check,
    key_mask="encoder_attention_mask",   # UNet2DConditionModel: 0/1 per token, made a bias inside
))
