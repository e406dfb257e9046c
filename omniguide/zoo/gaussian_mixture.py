"""An analytic, labelled Gaussian mixture: exact conditional and unconditional denoisers at every
noise level, so every guidance method can be measured against the truth.

Data: ``x0 ~ sum_k pi_k N(mu_k, s_k^2 I)`` with each component ``k`` carrying a class label
``y_k``. Under ``x_t = alpha x0 + sigma eps`` component ``k`` has marginal
``N(alpha mu_k, v_k I)``, ``v_k = alpha^2 s_k^2 + sigma^2``, and

    E[x0 | x_t, k] = mu_k + (alpha s_k^2 / v_k) (x_t - alpha mu_k)
    E[x0 | x_t]    = sum_k r_k(x_t) E[x0 | x_t, k],   r_k ∝ pi_k N(x_t; alpha mu_k, v_k I)

restricted to the components of class ``y`` for the conditional model. ``eps`` follows from
``x0`` exactly. Computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.noise import NoiseLevel

UNCOND = -1  # the label of the unconditional branch (the "null" condition)


@dataclass
class GaussianMixture:
    """``means [K, D]``, ``stds [K]``, ``weights [K]`` (normalised), ``labels [K]`` (class per component)."""

    means: Tensor
    stds: Tensor
    weights: Tensor
    labels: Tensor

    def __post_init__(self):
        self.means = self.means.double()
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64).expand(self.means.shape[0]).clone()
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def classes(self) -> list[int]:
        return sorted(set(self.labels.tolist()))

    @staticmethod
    def ring(dim: int = 2, classes: int = 3, per_class: int = 2, radius: float = 3.0, std: float = 0.35,
             seed: int = 0) -> GaussianMixture:
        """Components on a circle in the first two dims (random small offsets in the others),
        classes interleaved around it so that the unconditional mixture mixes every class."""
        gen = torch.Generator().manual_seed(seed)
        k = classes * per_class
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
        if dim > 2:
            means[:, 2:] = torch.randn(k, dim - 2, generator=gen, dtype=torch.float64)
        labels = torch.arange(k) % classes
        weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
        return GaussianMixture(means, torch.full((k,), std, dtype=torch.float64), weights, labels)

    # -- exact posterior quantities --------------------------------------------------------------
    def _mask(self, label: Tensor) -> Tensor:
        """[B, K] True where component k is allowed for the sample's label (all for UNCOND)."""
        label = label.reshape(-1, 1)
        return (label == UNCOND) | (self.labels.reshape(1, -1) == label)

    def x0(self, x: Tensor, noise: NoiseLevel, label: Tensor | int = UNCOND) -> Tensor:
        """``E[x0 | x_t (, y)]`` for ``x [B, D]``; ``noise`` broadcastable to ``[B, 1]``."""
        dtype = x.dtype
        x = x.double()
        b = x.shape[0]
        a = noise.alpha.double().reshape(-1, 1) if noise.alpha.ndim else noise.alpha.double().reshape(1, 1)
        s = noise.sigma.double().reshape(-1, 1) if noise.sigma.ndim else noise.sigma.double().reshape(1, 1)
        a, s = a.expand(b, 1), s.expand(b, 1)
        label = torch.as_tensor(label, device=x.device).expand(b)
        var = a * a * self.stds.pow(2).reshape(1, -1) + s * s                           # [B, K]
        diff = x.unsqueeze(1) - a.unsqueeze(1) * self.means.unsqueeze(0)                  # [B, K, D]
        logp = (self.weights.log().reshape(1, -1) - 0.5 * diff.pow(2).sum(-1) / var
                - 0.5 * self.dim * var.log())
        logp = logp.masked_fill(~self._mask(label), float("-inf"))
        r = torch.softmax(logp, dim=1)                                                     # [B, K]
        gain = (a * self.stds.pow(2).reshape(1, -1) / var).unsqueeze(-1)                   # [B, K, 1]
        post = self.means.unsqueeze(0) + gain * diff
        return (r.unsqueeze(-1) * post).sum(1).to(dtype)

    def eps(self, x: Tensor, noise: NoiseLevel, label: Tensor | int = UNCOND) -> Tensor:
        x0 = self.x0(x, noise, label).double()
        a, s = noise.alpha.double(), noise.sigma.double()
        if a.ndim:
            a, s = a.reshape(-1, 1), s.reshape(-1, 1)
        return ((x.double() - a * x0) / s).to(x.dtype)

    def sample(self, n: int, label: int = UNCOND, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of ``p(x0)`` or ``p(x0 | y)``."""
        w = self.weights.clone()
        if label != UNCOND:
            w = w * (self.labels == label)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k].unsqueeze(1) * z


@dataclass
class MixtureSpec:
    """The arguments of :meth:`GaussianMixture.ring`, as a config section (recipes, training data)."""

    dim: int = 2
    classes: int = 3
    per_class: int = 2
    radius: float = 3.0
    std: float = 0.35
    seed: int = 0

    def mixture(self) -> GaussianMixture:
        """The mixture these arguments describe."""
        return GaussianMixture.ring(self.dim, self.classes, self.per_class, self.radius, self.std, self.seed)


class MixtureDenoiser:
    """The mixture as a model: ``model(sample, timestep, labels=...)`` like a trained network.

    ``path="vp"`` reads ``alphas_cumprod`` (continuous timesteps interpolate the EDM sigma, as
    diffusers' Euler does); ``path="flow"`` reads ``t = timestep / num_train_timesteps``. ``labels``
    holds a class per sample, ``-1`` for the unconditional (null) condition, so conditional and
    unconditional branches batch into one call like real embeddings do."""

    def __init__(self, mixture: GaussianMixture, path: str = "vp", parameterization: str = "eps",
                 alphas_cumprod: Tensor | None = None, num_train_timesteps: int = 1000):
        from ..core.prediction import check_parameterization

        self.mixture = mixture
        self.path = path
        self.parameterization = check_parameterization(parameterization)
        self.num_train_timesteps = num_train_timesteps
        if path == "vp":
            if alphas_cumprod is None:
                raise ValueError("path='vp' needs alphas_cumprod (the scheduler's)")
            self.edm_sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
        elif path != "flow":
            raise ValueError(f"unknown path '{path}'; valid: vp, flow")
        self.calls = 0

    def noise_level(self, timestep, batch: int) -> NoiseLevel:
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        if self.path == "flow":
            return NoiseLevel.flow(t / self.num_train_timesteps)
        grid = torch.arange(len(self.edm_sigmas), dtype=torch.float64)
        idx = t.clamp(0, len(grid) - 1)
        lo = idx.floor().long()
        hi = (lo + 1).clamp(max=len(grid) - 1)
        frac = idx - lo
        sigma = self.edm_sigmas[lo] * (1 - frac) + self.edm_sigmas[hi] * frac
        alpha = (sigma * sigma + 1).rsqrt()
        return NoiseLevel(alpha, sigma * alpha, t / self.num_train_timesteps)

    def __call__(self, sample: Tensor, timestep, labels: Tensor | int = UNCOND) -> Tensor:
        from ..core.prediction import from_x0_eps

        self.calls += 1
        noise = self.noise_level(timestep, sample.shape[0])
        x0 = self.mixture.x0(sample, noise, labels).double()
        a, s = noise.alpha.reshape(-1, 1), noise.sigma.reshape(-1, 1)
        eps = (sample.double() - a * x0) / s
        return from_x0_eps(x0, eps, self.parameterization, NoiseLevel(a, s)).to(sample.dtype)


def label_branches(labels: Tensor, weak_model=None, classes: int | None = None) -> dict:
    """The testbed's branch table: ``cond`` asks for ``labels``, ``uncond`` for the null label,
    ``prior`` is the unconditional branch of the same (exact) model (prior guidance's base model) and,
    with a weak model, ``weak`` is the conditional inputs on that model (autoguidance); with the number
    of ``classes``, ``negative`` asks for the next class (Perp-Neg's negative). A branch only runs when
    a guider asks for it."""
    from ..core.branch import Branch

    table = {"cond": {"labels": labels}, "uncond": {"labels": torch.full_like(labels, UNCOND)},
             "prior": Branch("prior", base="uncond")}
    if weak_model is not None:
        table["weak"] = Branch("weak", base="cond", model=weak_model)
    if classes is not None:
        table["negative"] = {"labels": (labels + 1) % classes}
    return table


def denoiser_for(mixture: GaussianMixture, scheduler, parameterization: str | None = None) -> MixtureDenoiser:
    """The mixture as a model trained for ``scheduler``'s path (flow for flow matching, else VP)."""
    from ..core.schedulers import scheduler_family, scheduler_parameterization

    kind = parameterization or scheduler_parameterization(scheduler)
    if scheduler_family(scheduler) == "flow":
        return MixtureDenoiser(mixture, "flow", kind, num_train_timesteps=scheduler.config.num_train_timesteps)
    return MixtureDenoiser(mixture, "vp", kind, scheduler.alphas_cumprod, scheduler.config.num_train_timesteps)
