"""Feynman-Kac correctors with sequential Monte Carlo resampling (FKC; Skreta et al. 2025,
"Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of Experts", arXiv:2503.02819;
reference martaskrt/fkc-diffusion ``applications/images/edm2/generate_images.py``).

The particles (the batch, or groups of ``particles`` consecutive samples sharing a condition) follow the
reverse SDE with the target's score; importance weights account for what the SDE gets wrong about the
target's marginals, and particles are resampled when the weights degenerate. Targets are geometric
mixtures of the branches' densities, ``log pi = sum_i a_i log p_i`` with ``sum_i a_i = 1``:

* tempered (CFG): ``{cond: gamma, uncond: 1 - gamma}`` (``gamma`` alone is a shortcut);
* product of experts / composition: ``{cond: 1, cond2: 1, uncond: -1}``, i.e. ``p(x|c1) p(x|c2) / p(x)``;
* annealed ``p(x|c)^beta``: ``{cond: beta, flat: 1 - beta}`` with ``flat`` a branch predicting zero noise
  (:func:`flat_prior`) and listed in ``flat``.

With ``eps_i`` the branches' noise predictions at step ``i`` and ``sigma~ = sigma / alpha`` (the EDM level),
the log-weight increment over the step ``i -> i+1`` is (the reference's ``-gamma (gamma - 1) ||s_u -
s_c||^2 t dt`` for EDM, generalised)

    d log w = (sigma~_i^2 - sigma~_{i+1}^2) / (2 sigma~_i^2) * ( ||sum_i a_i eps_i||^2 - sum_i a_i ||eps_i||^2 )

(for the tempered target: ``gamma (gamma - 1) ||eps_c - eps_u||^2`` times the same factor). After the
last step the particles are resampled once more by the weights they carry (so no weight is lost when
the threshold did not trigger), and no new increment is added there (as the reference). An annealed
target starts from the un-annealed prior, so its initial weights are ``exp(-(A - 1) ||x_T||^2 / 2)``
(``A`` = the total weight of non-flat branches; exact as ``alpha_T -> 0`` for unit-variance VP
latents). After each step except the last, when the effective sample size ``ESS = (sum w)^2 / sum w^2``
of a group falls below ``threshold * n`` the group is resampled (systematic resampling) and its weights
reset. An ESS below ``collapse * n`` is warned with the step.

The sampler must follow the target's score (the guider's guided noise must equal ``sum_i a_i eps_i``:
``CFG(scale=gamma)`` for the tempered target; checked at every step) with a stochastic first-order
scheduler (DDPM, Euler ancestral), and the guider must keep no state between steps (resampling
reorders the particles). ``seed`` seeds the resampling. ``clamp = c`` applies the reference code's
stabiliser: each step's increments are centred and clipped to ``[-c, c]`` (it uses 1 with its SDE
sampler, 2 with Heun); the default ``None`` keeps the exact weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..branch import Branch
from ..errors import ConfigError, GuidanceError
from ..schedulers import stochastic_first_order
from .base import Corrector, register_corrector


def flat_prior(name: str = "flat") -> Branch:
    """A branch whose noise prediction is zero: the improper flat density, the second expert of an
    annealed target ``p^beta = p^beta * 1^(1 - beta)``."""
    return Branch(name, model=lambda sample, timestep, **_: torch.zeros_like(sample), parameterization="eps")


def systematic_resample(weights: Tensor, generator: torch.Generator) -> Tensor:
    """Indices drawn by systematic resampling from normalised ``weights [n]``."""
    n = weights.shape[0]
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    cdf = weights.double().cumsum(0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=n - 1)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``(sum w)^2 / sum w^2`` of ``exp(log_weights)`` along the last axis."""
    w = torch.softmax(log_weights.double(), dim=-1)
    return 1.0 / (w * w).sum(-1)


