"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): a flow-matching MMDiT called with keywords
(``hidden_states=``, ``timestep=`` in [0, 1000]), text from two CLIP encoders and T5, and a pooled
projection. The conditions are ``encoder_hidden_states`` and ``pooled_projections``."""

from __future__ import annotations

from ..base import Family, register_family


def encode(original, arguments: dict, negatives: dict):
    embeds, negative, pooled, negative_pooled = original(
        **{**arguments, **negatives, "do_classifier_free_guidance": True})
    return ((embeds, None, pooled, None), {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled},
            {"prompt_embeds": negative, "pooled_prompt_embeds": negative_pooled})


SD3 = register_family(Family(
    name="sd3",
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "pooled_projections": "pooled_prompt_embeds"},
    negatives=("negative_prompt", "negative_prompt_2", "negative_prompt_3", "negative_prompt_embeds",
               "negative_pooled_prompt_embeds"),
))
