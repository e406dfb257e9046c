"""LTX-Video (``LTXPipeline``): a flow-matching transformer on packed latent tokens ``[B, L, C]``
(frames x height x width, frame-major), a T5 encoder with an attention mask.

The conditions are ``encoder_hidden_states`` and ``encoder_attention_mask``; the token-grid sizes
(``num_frames``, ``height``, ``width``) and ``rope_interpolation_scale`` are shared by every branch.
The pipeline's ``guidance_rescale`` belongs to the guider inside ``guide()`` (``CFGRescale`` in
the model's own space reproduces it). Axes are ``BLD``: reductions over tokens and features, as the
pipeline's rescale; frame and region maps need the tokens unpacked (not provided here).
``num_frames - 1`` must be a multiple of the VAE's temporal compression.
"""

from __future__ import annotations

from ..base import Family, register_family
from ..image.pixart import encode  # the same (embeds, mask, negative, negative mask) as PixArt's


def frames(config_of) -> tuple[int, int]:
    vae = config_of("vae")
    return int(vae.get("patch_size_t", 1)) * 2 ** sum(bool(s) for s in vae["spatio_temporal_scaling"]), 1


LTX = register_family(Family(
    name="ltx",
    pipelines=("LTXPipeline",),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds", "encoder_attention_mask": "prompt_attention_mask"},
    negatives=("negative_prompt", "negative_prompt_embeds", "negative_prompt_attention_mask"),
    layout="BLD",
    frames=frames,
    modality="video",
    samples_kwarg="num_videos_per_prompt",
    read_output=lambda pipe, result: (result.frames, 25),
))
