"""Tiny randomly initialised text-to-audio models built from configs offline: diffusers' Stable
Audio, AudioLDM, AudioLDM2 and MusicLDM pipelines, and transformers' MusicGen.

Sizes follow ../shared/reference/offline_tiny_pipelines.md (shrunk further); every component is
built in eval mode under a fixed seed. ``saved`` (from tiny_pipelines) round-trips a pipeline
through ``save_pretrained`` / ``from_pretrained``. Stable Audio uses the EDM DPM-Solver (its own
``CosineDPMSolverMultistepScheduler`` needs torchsde, which the project does not depend on).
"""

from __future__ import annotations

from pathlib import Path

import tiny_tokenizers as tok
from tiny_pipelines import _seeded, _t5

AUDIO_SENTENCES = [*tok.CORPUS, "a dog barking in the rain", "a pure A4 tone, decaying", "techno beat with bass",
                   "noise", "quiet", "a rising chirp", "birds singing in a forest"]


def _clap_text_config(tokenizer, projection: int):
    from transformers import ClapTextConfig

    return ClapTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_attention_heads=1,
                          num_hidden_layers=1, pad_token_id=1, projection_dim=projection,
                          max_position_embeddings=80)


def _clap_audio_config(input_channels: int = 4, window_size: int = 4):
    from transformers import ClapAudioConfig

    return ClapAudioConfig(spec_size=8, window_size=window_size, num_mel_bins=8, depths=[1, 1],
                           num_attention_heads=[1, 1],
                           patch_size=2, patch_stride=2, patch_embed_input_channels=input_channels,
                           patch_embeds_hidden_size=8, hidden_size=16, intermediate_size=16, num_classes=2)


def clap(folder: Path):
    """A ClapModel whose audio tower runs (one mel crop of 8 frames x 8 bins: 4 s at 16 kHz, hop 9142) and
    its ClapProcessor, saved to ``folder``."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    roberta = tok.roberta_tokenizer(sentences=AUDIO_SENTENCES)
    model = _seeded(ClapModel, ClapConfig(text_config=_clap_text_config(roberta, 16).to_dict(),
                                          audio_config=_clap_audio_config(1, 2).to_dict(), projection_dim=16))
    model.save_pretrained(folder)
    features = ClapFeatureExtractor(feature_size=8, sampling_rate=16000, hop_length=9142, max_length_s=4,
                                    n_fft=1024, truncation="rand_trunc")
    ClapProcessor(feature_extractor=features, tokenizer=roberta).save_pretrained(folder)
    return folder


def _mel_vae():
    from diffusers import AutoencoderKL

    return _seeded(AutoencoderKL, block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=8,
                   latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1)


def _vocoder():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    return _seeded(SpeechT5HifiGan, SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False))


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False)


def _mel_unet(cls, **extra):
    return _seeded(cls, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=8,
                   in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **extra)


def stable_audio():
    """StableAudioPipeline: 1-layer DiT on [B, 3, 4] latents, stereo Oobleck VAE (2 s max), T5 (max 16 tokens)."""
    from diffusers import (
        AutoencoderOobleck,
        EDMDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )

    t5 = tok.t5_tokenizer(max_length=16, sentences=AUDIO_SENTENCES)
    transformer = _seeded(StableAudioDiTModel, sample_size=4, in_channels=3, out_channels=3, num_layers=2,
                          attention_head_dim=4, num_attention_heads=2, num_key_value_attention_heads=2,
                          cross_attention_dim=4, time_proj_dim=8, global_states_input_dim=8,
                          cross_attention_input_dim=4)
    vae = _seeded(AutoencoderOobleck, encoder_hidden_size=6, downsampling_ratios=[1, 2], decoder_channels=3,
                  decoder_input_channels=3, audio_channels=2, channel_multiples=[2, 4], sampling_rate=4)
    projection = _seeded(StableAudioProjectionModel, text_encoder_dim=16, conditioning_dim=4, min_value=0,
                         max_value=32)
    scheduler = EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                               sigma_schedule="exponential", sigma_min=0.3, sigma_max=500)
    return StableAudioPipeline(vae=vae, text_encoder=_t5(t5, 16), projection_model=projection, tokenizer=t5,
                               transformer=transformer, scheduler=scheduler)


def audioldm():
    """AudioLDMPipeline: CLAP text embeddings (L2-normalised) as the UNet's class labels."""
    from diffusers import AudioLDMPipeline, UNet2DConditionModel
    from transformers import ClapTextModelWithProjection

    roberta = tok.roberta_tokenizer(sentences=AUDIO_SENTENCES)
    unet = _mel_unet(UNet2DConditionModel, cross_attention_dim=16, class_embed_type="simple_projection",
                     projection_class_embeddings_input_dim=8, class_embeddings_concat=True)
    text_encoder = _seeded(ClapTextModelWithProjection, _clap_text_config(roberta, 8))
    return AudioLDMPipeline(vae=_mel_vae(), text_encoder=text_encoder, tokenizer=roberta, unet=unet,
                            scheduler=_ddim(), vocoder=_vocoder())


