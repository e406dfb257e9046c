"""Stable Video Diffusion (``StableVideoDiffusionPipeline``): image-to-video with a spatio-temporal
UNet on latents ``[B, F, C, H, W]``.

The image is the only condition and it enters twice: a CLIP image embedding (``encoder_hidden_states``)
and the VAE latents of the image, concatenated to the noisy latents on the channel axis before the
UNet. The unconditional branch is zeros for both (the pipeline's own CFG). The adapter *splits* the
UNet input into the latents the guider reasons about and an ``image_latents`` input, and the model
call *assembles* them back, so every guider sees ``[B, F, C, H, W]`` latents and the
unconditional branch gets zero image latents.

SVD's CFG scale grows linearly over frames (``min_guidance_scale`` to ``max_guidance_scale``);
``CFG(scale=FrameRamp(min, max))`` reproduces it (:func:`svd_guidance`). Its Euler scheduler
passes ``0.25 log sigma`` as the timestep, read here as the noise level of the scaled model input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.errors import ConfigError
from ...core.noise import NoiseLevel, NoiseSchedule
from ..base import Family, register_family


def encode(original, arguments: dict, negatives: dict):
    embeds = original(**{**arguments, "do_classifier_free_guidance": False})
    return embeds, {"image_embeddings": embeds}, {"image_embeddings": torch.zeros_like(embeds)}


def split(model_input: Tensor, inputs: dict) -> tuple[Tensor, dict]:
    """``[B, F, 2C, H, W]`` -> the noisy latents ``[B, F, C, H, W]`` and ``image_latents``."""
    c = model_input.shape[2] // 2
    return model_input[:, :, :c], {**inputs, "image_latents": model_input[:, :, c:]}


def assemble(sample: Tensor, inputs: dict) -> tuple[Tensor, dict]:
    inputs = dict(inputs)
    image_latents = inputs.pop("image_latents")
    return torch.cat([sample, image_latents.to(sample.dtype)], dim=2), inputs


def uncond(inputs: dict, positive: dict, negative: dict) -> dict:
    """Zero image embedding and zero image latents, as the pipeline's own unconditional half."""
    return {**inputs, "encoder_hidden_states": torch.zeros_like(inputs["encoder_hidden_states"]),
            "image_latents": torch.zeros_like(inputs["image_latents"])}


def noise_of(scheduler):
    """SVD's Euler scheduler with continuous timesteps gives the UNet ``0.25 log sigma``; the UNet's
    input is the sample scaled by ``1 / sqrt(sigma^2 + 1)``, i.e. at ``alpha = 1 / sqrt(1 + sigma^2)``,
    ``sigma_vp = sigma alpha``. Model time ``t`` is read on the training table (``alphas_cumprod``)."""
    continuous = scheduler.config.get("timestep_type") == "continuous" and \
        scheduler.config.get("prediction_type") == "v_prediction"
    table = NoiseSchedule.vp(scheduler.alphas_cumprod)

    def of(timestep) -> NoiseLevel:
        ts = torch.as_tensor(timestep).detach().double().cpu()
        if not continuous:
            return table.noise(ts)
        sigma = torch.exp(4 * ts)
        alpha = torch.rsqrt(1 + sigma * sigma)
        level = NoiseLevel(alpha, sigma * alpha)
        return NoiseLevel(alpha, sigma * alpha, table.timestep(level) / table.num_train_timesteps)
    return of


def item_inputs(prompt, where: str) -> dict:
    """A recipe item's "prompt" is the path of the conditioning image."""
    from pathlib import Path

    from PIL import Image

    path = Path(str(prompt)).expanduser()
    if not path.is_file():
        raise ConfigError(where, "Stable Video Diffusion needs an image file as the item's prompt; "
                          f"not found: {prompt}")
    return {"image": Image.open(path).convert("RGB")}


SVD = register_family(Family(
    name="svd",
    pipelines=("StableVideoDiffusionPipeline",),
    denoiser="unet",
    sample="sample",
    encode=encode,
    encoder="_encode_image",
    conditions={},
    uncond=uncond,
    split=split,
    assemble=assemble,
    noise_of=noise_of,
    layout="BFCHW",
    cfg_scale=("min_guidance_scale", "max_guidance_scale"),
    cfg_off={"min_guidance_scale": 1.0, "max_guidance_scale": 1.0},
    negatives=(),
    modality="video",
    samples_kwarg="num_videos_per_prompt",
    read_output=lambda pipe, result: (result.frames, 7),
    item_inputs=item_inputs,
))


def svd_guidance(min_guidance_scale: float = 1.0, max_guidance_scale: float = 3.0):
    """The pipeline's own guidance as a guider: ``CFG(scale=FrameRamp(min, max))``."""
    from ...core.methods import CFG
    from .scales import FrameRamp

    return CFG(scale=FrameRamp(min_guidance_scale, max_guidance_scale))
