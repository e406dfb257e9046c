"""Tiny diffusers models shared by the perturbed-guidance tests (float32, CPU, seeded).

Imported by tests/test_perturbations.py and tests/test_diffusers_parity_perturbed.py; a test module
that imports it is skipped when diffusers is not installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")


def _seeded(model_class, **config) -> nn.Module:
    """``model_class(**config)`` in eval mode, initialised from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return model_class(**config).eval()


def tiny_unet() -> nn.Module:
    """A 2-level UNet2DConditionModel: 8x8 latents, 4 channels, cross-attention dim 8."""
    return _seeded(
        diffusers.UNet2DConditionModel,
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
        attention_head_dim=2,
    )


def tiny_dit() -> nn.Module:
    """A 3-block class-conditional DiTTransformer2DModel (10 classes, 10 = the null class)."""
    return _seeded(
        diffusers.DiTTransformer2DModel,
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    )


def tiny_sd3() -> nn.Module:
    """A 3-joint-block SD3Transformer2DModel with 8-dim text and pooled projections."""
    return _seeded(
        diffusers.SD3Transformer2DModel,
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=3,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=8,
        caption_projection_dim=8,
        pooled_projection_dim=8,
        out_channels=4,
    )


class ToyBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn1 = diffusers.models.attention_processor.Attention(query_dim=dim, heads=2, dim_head=4)

    def forward(self, hidden_states):
        return hidden_states + self.attn1(self.norm(hidden_states))


class ToyDiT(nn.Module):
    """Tokens = every non-(B, C) position of a 3-, 4- or 5-D sample; ``per_frame`` folds the frames
    of a 5-D sample into the batch (spatial attention) instead of one joint sequence."""

    def __init__(self, channels: int = 3, dim: int = 8, depth: int = 3, per_frame: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.per_frame = per_frame
        self.proj_in, self.proj_out = nn.Linear(channels, dim), nn.Linear(dim, channels)
        self.transformer_blocks = nn.ModuleList(ToyBlock(dim) for _ in range(depth))

    def forward(self, sample, timestep=None):
        b, c, *rest = sample.shape
        x = sample.movedim(1, -1)
        if self.per_frame:
            x = x.reshape(b * rest[0], -1, c)
        h = self.proj_in(x.reshape(x.shape[0], -1, c))
        for block in self.transformer_blocks:
            h = block(h)
        return self.proj_out(h).reshape(b, *rest, c).movedim(-1, 1)


def tiny_flux() -> nn.Module:
    """A FluxTransformer2DModel with 1 double and 1 single block (as tests/tiny_pipelines.py's)."""
    return _seeded(
        diffusers.FluxTransformer2DModel,
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )


def tiny_pixart() -> nn.Module:
    """A 2-block PixArtTransformer2DModel with cross-attention (as tests/tiny_pipelines.py's, no learned sigma)."""
    return _seeded(
        diffusers.PixArtTransformer2DModel,
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=4,
        num_attention_heads=2,
        caption_channels=16,
        in_channels=4,
        cross_attention_dim=8,
        out_channels=4,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
