"""Tiny randomly initialised diffusers video pipelines, built from configs offline: Stable Video
Diffusion, Wan 2.1 and 2.2 (two experts), LTX-Video and CogVideoX.

Sizes follow ../shared/reference/offline_tiny_pipelines.md (SVD: UNet/VAE channels multiples of
32, CLIP image size 224 with 56-pixel patches so PIL images work; Wan reloads with accelerate).
"""

from __future__ import annotations

import tiny_tokenizers as tok
import torch


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).eval()


def _t5(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return _seeded(T5EncoderModel, T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                            num_heads=2, num_layers=1, decoder_start_token_id=0))


def svd():
    """StableVideoDiffusionPipeline: 2-level spatio-temporal UNet (32 channels), temporal-decoder VAE,
    CLIP vision (224 px, 56-px patches), Euler (v-prediction, Karras sigmas, continuous timesteps)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = _seeded(UNetSpatioTemporalConditionModel, block_out_channels=(32, 32), layers_per_block=1, sample_size=8,
                   in_channels=8, out_channels=4, down_block_types=("CrossAttnDownBlockSpatioTemporal",
                                                                    "DownBlockSpatioTemporal"),
                   up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=8,
                   num_attention_heads=2, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                   num_frames=3)
    vae = _seeded(AutoencoderKLTemporalDecoder, block_out_channels=[32, 32], in_channels=3, out_channels=3,
                  down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4, layers_per_block=1)
    encoder = _seeded(CLIPVisionModelWithProjection, CLIPVisionConfig(
        hidden_size=8, projection_dim=8, num_hidden_layers=1, num_attention_heads=2, image_size=224, patch_size=56,
        intermediate_size=16))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="v_prediction", use_karras_sigmas=True, sigma_max=700.0,
                                       sigma_min=0.002, timestep_type="continuous", timestep_spacing="leading",
                                       steps_offset=1, interpolation_type="linear")
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor(crop_size=224, size=224))


def _wan_transformer():
    from diffusers import WanTransformer3DModel

    return _seeded(WanTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                   in_channels=16, out_channels=16, text_dim=32, freq_dim=16, ffn_dim=16, num_layers=2,
                   cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def wan(experts: int = 1):
    """WanPipeline (2.1); ``experts=2``: Wan 2.2 with a low-noise ``transformer_2`` and ``boundary_ratio``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    t5 = tok.t5_tokenizer(max_length=16)
    vae = _seeded(AutoencoderKLWan, base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True])
    transformer = _wan_transformer()
    second = None
    if experts == 2:
        torch.manual_seed(1)
        second = _wan_transformer()
        with torch.no_grad():
            for p in second.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return WanPipeline(tokenizer=t5, text_encoder=_t5(t5), transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer_2=second,
                       boundary_ratio=0.6 if experts == 2 else None)


def ltx():
    """LTXPipeline: 1-layer transformer on packed tokens, the diffusers test VAE, flow matching."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    t5 = tok.t5_tokenizer(max_length=16)
    transformer = _seeded(LTXVideoTransformer3DModel, in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                          num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32, num_layers=2,
                          caption_channels=32)
    vae = _seeded(AutoencoderKLLTXVideo, in_channels=3, out_channels=3, latent_channels=8,
                  block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                  layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                  spatio_temporal_scaling=(True, True, False, False),
                  decoder_spatio_temporal_scaling=(True, True, False, False),
                  decoder_inject_noise=(False, False, False, False, False),
                  upsample_residual=(False, False, False, False),
                  upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
                  encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(t5), tokenizer=t5,
                       transformer=transformer)


def cogvideox():
    """CogVideoXPipeline: 1-layer transformer (2x2 patches), CogVideoX VAE (temporal compression 4),
    CogVideoX DDIM (v-prediction)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    t5 = tok.t5_tokenizer(max_length=16)
    transformer = _seeded(CogVideoXTransformer3DModel, num_attention_heads=4, attention_head_dim=8, in_channels=4,
                          out_channels=4, time_embed_dim=2, text_embed_dim=32, num_layers=2, sample_width=2,
                          sample_height=2, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                          max_text_seq_length=16)
    vae = _seeded(AutoencoderKLCogVideoX, in_channels=3, out_channels=3,
                  down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                  block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                  temporal_compression_ratio=4)
    return CogVideoXPipeline(tokenizer=t5, text_encoder=_t5(t5), vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


BUILDERS = {"svd": svd, "wan": wan, "wan22": lambda: wan(2), "ltx": ltx, "cogvideox": cogvideox}
CALL_KWARGS = {
    "svd": {"height": 16, "width": 16, "num_frames": 3, "decode_chunk_size": 3},
    "wan": {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16},
    "wan22": {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16},
    "ltx": {"height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 16},
    "cogvideox": {"height": 16, "width": 16, "num_frames": 9, "max_sequence_length": 16},
}


def svd_image(size: int = 16, seed: int = 0):
    """A PIL conditioning image for SVD."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)
