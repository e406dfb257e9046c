"""Training the 3D prior: a :class:`~omniguide.zoo.pixel_pipeline.PixelDiffusionPipeline` learns multi-view renders of
coloured primitives (``data.py``) with captions such as ``"a red cube, side view"``.

``prediction: v`` (the default; DDPM linear betas, DDIM at sampling) or ``eps``, or ``flow`` (rectified flow:
``x_t = (1 - t) x0 + t eps``, target ``eps - x0``, flow-matching Euler at sampling). Captions are
dropped to ``""`` with probability ``cond_dropout`` for classifier-free guidance; the text encoder
trains with the UNet. As for the other zoo models, the global batch of step ``k`` is a pure
function of ``(seed, k)`` and each rank keeps rows ``rank::world``, so resumed and DDP runs
reproduce a single uninterrupted run.

    omniguide run configs/train/primitives_prior.yaml      # writes pipeline/ (from_pretrained)
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ...core.errors import ConfigError
from ...distillation.score.scene import ViewPrompts
from ..pixel_pipeline import PixelDiffusionPipeline, build_tokenizer
from ..trainer import StepTrainer, TrainSettings, trainable_builder
from .data import ViewsSpec, render_views, vocabulary

PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "flow": "flow"}


@dataclass
class PriorArchitecture:
    """The UNet and text encoder of the prior (``model:`` of the train recipe)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    max_length: int = 16
    prediction: str = "v"
    num_train_timesteps: int = 1000


def build_pipeline(arch: PriorArchitecture, spec: ViewsSpec) -> PixelDiffusionPipeline:
    """A freshly initialised pipeline (seed it first)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch.prediction not in PREDICTIONS:
        raise ConfigError("model.prediction",
                          f"unknown prediction '{arch.prediction}'; valid: {', '.join(PREDICTIONS)}")
    tokenizer = build_tokenizer(vocabulary(spec), arch.max_length, ties="largest")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=arch.text_hidden, intermediate_size=2 * arch.text_hidden,
        num_attention_heads=2, num_hidden_layers=arch.text_layers, max_position_embeddings=arch.max_length,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=arch.text_hidden))
    n = len(arch.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=spec.resolution, in_channels=3, out_channels=3, layers_per_block=arch.layers_per_block,
        block_out_channels=tuple(arch.block_out_channels), norm_num_groups=arch.norm_num_groups,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=arch.cross_attention_dim, attention_head_dim=arch.attention_head_dim)
    if arch.prediction == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=arch.num_train_timesteps, shift=1.0)
    else:
        scheduler = DDIMScheduler(num_train_timesteps=arch.num_train_timesteps, beta_schedule="linear",
                                  clip_sample=False, set_alpha_to_one=False,
                                  prediction_type=PREDICTIONS[arch.prediction])
    if arch.text_hidden != arch.cross_attention_dim:
        raise ConfigError("model.text_hidden", f"must equal cross_attention_dim ({arch.cross_attention_dim})")
    return PixelDiffusionPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


class PriorModule(StepTrainer):
    """Trains the UNet and the text encoder of a :class:`PixelDiffusionPipeline` (see the module docstring)."""

    model = None          # the train runner's single-file ``model.save``; this module saves a folder instead

    def __init__(self, arch: PriorArchitecture, spec: ViewsSpec, settings: TrainSettings):
        super().__init__()
        self.save_hyperparameters({"model": asdict(arch), "data": asdict(spec), "settings": asdict(settings)})
        self.arch, self.spec, self.settings = arch, spec, settings
        pipe = build_pipeline(arch, spec)
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.tokenizer, self.scheduler = pipe.tokenizer, pipe.scheduler
        self.views = ViewPrompts()
        self.renders = None
        if arch.prediction != "flow":
            self.register_buffer("alphas_cumprod", pipe.scheduler.alphas_cumprod.clone(), persistent=False)

    def setup(self, stage: str) -> None:
        if self.renders is None:
            self.renders = render_views(self.spec)

    def global_batch(self, step: int) -> tuple[Tensor, list[str], Tensor, Tensor]:
        """``(x0 in [-1, 1], captions, t in [0, 1], eps)`` of step ``step``, identical on every rank."""
        s, r = self.settings, self.renders
        gen = self.generator(step)
        n = s.batch_size
        shape = torch.randint(0, len(self.spec.shapes), (n,), generator=gen)
        view = torch.randint(0, self.spec.views_per_shape, (n,), generator=gen)
        color = torch.randint(0, len(self.spec.colors), (n,), generator=gen)
        drop = torch.rand(n, generator=gen) < s.cond_dropout
        t = torch.rand(n, generator=gen)
        eps = torch.randn(n, 3, self.spec.resolution, self.spec.resolution, generator=gen)
        x0 = r.images(shape, view, color) * 2 - 1
        captions = [("" if d else c) for c, d in zip(r.captions(shape, view, color, self.views), drop)]
        return x0, captions, t, eps

    def loss(self, x0: Tensor, captions: list[str], t: Tensor, eps: Tensor) -> Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.arch.max_length,
                             return_tensors="pt").input_ids.to(self.device)
        emb = self.text_encoder(ids)[0]
        view = (-1, 1, 1, 1)
        if self.arch.prediction == "flow":
            xt = (1 - t).view(view) * x0 + t.view(view) * eps
            timestep, target = t * self.arch.num_train_timesteps, eps - x0
        else:
            timestep = (t * self.arch.num_train_timesteps).long().clamp_max(self.arch.num_train_timesteps - 1)
            abar = self.alphas_cumprod[timestep].view(view)
            xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
            target = eps if self.arch.prediction == "eps" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
        pred = self.unet(xt, timestep, encoder_hidden_states=emb, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred, target)

    def configure_optimizers(self):
        s = self.settings
        return torch.optim.AdamW([*self.unet.parameters(), *self.text_encoder.parameters()], lr=s.lr,
                                 weight_decay=s.weight_decay)

    def pipeline(self) -> PixelDiffusionPipeline:
        return PixelDiffusionPipeline(unet=self.unet, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                      scheduler=self.scheduler)

    def save_outputs(self, run_dir) -> None:
        """Write ``pipeline/`` (``save_pretrained``, safetensors) atomically: a temporary folder renamed."""
        from pathlib import Path

        final, tmp = Path(run_dir) / "pipeline", Path(run_dir) / ".pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipeline().save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def export_checkpoint(ckpt: str, folder: str) -> None:
    """Write the ``pipeline/`` folder of a training checkpoint into ``folder`` (the run's ``save_outputs``)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp = state["hyper_parameters"]
    module = PriorModule(PriorArchitecture(**hp["model"]), ViewsSpec(**hp["data"]), TrainSettings(**hp["settings"]))
    module.load_state_dict(state["state_dict"])
    module.save_outputs(folder)


build_trainable = trainable_builder(PriorModule, PriorArchitecture, ViewsSpec)
