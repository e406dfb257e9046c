"""Training the shapes model: UNet and text encoder jointly, MSE on eps (or v), with caption dropout
for CFG.

Like :mod:`omniguide.zoo.small_denoiser`, the data is a pure function of ``(seed, global step)``:
each step draws a fresh global batch of images, captions, timesteps and noise from its own
generator, and each rank keeps rows ``rank::world``. A resumed run therefore sees exactly the
batches an uninterrupted one sees, and DDP sees the same union as one process. An exponential
moving average of the weights lives in the module (so checkpoints carry it) and is what gets saved.

At the end of training the train runner calls :meth:`ShapesModule.save_outputs`, which writes the
``save_pretrained`` folder ``pipeline/`` into the run folder.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor, nn

from ...core.errors import ConfigError
from .components import ShapesModel, build_scheduler, build_text_encoder, build_tokenizer, build_unet
from .data import ShapesData
from .pipeline import ShapesPipeline


@dataclass
class TrainSettings:
    """Optimisation settings shared with the recipe's top level."""

    batch_size: int = 64          # global batch (split over ranks)
    lr: float = 5e-4
    weight_decay: float = 0.0
    cond_dropout: float = 0.1     # probability of replacing a caption by "" (the CFG null condition)
    seed: int = 0


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of step numbers: the real batch is drawn in ``training_step``."""

    def __iter__(self):
        i = 0
        while True:
            yield i
            i += 1


class ShapesModule(lightning.LightningModule):
    """Trains ``model.unet`` and ``model.text_encoder`` of a :class:`ShapesPipeline` on
    :class:`ShapesData`; ``ema`` holds the moving average of both."""

    def __init__(self, model: ShapesModel | None = None, data: ShapesData | None = None,
                 settings: TrainSettings | None = None):
        super().__init__()
        self.arch, self.data, self.settings = model or ShapesModel(), data or ShapesData(), settings or TrainSettings()
        self.save_hyperparameters({"model": asdict(self.arch), "data": asdict(self.data),
                                   "settings": asdict(self.settings)})
        self.tokenizer = build_tokenizer()
        self.model = nn.ModuleDict({"unet": build_unet(self.arch),
                                    "text_encoder": build_text_encoder(self.arch, len(self.tokenizer))})
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if self.arch.ema_decay > 0 else None
        self.noise_scheduler = build_scheduler(self.arch.prediction_type)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)

    def global_batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_t, t, token ids, target)`` of step ``step``: identical on every rank and every rerun.
        The target is ``eps``, or ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` for v-prediction."""
        s = self.settings
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        x0, captions, _ = self.data.draw(s.batch_size, gen)
        dropped = (torch.rand(s.batch_size, generator=gen) < s.cond_dropout).tolist()
        captions = ["" if d else c for c, d in zip(captions, dropped)]
        t = torch.randint(0, len(self.alphas_cumprod), (s.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        abar = self.alphas_cumprod.cpu()[t].view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        target = abar.sqrt() * eps - (1 - abar).sqrt() * x0 if self.arch.prediction_type == "v_prediction" else eps
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return xt, t, ids, target

    def forward(self, xt: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        """The trained weights' prediction (eps or v) for noisy images ``xt`` and caption token ids."""
        text = self.model["text_encoder"](ids)[0]
        return self.model["unet"](xt, t, encoder_hidden_states=text, return_dict=False)[0]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """MSE to the target on this rank's rows of the step's global batch (``batch`` is only a step number)."""
        xt, t, ids, target = self.global_batch(self.global_step)
        world = self.trainer.world_size
        if xt.shape[0] % world:
            raise ConfigError("batch_size", f"{xt.shape[0]} is not divisible by the {world} processes")
        rows = slice(self.global_rank, None, world)
        xt, t, ids, target = (v[rows].to(self.device) for v in (xt, t, ids, target))
        loss = nn.functional.mse_loss(self(xt, t, ids), target)
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA update, with the usual warm-up ``min(decay, (1 + n) / (10 + n))``."""
        if self.ema is None:
            return
        n = self.global_step
        decay = min(self.arch.ema_decay, (1 + n) / (10 + n))
        for avg, p in zip(self.ema.parameters(), self.model.parameters()):
            avg.lerp_(p.detach(), 1 - decay)
        for avg, b in zip(self.ema.buffers(), self.model.buffers()):
            avg.copy_(b)

    def configure_optimizers(self) -> dict:
        """AdamW with linear warm-up, then cosine decay to 0.1 x lr at ``trainer.max_steps``."""
        s, warmup = self.settings, self.arch.warmup_steps
        total = max(self.trainer.max_steps, warmup + 1)
        opt = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """An endless stream of step numbers (the data is drawn in ``training_step``)."""
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)

    def pipeline(self, ema: bool = True) -> ShapesPipeline:
        """A :class:`ShapesPipeline` holding copies of the EMA (or the raw) weights, in eval mode."""
        source = self.ema if ema and self.ema is not None else self.model
        parts = copy.deepcopy(source).cpu().eval()
        scheduler = build_scheduler(self.arch.prediction_type)
        return ShapesPipeline(parts["unet"], parts["text_encoder"], self.tokenizer, scheduler)

    def save_outputs(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/pipeline/`` (``save_pretrained``; float16 when ``fp16_weights``) through
        a temporary folder and a rename, so a killed run leaves the complete folder or none."""
        pipe = self.pipeline()
        if self.arch.fp16_weights:
            pipe.to(torch.float16)
        final = Path(run_dir) / "pipeline"
        tmp = Path(tempfile.mkdtemp(prefix=".pipeline.tmp", dir=run_dir))
        try:
            pipe.save_pretrained(tmp, safe_serialization=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def build_trainable(model: dict, recipe: Any, path: str = "model") -> ShapesModule:
    """The ``train`` recipe's module for ``model: {name: shapes, ...}`` (:class:`ShapesModel` keys)
    on ``recipe.data`` (:class:`ShapesData` keys)."""
    from ...io.config import build_dataclass

    return ShapesModule(
        build_dataclass(ShapesModel, model, path),
        build_dataclass(ShapesData, recipe.data, "data", skip=()),
        TrainSettings(recipe.batch_size, recipe.lr, recipe.weight_decay, recipe.cond_dropout, recipe.seed),
    )
