"""A small video denoiser with independent per-frame noise levels (Diffusion-Forcing style), trained
on the sprite videos of :mod:`omniguide.zoo.sprites`, and its LightningModule.

``VideoDenoiser(x, timestep, caption=None, stride=None)`` takes a window ``x [B, 3, F, H, W]``
(pixels scaled to [-1, 1]) whose frames each carry their own ``timestep [B, F]`` in ``[0, 1000]``
(rectified flow: ``x_t = (1 - t) x0 + t eps`` with ``t = timestep / 1000``) and predicts the flow
velocity ``eps - x0`` of every frame. History conditioning is therefore "history frames at
``t = 0``" (Song et al. 2025, arXiv:2502.06764; Chen et al. 2024, arXiv:2407.01392); the guidance
protocol of :mod:`omniguide.modalities.video.protocol` wraps it.

Architecture: 4x4 patches (16 tokens per 16x16 frame; a token is wider than its 48-value patch, or
it could not carry the noise that the velocity target contains), blocks of spatial self-attention (within a
frame), temporal self-attention (across the window, bidirectional) and an MLP, each modulated
per frame (adaLN-zero) by the frame's noise level, the caption and the frame stride. Attention
modules use diffusers' names (``to_q``, ``to_k``, ``to_v``, ``to_out``) and the blocks sit in
``blocks``, so the core's perturbations (skip-layer, identity attention) and STG modes act on it.

Training (``omniguide run configs/train/video_denoiser.yaml``): each step draws a fresh global
batch of sprite clips from ``(seed, step)`` (rank ``r`` keeps rows ``r::world``), with a window
length drawn from ``lengths`` and a frame stride from ``strides``; every frame gets its own noise
level ``t ~ U(0, 1)``, except that with probability ``p_clean`` / ``p_masked`` a frame is set to
exactly 0 (clean history) / 1 (fully masked). Captions are dropped to null with ``cond_dropout``.
Loss: MSE on the velocity of frames with ``t > 0`` (a clean frame's velocity is unpredictable).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import ConfigError
from .history_levels import history_levels
from .sprites import AXES, COLOURS, SPEEDS, SpriteWorld, random_state, render, trajectory
from .trainer import StepTrainer, TrainSettings, trainable_builder


@dataclass
class VideoDenoiserConfig:
    """Architecture of :class:`VideoDenoiser`."""

    size: int = 16
    channels: int = 3
    patch: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    max_frames: int = 8
    max_sprites: int = 2
    strides: list[int] = field(default_factory=lambda: [1, 2, 4])
    time_features: int = 64
    num_train_timesteps: int = 1000
    sprite: float = 4.0          # the sprite side the model was trained on (its data, kept with the weights)


class Attention(nn.Module):
    """Multi-head self-attention with diffusers' module names, on ``[N, L, D]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, hidden_states: Tensor) -> Tensor:
        n, length, dim = hidden_states.shape
        h = self.heads

        def split(x):
            return x.view(n, length, h, dim // h).transpose(1, 2)
        q, k, v = split(self.to_q(hidden_states)), split(self.to_k(hidden_states)), split(self.to_v(hidden_states))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        return self.to_out[1](self.to_out[0](out))


class Block(nn.Module):
    """Spatial attention, temporal attention and an MLP, each with a per-frame adaLN-zero gate."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_space = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_time = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.modulation = nn.Linear(dim, 9 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, hidden_states: Tensor, emb: Tensor) -> Tensor:
        """``hidden_states [B, F, N, D]``, ``emb [B, F, D]``."""
        b, f, n, d = hidden_states.shape
        mods = self.modulation(F.silu(emb)).unsqueeze(2).chunk(9, dim=-1)
        x = hidden_states
        h = self.norm1(x) * (1 + mods[1]) + mods[0]
        x = x + mods[2] * self.attn_space(h.reshape(b * f, n, d)).view(b, f, n, d)
        h = self.norm2(x) * (1 + mods[4]) + mods[3]
        h = h.permute(0, 2, 1, 3).reshape(b * n, f, d)
        x = x + mods[5] * self.attn_time(h).view(b, n, f, d).permute(0, 2, 1, 3)
        h = self.norm3(x) * (1 + mods[7]) + mods[6]
        return x + mods[8] * self.ff(h)


def timestep_features(t: Tensor, features: int) -> Tensor:
    """Sinusoidal features of ``t`` in [0, 1] (scaled by 1000), ``[..., features]``."""
    half = features // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class VideoDenoiser(nn.Module):
    """Flow-velocity prediction for a window of frames with per-frame timesteps (see the module docstring)."""

    parameterization = "flow"

    def __init__(self, config: VideoDenoiserConfig | None = None):
        super().__init__()
        self.config = c = config or VideoDenoiserConfig()
        if c.size % c.patch:
            raise ConfigError("model.patch", f"{c.patch} does not divide the frame size {c.size}")
        if c.dim < c.channels * c.patch * c.patch:
            # a token narrower than its patch cannot carry the noise the velocity target contains
            raise ConfigError("model.dim", f"{c.dim} is smaller than a patch ({c.channels} x {c.patch} x {c.patch} = "
                              f"{c.channels * c.patch * c.patch} values); use a smaller patch or a wider model")
        self.grid = c.size // c.patch
        patch_dim = c.channels * c.patch * c.patch
        self.patch_in = nn.Linear(patch_dim, c.dim)
        self.pos_space = nn.Parameter(torch.randn(self.grid * self.grid, c.dim) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(c.max_frames, c.dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_features, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        # caption: per sprite slot, colour / axis / speed ids (+1; 0 = absent), then an MLP over the slots
        self.colour = nn.Embedding(len(COLOURS) + 1, c.dim)
        self.axis = nn.Embedding(len(AXES) + 1, c.dim)
        self.speed = nn.Embedding(len(SPEEDS) + 1, c.dim)
        self.slot = nn.Parameter(torch.randn(c.max_sprites, c.dim) * 0.02)
        self.caption_mlp = nn.Sequential(nn.Linear(c.max_sprites * c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.null_caption = nn.Parameter(torch.zeros(c.dim))
        self.stride = nn.Embedding(len(c.strides), c.dim)
        self.blocks = nn.ModuleList([Block(c.dim, c.heads) for _ in range(c.depth)])
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False)
        self.modulation_out = nn.Linear(c.dim, 2 * c.dim)
        self.patch_out = nn.Linear(c.dim, patch_dim)
        for layer in (self.modulation_out, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- conditioning ------------------------------------------------------------------------------
    def caption_embedding(self, caption: Tensor | None, batch: int, device) -> Tensor:
        """``[B, D]`` from attribute ids ``[B, K, 3]`` (``-1`` absent); a caption with no sprite (or
        ``None``) is the learned null caption."""
        if caption is None:
            return self.null_caption.expand(batch, -1)
        caption = torch.as_tensor(caption, device=device, dtype=torch.long)
        if caption.ndim == 2:
            caption = caption.unsqueeze(0)
        caption = caption.expand(batch, -1, -1)
        ids = caption + 1
        slots = self.colour(ids[..., 0]) + self.axis(ids[..., 1]) + self.speed(ids[..., 2]) + self.slot
        slots = slots * (caption[..., :1] >= 0)
        emb = self.caption_mlp(slots.reshape(batch, -1))
        null = (caption[..., 0] < 0).all(dim=1, keepdim=True)
        return torch.where(null, self.null_caption.expand(batch, -1), emb)

    def stride_embedding(self, stride: Tensor | int | None, batch: int, device) -> Tensor:
        strides = self.config.strides
        stride = torch.as_tensor(strides[0] if stride is None else stride, device=device).reshape(-1).expand(batch)
        index = torch.zeros_like(stride)
        known = torch.zeros_like(stride, dtype=torch.bool)
        for i, s in enumerate(strides):
            index = torch.where(stride == s, torch.full_like(index, i), index)
            known |= stride == s
        if not bool(known.all()):
            raise ConfigError("stride", f"frame stride {stride.tolist()} not trained; trained strides: {strides}")
        return self.stride(index)

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, sample: Tensor, timestep, caption: Tensor | None = None, stride: Tensor | int | None = None
                ) -> Tensor:
        """Velocity ``[B, C, F, H, W]`` for ``sample [B, C, F, H, W]`` at per-frame ``timestep``
        (a scalar, ``[B]`` or ``[B, F]``, in [0, 1000])."""
        c = self.config
        b, ch, f, h, w = sample.shape
        if f > c.max_frames:
            raise ConfigError("frames", f"a window of {f} frames is longer than the model's {c.max_frames}")
        if (h, w) != (c.size, c.size) or ch != c.channels:
            raise ConfigError("sample", f"expected [B, {c.channels}, F, {c.size}, {c.size}], got {tuple(sample.shape)}")
        dtype = sample.dtype
        x = sample.float()
        t = torch.as_tensor(timestep, device=x.device, dtype=torch.float32) / c.num_train_timesteps
        t = t.reshape(b, -1) if t.ndim >= 1 and t.numel() > 1 else t.reshape(1, -1)
        t = t.expand(b, f) if t.shape[1] == f else t[:, :1].expand(b, f)
        p, g = c.patch, self.grid
        tokens = x.view(b, ch, f, g, p, g, p).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f, g * g, ch * p * p)
        hidden = self.patch_in(tokens) + self.pos_space + self.pos_time[:f].unsqueeze(1)
        context = self.caption_embedding(caption, b, x.device) + self.stride_embedding(stride, b, x.device)
        emb = self.time_mlp(timestep_features(t, c.time_features)) + context.unsqueeze(1)
        for block in self.blocks:
            hidden = block(hidden, emb)
        shift, scale = self.modulation_out(F.silu(emb)).unsqueeze(2).chunk(2, dim=-1)
        out = self.patch_out(self.norm_out(hidden) * (1 + scale) + shift)
        out = out.view(b, f, g, g, ch, p, p).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, ch, f, h, w)
        return out.to(dtype)

    # -- files ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Weights as safetensors, with the architecture in the file's metadata."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"config": json.dumps(asdict(self.config)), "kind": "video-denoiser"})

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> VideoDenoiser:
        """A model saved by :meth:`save`."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("kind") != "video-denoiser":
            raise ConfigError("weights", f"{path} is not a video-denoiser weight file")
        model = VideoDenoiser(VideoDenoiserConfig(**json.loads(meta["config"])))
        model.load_state_dict(load_file(str(path), device=str(device)))
        return model.to(device).eval()


DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "video_denoiser_sprites.safetensors"


# -- training ---------------------------------------------------------------------------------------------
@dataclass
class SpriteData:
    """The training clips: the world, window lengths and strides drawn per step, noise-level atoms."""

    size: int = 16
    sprite: float = 4.0
    max_sprites: int = 2
    lengths: list[int] = field(default_factory=lambda: [5, 6, 7, 8])
    strides: list[int] = field(default_factory=lambda: [1, 2, 4])
    p_clean: float = 0.15
    p_masked: float = 0.1
    p_structured: float = 0.5

    def world(self) -> SpriteWorld:
        return SpriteWorld(self.size, self.sprite, self.max_sprites)


@dataclass
class VideoTrainSettings(TrainSettings):
    warmup: int = 200           # steps of linear learning-rate warm-up
    ema: float = 0.999          # decay of the exponential moving average of the weights (0: off)
    decay_from: float = 0.7     # the learning rate falls (cosine, to 10 %) over the last 30 % of max_steps


def sprite_batch(data: SpriteData, n: int, generator: torch.Generator, frames: int, stride: int
                 ) -> tuple[Tensor, Tensor]:
    """``(clips [n, 3, frames, H, W] in [-1, 1], attributes [n, K, 3])`` for one stride."""
    world = data.world()
    state = random_state(world, n, generator)
    clips = render(world, state, trajectory(world, state, frames, stride=stride))
    return clips * 2 - 1, state.attributes


def per_frame_levels(n: int, frames: int, generator: torch.Generator, data: SpriteData) -> Tensor:
    """``[n, frames]`` noise levels in [0, 1]: :func:`~omniguide.zoo.history_levels.history_levels`
    with the data's ``p_clean``, ``p_masked`` and ``p_structured``."""
    return history_levels(n, frames, generator, data.p_clean, data.p_masked, data.p_structured)


class VideoDenoiserModule(StepTrainer):
    """Trains a :class:`VideoDenoiser` with the flow-matching loss and independent per-frame noise levels."""

    def __init__(self, model: VideoDenoiserConfig, data: SpriteData, settings: VideoTrainSettings):
        super().__init__()
        self.save_hyperparameters({"model": asdict(model), "data": asdict(data), "settings": asdict(settings)})
        if data.strides != model.strides:
            raise ConfigError("data.strides", f"must equal model.strides ({model.strides}), got {data.strides}")
        if (data.size, data.sprite) != (model.size, model.sprite):
            raise ConfigError("data.size", f"the data ({data.size} px, sprites {data.sprite} px) must match the model "
                              f"({model.size} px, sprites {model.sprite} px)")
        if max(data.lengths) > model.max_frames:
            raise ConfigError("data.lengths",
                              f"longest window {max(data.lengths)} > model.max_frames {model.max_frames}")
        self.model = VideoDenoiser(model)
        self.ema = VideoDenoiser(model)   # the moving average of the weights, saved at the end
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.data, self.settings = data, settings

    def global_batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(x_t, timestep [n, F], caption, stride, target)`` of step ``step``, identical on every rank and rerun."""
        s, d = self.settings, self.data
        gen = self.generator(step)
        frames = d.lengths[int(torch.randint(len(d.lengths), (1,), generator=gen))]
        stride = d.strides[int(torch.randint(len(d.strides), (1,), generator=gen))]
        x0, caption = sprite_batch(d, s.batch_size, gen, frames, stride)
        caption = caption.clone()
        caption[torch.rand(s.batch_size, generator=gen) < s.cond_dropout] = -1
        t = per_frame_levels(s.batch_size, frames, gen, d)
        eps = torch.randn(x0.shape, generator=gen)
        tt = t.view(s.batch_size, 1, frames, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        stride_ids = torch.full((s.batch_size,), stride, dtype=torch.long)
        return xt, t * 1000.0, caption, stride_ids, eps - x0

    def loss(self, xt: Tensor, timestep: Tensor, caption: Tensor, stride: Tensor, target: Tensor) -> Tensor:
        """Flow-matching MSE over the frames with a noise level above 0."""
        pred = self.model(xt, timestep, caption, stride)
        weight = (timestep > 0).float().view(timestep.shape[0], 1, timestep.shape[1], 1, 1)
        return ((pred - target).pow(2) * weight).mean() / weight.mean().clamp_min(1e-8)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.settings.ema > 0:
            self.update_ema(self.ema, self.model, self.settings.ema)

    def on_train_end(self) -> None:
        """The saved model is the moving average (when kept)."""
        if self.settings.ema > 0:
            self.model.load_state_dict(self.ema.state_dict())

    def configure_optimizers(self) -> dict:
        """AdamW, linear warm-up, constant, then cosine to 10 % at max_steps."""
        return self.adamw_warmup_cosine(self.model.parameters(), self.settings.warmup, self.settings.decay_from)


build_trainable = trainable_builder(VideoDenoiserModule, VideoDenoiserConfig, SpriteData, VideoTrainSettings)
