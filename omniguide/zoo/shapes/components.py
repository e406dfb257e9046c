"""The shapes model's components, built offline from a small config: a CLIP tokenizer whose BPE is
learned deterministically from the caption vocabulary, a tiny ``CLIPTextModel``, a pixel-space
``UNet2DConditionModel`` with cross-attention (and self-attention in its mid block) and the
DDIM scheduler carrying the training noise schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import diffusers
import transformers

from .data import IMAGE_SIZE, vocabulary

MAX_TOKENS = 16   # captions are at most 7 words + 2 specials


@dataclass
class ShapesModel:
    """Architecture of the UNet and text encoder, and the model's training extras (the ``model:``
    section of the train recipe, with ``name: shapes``)."""

    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    attention_levels: int = 1         # the deepest levels with self/cross-attention (the mid block always has it)
    attention_heads: int = 4          # per attention layer, in the UNet and the text encoder
    norm_num_groups: int = 8
    text_hidden: int = 64             # CLIP width = the UNet's cross_attention_dim
    text_layers: int = 2
    text_intermediate: int = 128
    prediction_type: str = "epsilon"  # what the UNet predicts: epsilon | v_prediction (the scheduler's name)
    ema_decay: float = 0.999          # EMA of the trained weights (0 disables); the EMA weights are saved
    warmup_steps: int = 200           # linear warm-up, then cosine decay to 0.1 * lr at max_steps
    fp16_weights: bool = True         # store the saved pipeline in float16 (loaded back as float32)


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_TOKENS) -> transformers.CLIPTokenizer:
    """The zoo's pixel-pipeline tokenizer (:func:`~omniguide.zoo.pixel_pipeline.build_tokenizer`) on the
    caption vocabulary: every caption word is one token."""
    from ..pixel_pipeline import build_tokenizer as build

    return build(words or vocabulary(), max_length)


def build_text_encoder(cfg: ShapesModel, vocab_size: int) -> transformers.CLIPTextModel:
    """A small CLIP text transformer (causal, like SD's), ids ``bos=0, eos=pad=1``."""
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.attention_heads,
        max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.CLIPTextModel(config)


def build_unet(cfg: ShapesModel) -> diffusers.UNet2DConditionModel:
    """A pixel-space UNet (3 channels in and out): convolutional levels at high resolution, the
    ``attention_levels`` deepest ones with self- and cross-attention, and
    ``UNetMidBlock2DCrossAttn`` in the middle. (Attention at 16x16 doubles the CPU cost of a step;
    positions and shapes are coarse enough for 8x8.)"""
    levels = len(cfg.block_out_channels)
    if not 0 <= cfg.attention_levels <= levels:
        raise ValueError(f"attention_levels must be in 0..{levels}, got {cfg.attention_levels}")
    plain = levels - cfg.attention_levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * cfg.attention_levels
    return diffusers.UNet2DConditionModel(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads, norm_num_groups=cfg.norm_num_groups)


PREDICTION_TYPES = ("epsilon", "v_prediction")


def build_scheduler(prediction_type: str = "epsilon", clip_sample: bool = False) -> diffusers.DDIMScheduler:
    """DDIM on the training schedule (DDPM's linear betas 1e-4..0.02 over 1000 steps), trailing
    timesteps; ``clip_sample`` clamps each step's x0 estimate to [-1, 1] (off by default, so
    over-saturation stays measurable)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type '{prediction_type}'; valid: {', '.join(PREDICTION_TYPES)}")
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        prediction_type=prediction_type, clip_sample=clip_sample, set_alpha_to_one=True, steps_offset=0,
        timestep_spacing="trailing")
