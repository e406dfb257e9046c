"""A tiny trainable denoiser for the Gaussian-mixture testbed, and its LightningModule.

``SmallDenoiser(sample, timestep, labels=...)`` predicts ``eps`` like
:class:`~omniguide.zoo.gaussian_mixture.MixtureDenoiser` does, with a learned null class
(label ``-1``) for classifier-free guidance: labels are dropped to null with probability
``cond_dropout`` during training. A briefly trained one is a natural "weak model" for autoguidance.

Training data is a pure function of ``(seed, global step)`` (:mod:`omniguide.zoo.trainer`): each
step draws a fresh global batch from the mixture, so resumed and multi-rank runs see the same data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .gaussian_mixture import UNCOND, MixtureSpec
from .trainer import StepTrainer, TrainSettings, trainable_builder


@dataclass
class SmallDenoiserConfig:
    """Architecture of :class:`SmallDenoiser`."""

    dim: int = 2
    num_classes: int = 3
    hidden: int = 128
    depth: int = 3
    time_features: int = 32
    num_train_timesteps: int = 1000


class SmallDenoiser(nn.Module):
    """An MLP ``eps``-predictor conditioned on a (continuous) timestep and a class label."""

    parameterization = "eps"

    def __init__(self, config: SmallDenoiserConfig | None = None):
        super().__init__()
        self.config = config or SmallDenoiserConfig()
        c = self.config
        self.label_embedding = nn.Embedding(c.num_classes + 1, c.hidden)   # last row: the null class
        layers: list[nn.Module] = [nn.Linear(c.dim + c.time_features, c.hidden)]
        for _ in range(c.depth - 1):
            layers += [nn.SiLU(), nn.Linear(c.hidden, c.hidden)]
        self.body = nn.ModuleList(layers)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.dim))

    def time_embedding(self, timestep: Tensor, batch: int, device) -> Tensor:
        """Sinusoidal features of the (continuous) training timestep, ``[batch, time_features]``."""
        t = torch.as_tensor(timestep, dtype=torch.float32, device=device).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        half = self.config.time_features // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
        angles = t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, sample: Tensor, timestep, labels: Tensor | int = UNCOND) -> Tensor:
        """``eps`` prediction for ``sample [B, dim]`` at ``timestep`` (scalar or ``[B]``)."""
        b = sample.shape[0]
        dtype = sample.dtype
        x = sample.float()
        labels = torch.as_tensor(labels, device=x.device, dtype=torch.long).reshape(-1).expand(b)
        labels = torch.where(labels < 0, torch.full_like(labels, self.config.num_classes), labels)
        h = self.body[0](torch.cat([x, self.time_embedding(timestep, b, x.device)], dim=1))
        h = h + self.label_embedding(labels)
        for layer in self.body[1:]:
            h = layer(h)
        return self.out(h).to(dtype)

    def save(self, path: str | Path) -> None:
        """Weights as safetensors, with the architecture in the file's metadata."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"config": json.dumps(asdict(self.config))})

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> SmallDenoiser:
        """A model saved by :meth:`save`."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            config = SmallDenoiserConfig(**json.loads(f.metadata()["config"]))
        model = SmallDenoiser(config)
        model.load_state_dict(load_file(str(path), device=str(device)))
        return model.to(device).eval()


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> Tensor:
    """The ``linear`` beta schedule of diffusers' DDPM/DDIM schedulers (their defaults)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


class DenoiserModule(StepTrainer):
    """Trains a :class:`SmallDenoiser` with the eps-MSE loss on samples of a Gaussian mixture."""

    def __init__(self, model: SmallDenoiserConfig, data: MixtureSpec, settings: TrainSettings):
        super().__init__()
        self.save_hyperparameters({"model": asdict(model), "data": asdict(data),
                                   "settings": asdict(settings)})
        self.model = SmallDenoiser(model)
        self.spec, self.settings = data, settings
        self.mixture = data.mixture()
        abar = linear_alphas_cumprod(model.num_train_timesteps)
        self.register_buffer("alphas_cumprod", abar, persistent=False)

    def forward(self, sample: Tensor, timestep, labels: Tensor | int = UNCOND) -> Tensor:
        """The wrapped model's ``eps`` prediction."""
        return self.model(sample, timestep, labels)

    def global_batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_t, t, labels, eps)`` of step ``step``: identical on every rank and every rerun."""
        s = self.settings
        gen = self.generator(step)
        gm, n = self.mixture, s.batch_size
        k = torch.multinomial(gm.weights, n, replacement=True, generator=gen)
        z = torch.randn(n, gm.dim, generator=gen, dtype=torch.float64)
        x0 = gm.means[k] + gm.stds[k].unsqueeze(1) * z
        labels = gm.labels[k].clone()
        labels[torch.rand(n, generator=gen) < s.cond_dropout] = UNCOND
        t = torch.randint(0, self.model.config.num_train_timesteps, (n,), generator=gen)
        eps = torch.randn(n, gm.dim, generator=gen)
        abar = self.alphas_cumprod.cpu()[t].unsqueeze(1)
        xt = abar.sqrt() * x0.float() + (1 - abar).sqrt() * eps
        return xt, t, labels, eps

    def loss(self, xt: Tensor, t: Tensor, labels: Tensor, eps: Tensor) -> Tensor:
        """eps-MSE."""
        return torch.nn.functional.mse_loss(self.model(xt, t, labels), eps)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        s = self.settings
        return torch.optim.Adam(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


build_trainable = trainable_builder(DenoiserModule, SmallDenoiserConfig, MixtureSpec)   # data: the mixture ring
