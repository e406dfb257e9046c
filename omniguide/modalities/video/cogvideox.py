"""CogVideoX (``CogVideoXPipeline``): a v-prediction transformer on latents ``[B, F, C, H, W]``
with a T5 encoder; the condition is ``encoder_hidden_states``.

The pipeline's ``use_dynamic_cfg`` evaluates ``1 + w (1 - cos(pi ((N - t) / N)^5)) / 2`` at the
*training timestep* ``t`` with ``N`` inference steps (diffusers #9641), which makes the scale
oscillate; inside ``guide()`` the guider owns the scale (schedules read one coordinate).
``num_frames - 1`` must be a multiple of the VAE's temporal compression (and, for CogVideoX 1.5,
give a latent frame count divisible by ``patch_size_t``).
"""

from __future__ import annotations

from ..base import Family, register_family
from ..image.sd import encode  # (positive, negative) embeddings, as SD's encode_prompt


def frames(config_of) -> tuple[int, int]:
    r = int(config_of("vae").get("temporal_compression_ratio", 4))
    p = config_of("transformer").get("patch_size_t") or 1
    # latent frames (n - 1) / r + 1 must be a multiple of p: n = r (p k - 1) + 1
    return r * p, (1 - r) % (r * p) if p > 1 else 1


COGVIDEOX = register_family(Family(
    name="cogvideox",
    pipelines=("CogVideoXPipeline",),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds"},
    layout="BFCHW",
    cfg_scale=("guidance_scale", "use_dynamic_cfg"),
    frames=frames,
    modality="video",
    samples_kwarg="num_videos_per_prompt",
    read_output=lambda pipe, result: (result.frames, 8),
))