@register_corrector("fkc")
@dataclass
class FKC(Corrector):
    """Feynman-Kac importance weights and SMC resampling for geometric-mixture targets (arXiv:2503.02819)."""

    gamma: float | None = 2.0
    weights: Mapping[str, float] | None = None
    flat: tuple[str, ...] = ()
    particles: int | None = None
    threshold: float = 0.5
    collapse: float = 0.05
    clamp: float | None = None
    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, repr=False, compare=False,
                                         metadata={"config": False})

    def __post_init__(self):
        if self.weights is None:
            if self.gamma is None:
                raise ConfigError("gamma", "give gamma (tempered target) or weights {branch: a_i}")
            self.weights = {"cond": float(self.gamma), "uncond": 1.0 - float(self.gamma)}
        else:
            self.weights = {str(k): float(v) for k, v in dict(self.weights).items()}
        total = sum(self.weights.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError("weights", f"the target's weights must sum to 1 (got {total:g}); for p^beta add a flat "
                                         "branch with weight 1 - beta")
        unknown = [name for name in self.flat if name not in self.weights]
        if unknown:
            raise ConfigError("flat", f"'{unknown[0]}' is not a branch of the target ({', '.join(self.weights)})")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError("threshold", f"a share of the particles in [0, 1], got {self.threshold}")
        if self.particles is not None and int(self.particles) < 2:
            raise ConfigError("particles", f"needs at least 2 particles per group, got {self.particles}")
        self.flat = tuple(self.flat)
        self._log_w: Tensor | None = None
        self._ess: list[float] = []
        self._resampled: list[int] = []

    def check(self, guider, view) -> None:
        if guider.stateful:
            raise GuidanceError(f"fkc: guider '{guider.name or type(guider).__name__}' keeps state between steps, "
                                "which resampling the particles would scramble; use a stateless guider")
        stochastic = stochastic_first_order()
        if not isinstance(view.scheduler, stochastic):
            raise GuidanceError(f"fkc: the particles must follow the reverse SDE; {type(view.scheduler).__name__} is "
                                f"not a stochastic first-order sampler (use one of "
                                f"{', '.join(c.__name__ for c in stochastic)})")

    def groups(self, n: int) -> int:
        size = n if self.particles is None else int(self.particles)
        if n % size:
            raise GuidanceError(f"fkc: a batch of {n} does not split into groups of {size} particles")
        return n // size

    def reset(self, x: Tensor) -> None:
        self.generator.manual_seed(int(self.seed))
        self._ess, self._resampled = [], []
        n = x.shape[0]
        groups = self.groups(n)
        data = sum(a for name, a in self.weights.items() if name not in self.flat)
        flat_x = x.double().reshape(n, -1)
        log_w = -(data - 1.0) * 0.5 * (flat_x * flat_x).sum(1) if self.flat else torch.zeros(n, dtype=torch.float64)
        self._log_w = log_w.reshape(groups, -1).to(x.device)

    def active(self) -> dict[str, float]:
        """The target's branches with a non-zero weight (a tempered target at gamma = 1 is p(x|c) alone)."""
        return {k: a for k, a in self.weights.items() if a != 0.0}

    def target_eps(self, preds, where: str) -> dict[str, Tensor]:
        """The noise predictions of the target's branches; one the guider did not ask for is an error."""
        missing = [k for k in self.active() if k not in preds]
        if missing:
            raise GuidanceError(f"fkc: branch '{missing[0]}' of the target was not evaluated at {where} (the guider "
                                f"asked for {', '.join(preds)})")
        return {k: preds[k].eps for k in self.active()}

    def increment(self, preds, here, there) -> Tensor:
        """``d log w`` per sample over a step from EDM level ``here`` to ``there`` (see the module docstring)."""
        eps = {k: v.double() for k, v in self.target_eps(preds, "this step").items()}
        weights = self.active()
        n = next(iter(eps.values())).shape[0]
        mixed = sum(a * eps[k] for k, a in weights.items())
        sq = lambda v: (v * v).reshape(n, -1).sum(1)  # noqa: E731
        gap = sq(mixed) - sum(a * sq(eps[k]) for k, a in weights.items())
        factor = ((here ** 2 - there ** 2) / (2 * here ** 2)).double().reshape(-1)
        return factor * gap

    def check_guided(self, preds, result, i: int) -> None:
        eps = self.target_eps(preds, f"step {i}")
        mixed = sum(a * eps[k] for k, a in self.active().items())
        if not torch.allclose(result.eps, mixed.to(result.eps.dtype), rtol=1e-4, atol=1e-5):
            raise GuidanceError(f"fkc: at step {i} the guider's guided noise is not the target's sum_i a_i eps_i "
                                f"({self.weights}); for the tempered target use CFG(scale=gamma)")

    def after_step(self, i, x_next, point, step, preds, result, view, executor, generator) -> Tensor:
        self.check_guided(preds, result, i)
        size = self._log_w.shape[1]
        if i + 1 >= step.num_steps:   # the last step: the particles carry their weights into one final resampling
            ess = effective_sample_size(self._log_w)
            return self.resample(x_next, ess < size * (1 - 1e-9), i)
        here = point.model_noise.sigma_edm.to(torch.float64)
        there = view.point(x_next, i + 1).model_noise.sigma_edm.to(torch.float64)
        step_w = self.increment(preds, here, there).to(self._log_w.device).reshape(self._log_w.shape)
        if self.clamp is not None:
            step_w = (step_w - step_w.mean(dim=1, keepdim=True)).clamp(-float(self.clamp), float(self.clamp))
        self._log_w = self._log_w + step_w
        ess = effective_sample_size(self._log_w)
        self._ess.append(float(ess.min()) / size)
        if float(ess.min()) < max(float(self.collapse) * size, 1.0 + 1e-9):
            warnings.warn(f"fkc: the effective sample size collapsed to {float(ess.min()):.2f} of {size} particles at "
                          f"step {i}; use more particles, a smaller gamma or more steps", stacklevel=2)
        return self.resample(x_next, ess < float(self.threshold) * size, i)

    def resample(self, x_next: Tensor, resample: Tensor, i: int) -> Tensor:
        """Systematic resampling of the groups flagged in ``resample``; their weights are reset."""
        n = x_next.shape[0]
        order = torch.arange(n, device=x_next.device).reshape(self._log_w.shape)
        if bool(resample.any()):
            self._resampled.append(i)
            for g in resample.nonzero().flatten().tolist():
                w = torch.softmax(self._log_w[g], dim=0).cpu()
                order[g] = order[g][systematic_resample(w, self.generator).to(order.device)]
                self._log_w[g] = 0.0
            x_next = x_next[order.reshape(-1)]
        return x_next

    def report(self) -> dict:
        size = None if self._log_w is None else int(self._log_w.shape[1])
        return {"fkc": {"particles": size, "threshold": float(self.threshold), "weights": dict(self.weights),
                        "ess_fraction_per_step": list(self._ess), "resampled_steps": list(self._resampled)}}
