"""What the zoo's trainers share: the recipe's optimisation settings, the endless stream of step
numbers, and a LightningModule base whose data is a pure function of ``(seed, global step)``.

Each step draws a fresh global batch from its own generator (:meth:`StepTrainer.generator`) and
each rank keeps rows ``rank::world`` (:meth:`StepTrainer.rows`). A resumed run therefore sees
exactly the batches an uninterrupted one sees, and DDP sees the same union as one process. A
trainer defines ``global_batch(step)`` and ``loss(*rows of it)``; the base runs the step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import lightning
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..io.config import build_dataclass


@dataclass
class TrainSettings:
    """The ``train`` recipe's optimisation keys (its top level; the same defaults)."""

    batch_size: int = 256         # global batch (split over ranks)
    lr: float = 1e-3
    weight_decay: float = 0.0
    cond_dropout: float = 0.1     # probability of the null condition (for CFG)
    seed: int = 0

    @classmethod
    def from_recipe(cls, recipe: Any) -> TrainSettings:
        """The settings a ``train`` recipe gives (its ``batch_size``, ``lr``, ``weight_decay``,
        ``cond_dropout``, ``seed``); the other fields of a subclass keep their defaults."""
        return cls(recipe.batch_size, recipe.lr, recipe.weight_decay, recipe.cond_dropout, recipe.seed)


class Steps(torch.utils.data.IterableDataset):
    """An endless stream of step numbers: the real batch is drawn in ``training_step``."""

    def __iter__(self):
        return itertools.count()


class StepTrainer(lightning.LightningModule):
    """A LightningModule with ``settings`` (a :class:`TrainSettings`) whose batch of step ``k`` is
    ``global_batch(k)``: a tuple of tensors (or lists) with the global batch on the first axis."""

    settings: TrainSettings

    def generator(self, step: int) -> torch.Generator:
        """The generator of step ``step``'s global batch: seeded by ``(seed, step)`` alone."""
        return torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)

    def rows(self, n: int) -> slice:
        """This rank's rows ``rank::world`` of a global batch of ``n``."""
        world = self.trainer.world_size
        if n % world:
            raise ConfigError("batch_size", f"{n} is not divisible by the {world} processes")
        return slice(self.global_rank, None, world)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """``loss`` on this rank's rows of the step's global batch (``batch`` is only a step number)."""
        parts = self.global_batch(self.global_step)
        rows = self.rows(len(parts[0]))
        loss = self.loss(*(p[rows].to(self.device) if isinstance(p, Tensor) else p[rows] for p in parts))
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The last logged loss, which a run resumed at its last step (no step of its own) reports."""
        loss = self.trainer.callback_metrics.get("train/loss")
        checkpoint["final_loss"] = float(loss) if loss is not None else None

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """An endless stream of step numbers (the data is drawn in ``training_step``)."""
        return torch.utils.data.DataLoader(Steps(), batch_size=None)

    @torch.no_grad()
    def update_ema(self, ema: nn.Module, model: nn.Module, decay: float) -> None:
        """``ema <- d ema + (1 - d) model`` with the usual warm-up ``d = min(decay, (1 + n) / (10 + n))``
        at global step ``n``; buffers are copied."""
        n = self.global_step
        d = min(decay, (1 + n) / (10 + n))
        for avg, p in zip(ema.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1 - d)
        for avg, b in zip(ema.buffers(), model.buffers()):
            avg.copy_(b)

    def adamw_warmup_cosine(self, params: Iterable[nn.Parameter], warmup: int, decay_from: float = 0.0) -> dict:
        """AdamW (``lr``, ``weight_decay`` of the settings) with a linear warm-up over ``warmup`` steps,
        constant up to ``decay_from`` x ``trainer.max_steps``, then a cosine down to 0.1 x lr at
        ``max_steps``: ``0.1 + 0.45 (1 + cos(pi progress))``."""
        opt = torch.optim.AdamW(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        total = max(self.trainer.max_steps, 1)
        start = max(warmup, int(decay_from * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, max(0, step - start) / max(1, total - start))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainable_builder(module: type, arch: type, data: type, settings: type = TrainSettings) -> Callable:
    """The ``train`` recipe's ``build_trainable(model, recipe, path)`` for ``module(arch, data, settings)``:
    the ``model:`` section as ``arch`` keys, ``recipe.data`` as ``data`` keys, and the recipe's
    optimisation keys as ``settings``."""
    def build_trainable(model: dict, recipe: Any, path: str = "model") -> StepTrainer:
        return module(build_dataclass(arch, model, path), build_dataclass(data, recipe.data, "data", skip=()),
                      settings.from_recipe(recipe))
    return build_trainable