def musicldm():
    """MusicLDMPipeline: CLAP ``get_text_features`` as the UNet's class labels."""
    from diffusers import MusicLDMPipeline, UNet2DConditionModel
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    roberta = tok.roberta_tokenizer(sentences=AUDIO_SENTENCES)
    unet = _mel_unet(UNet2DConditionModel, cross_attention_dim=16, class_embed_type="simple_projection",
                     projection_class_embeddings_input_dim=16, class_embeddings_concat=True)
    clap = _seeded(ClapModel, ClapConfig(text_config=_clap_text_config(roberta, 16).to_dict(),
                                         audio_config=_clap_audio_config().to_dict(), projection_dim=16))
    features = ClapFeatureExtractor(feature_size=8, sampling_rate=16000, hop_length=7900)
    return MusicLDMPipeline(vae=_mel_vae(), text_encoder=clap, tokenizer=roberta, feature_extractor=features,
                            unet=unet, scheduler=_ddim(), vocoder=_vocoder())


def audioldm2():
    """AudioLDM2Pipeline: CLAP + T5 -> projection -> GPT-2 generating 8 hidden states, two cross-attentions."""
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, GPT2Config, GPT2LMHeadModel

    roberta, t5 = tok.roberta_tokenizer(sentences=AUDIO_SENTENCES), tok.t5_tokenizer(sentences=AUDIO_SENTENCES)
    unet = _mel_unet(AudioLDM2UNet2DConditionModel, cross_attention_dim=(8, 16))
    clap = _seeded(ClapModel, ClapConfig(text_config=_clap_text_config(roberta, 8).to_dict(),
                                         audio_config=_clap_audio_config().to_dict(), projection_dim=16))
    language_model = _seeded(GPT2LMHeadModel, GPT2Config(n_embd=16, n_head=1, n_layer=1, vocab_size=1000, n_ctx=99,
                                                         n_positions=99, bos_token_id=0, eos_token_id=0))
    language_model.config.max_new_tokens = 8
    projection = _seeded(AudioLDM2ProjectionModel, text_encoder_dim=16, text_encoder_1_dim=32,
                         langauge_model_dim=16)
    features = ClapFeatureExtractor(feature_size=8, sampling_rate=16000, hop_length=7900)
    return AudioLDM2Pipeline(vae=_mel_vae(), text_encoder=clap, text_encoder_2=_t5(t5, 32),
                             projection_model=projection, language_model=language_model, tokenizer=roberta,
                             tokenizer_2=t5, feature_extractor=features, unet=unet, scheduler=_ddim(),
                             vocoder=_vocoder())


BUILDERS = {"stable_audio": stable_audio, "audioldm": audioldm, "audioldm2": audioldm2, "musicldm": musicldm}
# keyword arguments every call of a family needs (short audio)
CALL_KWARGS = {
    "stable_audio": {"audio_end_in_s": 2.0},
    "audioldm": {"audio_length_in_s": 0.016},
    "audioldm2": {"audio_length_in_s": 0.016, "max_new_tokens": 4},
    "musicldm": {"audio_length_in_s": 0.016},
}


def musicgen(folder: Path | None = None):
    """MusicgenForConditionalGeneration (T5 text encoder, 1-layer decoder over 2 codebooks of 16 codes,
    EnCodec at 8 kHz) and its MusicgenProcessor; saved to and reloaded from ``folder`` when given."""
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    t5 = tok.t5_tokenizer(max_length=16, sentences=AUDIO_SENTENCES)
    text = T5Config(vocab_size=len(t5), d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
                    decoder_start_token_id=0)
    audio = EncodecConfig(target_bandwidths=[10.0], sampling_rate=8000, audio_channels=1, num_filters=4,
                          num_residual_layers=1, upsampling_ratios=[4, 4], hidden_size=8, codebook_size=16,
                          codebook_dim=8, num_lstm_layers=1, compress=2)
    decoder = MusicgenDecoderConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    ffn_dim=32, num_codebooks=2, max_position_embeddings=64, pad_token_id=16,
                                    bos_token_id=16, audio_channels=1)
    model = _seeded(MusicgenForConditionalGeneration, MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                                     decoder=decoder))
    g = model.generation_config
    g.decoder_start_token_id, g.pad_token_id, g.bos_token_id = 16, 16, 16
    g.do_sample, g.guidance_scale, g.max_length = True, 3.0, 64
    processor = MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(sampling_rate=8000), tokenizer=t5)
    if folder is None:
        return model, processor
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return MusicgenForConditionalGeneration.from_pretrained(folder).eval(), MusicgenProcessor.from_pretrained(folder)
