"""Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``, img2img): a UNet predicting eps or v.

``encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
...)`` returns ``(prompt_embeds, negative_prompt_embeds)``; the negative defaults to ``""``. The
condition is ``encoder_hidden_states``."""

from __future__ import annotations

from ...core.errors import GuidanceError
from ..base import Family, register_family


def encode(original, arguments: dict, negatives: dict):
    """Encode with CFG on, so the negative is exactly the pipeline's; hand back the positive alone."""
    positive, negative = original(**{**arguments, **negatives, "do_classifier_free_guidance": True})
    return (positive, None), {"prompt_embeds": positive}, {"prompt_embeds": negative}


def check(pipe) -> None:
    if pipe.unet.config.get("time_cond_proj_dim") is not None:
        raise GuidanceError("guide(): this UNet embeds the guidance scale (time_cond_proj_dim, LCM-style); its "
                            "guidance_scale is not classifier-free guidance and guide() does not drive it")


SD = register_family(Family(
    name="sd",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    denoiser="unet",
    sample="sample",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds"},
    check=check,
    key_mask="encoder_attention_mask",   # UNet2DConditionModel: 0/1 per token, made a bias inside
))
