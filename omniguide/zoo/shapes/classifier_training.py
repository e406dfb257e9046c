"""Training the shapes attribute classifier (``configs/train/shapes_classifier.yaml``).

Cross-entropy on the three heads, on renders degraded the way a sampler's denoised estimate is:
each image is blurred with probability 1/2 (a Gaussian of sigma in [0, 1.5] pixels) and gets
Gaussian noise of a std drawn in [0, 0.4]. Like the shapes model, every step's batch is a pure
function of ``(seed, step)``, so resumed and multi-process runs see the same data. The train runner
calls :meth:`ClassifierModule.save_outputs`, which writes ``classifier.safetensors``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..trainer import StepTrainer
from .classifier import HEADS, ShapesClassifier
from .data import ShapesData


@dataclass
class ClassifierSettings:
    """The ``model:`` section (``name: shapes-classifier``) and the recipe's optimisation keys."""

    width: int = 32
    hidden: int = 128
    max_blur: float = 1.5
    max_noise: float = 0.4
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def degrade(images: Tensor, gen: torch.Generator, max_blur: float, max_noise: float) -> Tensor:
    """Blur half of the images (separable Gaussian, per-image sigma) and add per-image noise."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=gen) * max_blur * (torch.rand(n, generator=gen) < 0.5)
    taps = torch.arange(-3, 4, dtype=images.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)                                        # [n, 7]
    x = images.permute(1, 0, 2, 3).reshape(1, 3 * n, 32, 32)
    k = kernel.repeat(3, 1)                                                               # channel-major
    x = nn.functional.conv2d(nn.functional.pad(x, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=3 * n)
    x = nn.functional.conv2d(nn.functional.pad(x, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=3 * n)
    x = x.reshape(3, n, 32, 32).permute(1, 0, 2, 3)
    std = torch.rand(n, 1, 1, 1, generator=gen) * max_noise
    return x + std * torch.randn(x.shape, generator=gen)


class ClassifierModule(StepTrainer):
    """Trains :class:`ShapesClassifier` on degraded :class:`ShapesData` renders."""

    def __init__(self, settings: ClassifierSettings | None = None, data: ShapesData | None = None):
        super().__init__()
        self.settings, self.data = settings or ClassifierSettings(), data or ShapesData()
        self.save_hyperparameters({"settings": asdict(self.settings), "data": asdict(self.data)})
        self.model = ShapesClassifier(self.settings.width, self.settings.hidden)

    def global_batch(self, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.settings
        gen = self.generator(step)
        images, _, attrs = self.data.draw(s.batch_size, gen)
        labels = {k: torch.tensor([values.index(a[k]) for a in attrs]) for k, values in HEADS.items()}
        return degrade(images, gen, s.max_blur, s.max_noise), labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = self.global_batch(self.global_step)
        rows = self.rows(len(images))
        logits = self.model(images[rows].to(self.device))
        losses = {k: nn.functional.cross_entropy(logits[k], labels[k][rows].to(self.device)) for k in HEADS}
        for k, value in losses.items():
            self.log(f"train/{k}", value, sync_dist=False)
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.settings.lr)

    def save_outputs(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/classifier.safetensors`` (float16) atomically."""
        from safetensors.torch import save_file

        from ...io import atomic_path

        final = Path(run_dir) / "classifier.safetensors"
        with atomic_path(final) as tmp:
            save_file({k: v.detach().cpu().half().contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        return final


def build_trainable(model: dict, recipe: Any, path: str = "model") -> ClassifierModule:
    """The ``train`` recipe's module for ``model: {name: shapes-classifier, width, hidden, max_blur,
    max_noise}`` with the recipe's ``batch_size``, ``lr`` and ``seed``, on ``recipe.data``."""
    from ...io.config import build_dataclass

    fields = {k: v for k, v in model.items() if k != "name"}
    settings = build_dataclass(ClassifierSettings, {**fields, "batch_size": recipe.batch_size, "lr": recipe.lr,
                                                    "seed": recipe.seed}, path)
    return ClassifierModule(settings, build_dataclass(ShapesData, recipe.data, "data", skip=()))
