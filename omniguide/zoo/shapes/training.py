"""Training the shapes model: UNet and text encoder jointly, MSE on eps (or v), with caption dropout
for CFG.

Like every zoo trainer (:mod:`omniguide.zoo.trainer`), the data is a pure function of
``(seed, global step)``: each step draws a fresh global batch of images, captions, timesteps and
noise. An exponential moving average of the weights lives in the module (so checkpoints carry
it) and is what gets saved.

At the end of training the train runner calls :meth:`ShapesModule.save_outputs`, which writes the
``save_pretrained`` folder ``pipeline/`` into the run folder.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..trainer import StepTrainer, TrainSettings, trainable_builder
from .components import ShapesModel, build_scheduler, build_text_encoder, build_tokenizer, build_unet
from .data import ShapesData
from .pipeline import ShapesPipeline


class ShapesModule(StepTrainer):
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
        gen = self.generator(step)
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

    def loss(self, xt: Tensor, t: Tensor, ids: Tensor, target: Tensor) -> Tensor:
        """MSE to the target (eps or v)."""
        return nn.functional.mse_loss(self(xt, t, ids), target)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.update_ema(self.ema, self.model, self.arch.ema_decay)

    def configure_optimizers(self) -> dict:
        """AdamW with linear warm-up, then cosine decay to 0.1 x lr at ``trainer.max_steps``."""
        return self.adamw_warmup_cosine(self.model.parameters(), self.arch.warmup_steps)

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


build_trainable = trainable_builder(ShapesModule, ShapesModel, ShapesData)
