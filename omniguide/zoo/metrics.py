"""Sample metrics on the Gaussian-mixture testbed.

* ``sliced_wasserstein`` -- distance to exact samples of the true conditional: the mean over random
  unit directions of the 1-D Wasserstein-1 distance between the projected sample sets.
* ``precision``   -- share of samples within the 99% radius of a component of the asked class.
* ``coverage``    -- share of the class's components holding at least ``min_share`` of the samples
  that component should hold under the true conditional.
* ``overshoot``   -- how far samples sit past their class mode, outward from the data mean, in
  component standard deviations: ``mean((x - mu_k) . d_k) / s_k`` with ``k`` the nearest class
  component and ``d_k`` the unit vector from the data mean to ``mu_k``. 0 for the true
  conditional; the low-dimensional picture of over-saturation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian_mixture import GaussianMixture


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Mean 1-D W1 over ``projections`` random directions; ``a`` and ``b`` are ``[N, D]`` (N may differ)."""
    a, b = a.double(), b.double()
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
    n = max(len(pa), len(pb))
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    qa = pa[(q * len(pa)).long().clamp(max=len(pa) - 1)]
    qb = pb[(q * len(pb)).long().clamp(max=len(pb) - 1)]
    return float((qa - qb).abs().mean())


def chi_radius(dim: int, quantile_z: float = 2.326) -> float:
    """The radius holding ~99% of a standard normal in ``dim`` dims (Wilson-Hilferty)."""
    k = dim
    return math.sqrt(k * (1 - 2 / (9 * k) + quantile_z * math.sqrt(2 / (9 * k))) ** 3)


def _class_components(mixture: GaussianMixture, label: int) -> Tensor:
    idx = (mixture.labels == label).nonzero().flatten()
    if len(idx) == 0:
        raise ValueError(f"class {label} has no components (classes: {mixture.classes})")
    return idx


def _nearest(x: Tensor, mixture: GaussianMixture, comps: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest class component per sample (in units of its std) and that scaled distance."""
    d = torch.cdist(x.double(), mixture.means[comps]) / mixture.stds[comps].reshape(1, -1)
    dist, j = d.min(dim=1)
    return comps[j], dist


def precision(x: Tensor, mixture: GaussianMixture, label: int) -> float:
    _, dist = _nearest(x, mixture, _class_components(mixture, label))
    return float((dist <= chi_radius(mixture.dim)).double().mean())


def coverage(x: Tensor, mixture: GaussianMixture, label: int, min_share: float = 0.25) -> float:
    comps = _class_components(mixture, label)
    k, dist = _nearest(x, mixture, comps)
    inside = dist <= chi_radius(mixture.dim)
    w = mixture.weights[comps] / mixture.weights[comps].sum()
    covered = [float(((k == c) & inside).double().mean()) >= min_share * float(wc) for c, wc in zip(comps, w)]
    return sum(covered) / len(covered)


def overshoot(x: Tensor, mixture: GaussianMixture, label: int) -> float:
    x = x.double()
    k, _ = _nearest(x, mixture, _class_components(mixture, label))
    center = (mixture.weights.reshape(-1, 1) * mixture.means).sum(0)
    out = mixture.means[k] - center
    out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((((x - mixture.means[k]) * out).sum(1) / mixture.stds[k]).mean())


def all_metrics(x: Tensor, mixture: GaussianMixture, label: int, reference: Tensor) -> dict[str, float]:
    """The four metrics for samples ``x`` asked to be of class ``label``; ``reference`` are exact samples."""
    return {"swd": sliced_wasserstein(x, reference), "precision": precision(x, mixture, label),
            "coverage": coverage(x, mixture, label), "overshoot": overshoot(x, mixture, label)}
