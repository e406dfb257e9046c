"""Tiny randomly initialised diffusers pipelines of each image family, built from configs offline.

Every builder seeds torch, builds the components in eval mode, and returns the pipeline; ``saved``
round-trips one through ``save_pretrained`` / ``from_pretrained`` so the real loading code runs.
Sizes follow ../shared/reference/offline_tiny_pipelines.md and diffusers' fast-test configs, shrunk.
"""

from __future__ import annotations

from pathlib import Path

import tiny_tokenizers as tok
import torch


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).eval()


def _clip_config(tokenizer, hidden: int, projection: int | None = None, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=2, num_hidden_layers=layers, max_position_embeddings=77,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=projection or hidden)


def _t5(tokenizer, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return _seeded(T5EncoderModel, T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                            num_heads=2, num_layers=1, decoder_start_token_id=0))


def _vae(block_out_channels=(8, 16), norm_num_groups: int = 2, **extra):
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return _seeded(AutoencoderKL, block_out_channels=list(block_out_channels), in_channels=3, out_channels=3,
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                   latent_channels=4, norm_num_groups=norm_num_groups, layers_per_block=1, sample_size=16, **extra)


def _flow_vae():
    return _vae((4,), 1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def _ddim(**config):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, **config)


def sd(prediction_type: str = "epsilon"):
    """StableDiffusionPipeline: 2-level UNet (cross-attention dim 8), CLIP text encoder, 16 px."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tok.clip_tokenizer()
    unet = _seeded(UNet2DConditionModel, block_out_channels=(4, 8), layers_per_block=1, sample_size=8,
                   in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2,
                   attention_head_dim=2)
    text_encoder = _seeded(CLIPTextModel, _clip_config(tokenizer, 8))
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=_ddim(prediction_type=prediction_type), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def sdxl():
    """StableDiffusionXLPipeline: two CLIP encoders (8 + 8 = cross-attention 16), text_time embedding."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tok.clip_tokenizer()
    unet = _seeded(UNet2DConditionModel, block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                   in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=6 * 4 + 8, cross_attention_dim=16, norm_num_groups=2)
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_seeded(CLIPTextModel, _clip_config(tokenizer, 8)),
        text_encoder_2=_seeded(CLIPTextModelWithProjection, _clip_config(tokenizer, 8, 8)), tokenizer=tokenizer,
        tokenizer_2=tok.clip_tokenizer(), unet=unet, scheduler=_ddim(), force_zeros_for_empty_prompt=False)


def sd3():
    """StableDiffusion3Pipeline: 2 joint blocks, two CLIP encoders + T5, flow matching."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip, t5 = tok.clip_tokenizer(), tok.t5_tokenizer(max_length=16)
    transformer = _seeded(SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                          attention_head_dim=4, num_attention_heads=2, joint_attention_dim=16,
                          caption_projection_dim=8, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(),
        text_encoder=_seeded(CLIPTextModelWithProjection, _clip_config(clip, 8, 8)), tokenizer=clip,
        text_encoder_2=_seeded(CLIPTextModelWithProjection, _clip_config(clip, 8, 8)), tokenizer_2=tok.clip_tokenizer(),
        text_encoder_3=_t5(t5, 16), tokenizer_3=t5, image_encoder=None, feature_extractor=None)


def flux():
    """FluxPipeline (guidance-distilled, like FLUX.1-dev): 1 double + 1 single block, CLIP + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip, t5 = tok.clip_tokenizer(), tok.t5_tokenizer(max_length=16)
    transformer = _seeded(FluxTransformer2DModel, patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                          pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(),
                        text_encoder=_seeded(CLIPTextModel, _clip_config(clip, 32)), tokenizer=clip,
                        text_encoder_2=_t5(t5, 32), tokenizer_2=t5, transformer=transformer,
                        image_encoder=None, feature_extractor=None)


def pixart():
    """PixArtSigmaPipeline: 2-block DiT with learned sigma (out_channels = 2 x latent), T5 encoder."""
    from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel

    t5 = tok.t5_tokenizer(max_length=16)
    transformer = _seeded(PixArtTransformer2DModel, sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4,
                          num_attention_heads=2, caption_channels=16, in_channels=4, cross_attention_dim=8,
                          out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
                          num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                          norm_eps=1e-6)
    return PixArtSigmaPipeline(tokenizer=t5, text_encoder=_t5(t5, 16), vae=_vae(), transformer=transformer,
                               scheduler=_ddim())


BUILDERS = {"sd": sd, "sd-v": lambda: sd("v_prediction"), "sdxl": sdxl, "sd3": sd3, "flux": flux, "pixart": pixart}

# keyword arguments every call of a family needs (small sizes, short text)
CALL_KWARGS = {
    "sd": {"height": 16, "width": 16},
    "sd-v": {"height": 16, "width": 16},
    "sdxl": {"height": 16, "width": 16},
    "sd3": {"height": 16, "width": 16, "max_sequence_length": 16},
    "flux": {"height": 16, "width": 16, "max_sequence_length": 16, "guidance_scale": 3.5},
    "pixart": {"height": 16, "width": 16, "max_sequence_length": 16, "use_resolution_binning": False,
               "clean_caption": False},
}
# the pipeline's own CFG scale argument (Flux: true CFG, which needs a negative prompt)
CFG_KWARG = {"sd": "guidance_scale", "sd-v": "guidance_scale", "sdxl": "guidance_scale", "sd3": "guidance_scale",
             "flux": "true_cfg_scale", "pixart": "guidance_scale"}


def saved(pipe, folder: Path):
    """``pipe`` saved with ``save_pretrained`` and reloaded with ``from_pretrained`` (offline)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    loaded = type(pipe).from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    return loaded
