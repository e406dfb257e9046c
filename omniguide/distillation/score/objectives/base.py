"""What every score-distillation objective shares.

Each objective turns branch predictions of the guidance core into a per-pixel gradient ``g`` on
the prior's sample ``x`` (rendered, then VAE-encoded for latent priors); the scene receives
``g . dx/dtheta`` through the target loss

    loss = 0.5 * || x - sg(x - g) ||^2 / B        (sum over pixels, mean over the batch)

whose gradient is exactly ``g / B``. Its value (``0.5 ||g||^2 / B``) is not an objective value
and is never logged as one: the trainer logs ``grad_norm`` and each objective's own terms.

Shared options:

* ``t_min``, ``t_max`` -- the timestep range as fractions of the training timesteps, each a
  number or an :class:`~omniguide.distillation.schedules.Anneal` over training progress;
  ``t_sampling``: ``uniform`` in the range, or ``logit-normal`` (``sigmoid(N(0, 1))`` mapped into it);
* ``weighting`` ``w(t)``: ``sigma2`` (``1 - abar = sigma^2``, DreamFusion), ``sigma/alpha``
  (ISM, ASD on Gaussians), ``uniform``;
* ``grad_clip``: element-wise clamp of ``g`` (threestudio's ``grad_clip``; may be annealed);
* ``scale``: a multiplier of ``g`` (threestudio's ``lambda_*``), applied after the clamp, as in
  threestudio (the guidance clamps its gradient, the system weights the loss): ``scale clamp(g, +-c)``;
* ``space``: the parameterization the difference is formed in. ``None`` means ``eps`` for
  diffusion priors and ``flow`` for rectified-flow priors: ``g = w (v_guided - v_baseline)``
  with the injected noise's baseline ``v = n - x``. Both are exact conversions of the model's
  prediction at the same sample, and differ by the factor ``eps - eps' = (1 - t)(v - v')``.

The guided prediction comes from any registered guider through the core: the branches it asks
for run through :class:`~omniguide.core.branch.BranchExecutor` and ``guider.combine`` mixes
them, at a :class:`~omniguide.core.guider.GuidanceStep` with ``index=None`` and the training
``progress``. Guiders that need a sampler step index (state, ``step`` schedules) or a sampler
re-anchor (CFG++) are refused before training starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ....core.branch import Branch, BranchExecutor
from ....core.errors import ConfigError, GuidanceError
from ....core.guider import GuidanceStep, Guider
from ....core.noise import NoiseLevel
from ....core.prediction import Guided, Prediction, check_parameterization
from ....core.sampler import evaluate_guider
from ...priors import Prior
from ...schedules import Annealed, at

WEIGHTINGS = ("sigma2", "sigma/alpha", "uniform")
T_SAMPLING = ("uniform", "logit-normal")


class DivergenceError(GuidanceError):
    """A non-finite gradient: the run stops, naming the step and the term."""


GRADIENT = "the gradient"


class Watch:
    """Where each term first went non-finite, kept on the device: :meth:`see` folds a step's terms
    in without a host sync (a ``bool()`` per step stalls a GPU); :meth:`check` reads them (one sync),
    on the steps the trainer chooses, and raises naming the first step and term."""

    def __init__(self, objective: str):
        self.objective = objective
        self.first: dict[str, Tensor] = {}    # name -> the step it first went non-finite, -1 if never

    def see(self, step: int, values: Mapping[str, Tensor]) -> None:
        for name, value in values.items():
            if not isinstance(value, Tensor):
                continue
            first = self.first.get(name)
            if first is None:
                first = torch.full((), -1, dtype=torch.long, device=value.device)
            bad = ~torch.isfinite(value).all()
            self.first[name] = torch.where(bad & (first < 0), step, first)

    def check(self) -> None:
        if not self.first:
            return
        steps = torch.stack([v.cpu() for v in self.first.values()]).tolist()
        bad = [(s, name == GRADIENT, i, name) for i, (name, s) in enumerate(zip(self.first, steps)) if s >= 0]
        if not bad:
            return
        step, _, _, name = min(bad)       # the first step; its terms before the gradient
        where = f"objective '{self.objective}' at step {step}"
        if name == GRADIENT:
            raise DivergenceError(f"{where}: the gradient is non-finite")
        raise DivergenceError(f"{where}: term '{name}' is non-finite "
                              "(the run stops; the last checkpoint is the last good state)")


@dataclass
class Draws:
    """Random draws of one training step: made for the *global* batch with the step's generator,
    then sliced to this rank's rows -- so DDP ranks draw different samples and together draw
    exactly what one process would."""

    generator: torch.Generator
    rows: slice = field(default_factory=lambda: slice(None))
    global_size: int | None = None

    def rand(self, n: int) -> Tensor:
        return torch.rand(self.global_size or n, generator=self.generator, dtype=torch.float64)[self.rows]

    def randn(self, like: Tensor) -> Tensor:
        n = self.global_size or like.shape[0]
        out = torch.randn(n, *like.shape[1:], generator=self.generator)[self.rows]
        return out.to(device=like.device, dtype=like.dtype)


@dataclass
class Context:
    """One objective evaluation: the prior, the guider, the sample ``x`` (differentiable), the
    per-sample inputs of every named prompt branch (``cond``, ``uncond``, ``negative``,
    ``view:front`` ...), the step's draws, training progress and an optional trainable estimator."""

    prior: Prior
    guider: Guider
    x: Tensor
    inputs: Mapping[str, Mapping[str, Any]]
    draws: Draws
    progress: float = 0.0
    step: int = 0
    estimator: Any = None
    executor: BranchExecutor | None = None
    watch: Watch | None = None        # None: non-finite terms raise at once (a host sync)

    def __post_init__(self):
        if self.executor is None:
            self.executor = BranchExecutor(self.prior.call, None, self.prior.parameterization,
                                           noise_of=self.prior.noise_of)


@dataclass
class Output:
    """The target loss (backward it), the gradient ``g``, and what to log: ``values`` as 0-d
    device tensors (no host sync), ``logs`` the same as floats (reading them syncs)."""

    loss: Tensor
    grad: Tensor
    values: dict[str, Tensor]
    estimator_loss: Tensor | None = None

    @property
    def logs(self) -> dict[str, float]:
        return dict(zip(self.values, torch.stack([v.detach().float().cpu() for v in self.values.values()]).tolist()))


def norm(v: Tensor) -> Tensor:
    """Mean over the batch of per-sample L2 norms."""
    return v.detach().flatten(1).norm(dim=1).mean()


@dataclass
class Objective:
    """Base class of the objectives (see the module docstring)."""

    name: ClassVar[str] = ""
    needs_flow: ClassVar[bool] = False

    t_min: Annealed = 0.02
    t_max: Annealed = 0.98
    t_sampling: str = "uniform"
    weighting: str = "sigma2"
    grad_clip: Annealed | None = None
    scale: float = 1.0
    space: str | None = None
    _terms: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ConfigError("weighting", f"unknown weighting '{self.weighting}'; valid: {', '.join(WEIGHTINGS)}")
        if self.t_sampling not in T_SAMPLING:
            raise ConfigError("t_sampling", f"unknown t_sampling '{self.t_sampling}'; valid: {', '.join(T_SAMPLING)}")
        if self.space is not None:
            self.space = check_parameterization(self.space, "objective.space")
        for p in (0.0, 1.0):
            lo, hi = at(self.t_min, p), at(self.t_max, p)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ConfigError("t_min", f"the timestep range [{lo}, {hi}] at progress {p} must lie in [0, 1]")

    # -- what an objective needs ---------------------------------------------------------------
    def prompt_sets(self, prompt: str) -> dict[str, str]:
        """Extra prompts beyond ``cond`` (the view prompts) and ``uncond`` (the negative or ""),
        by branch name: NFSD's ``negative``, SDS-bridge's ``source`` ..."""
        return {}

    def check_prior(self, prior: Prior, path: str = "objective") -> None:
        if self.needs_flow and not prior.is_flow:
            raise ConfigError(f"{path}.name", f"'{self.name}' needs a rectified-flow prior; {prior.name} "
                              f"predicts '{prior.parameterization}'")

    def gradient(self, ctx: Context) -> Tensor:
        """The per-pixel gradient ``g`` (subclasses; runs without autograd); record named terms
        with :meth:`term`."""
        raise NotImplementedError

    # -- shared pieces -------------------------------------------------------------------------
    def term(self, name: str, value: Tensor) -> Tensor:
        """Record a named term (its norm is logged; a non-finite one stops the run by name)."""
        self._terms[name] = value
        return value

    def sample_timesteps(self, ctx: Context, n: int) -> Tensor:
        """``[n]`` training timesteps (integers for diffusion priors, continuous for flow priors)."""
        lo, hi = at(self.t_min, ctx.progress), at(self.t_max, ctx.progress)
        u = ctx.draws.rand(n)
        if self.t_sampling == "logit-normal":
            u = torch.sigmoid(torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)))
        t = (lo + (hi - lo) * u) * ctx.prior.num_train_timesteps
        if not ctx.prior.is_flow:
            t = t.round().clamp(0, ctx.prior.num_train_timesteps - 1)
        return t.to(torch.float32)

    def weight(self, noise: NoiseLevel) -> Tensor:
        if self.weighting == "sigma2":
            return noise.sigma ** 2
        if self.weighting == "sigma/alpha":
            return noise.sigma / noise.alpha
        return torch.ones_like(noise.sigma)

    def space_for(self, prior: Prior) -> str:
        return self.space or ("flow" if prior.is_flow else "eps")

    def noisy(self, ctx: Context, t: Tensor) -> tuple[Tensor, Tensor, NoiseLevel]:
        """``(x_t, eps, noise)``: the detached sample noised to ``t`` with fresh noise."""
        x = ctx.x.detach()
        noise = ctx.prior.noise_like(t, x)
        eps = ctx.draws.randn(x)
        return noise.alpha * x + noise.sigma * eps, eps, noise

    def step_at(self, ctx: Context, x_t: Tensor, noise: NoiseLevel, t: Tensor) -> GuidanceStep:
        return GuidanceStep(x_t, noise, t.to(x_t.device), None, None, ctx.prior.axes, ctx.progress)

    def table(self, ctx: Context, cond: str = "cond") -> dict[str, Branch]:
        """The branch table: every named prompt set, ``cond`` taken from ``cond``, and the guider's own branches."""
        out = {name: Branch(name, dict(inputs)) for name, inputs in ctx.inputs.items()}
        out["cond"] = Branch("cond", dict(ctx.inputs[cond]))
        for name, branch in ctx.guider.branch_defaults().items():
            out.setdefault(name, branch)
        return out

    def predict(self, ctx: Context, names: tuple[str, ...], x_t: Tensor, t: Tensor, step: GuidanceStep,
                cond: str = "cond", extra: Mapping[str, Branch] | None = None) -> dict[str, Prediction]:
        """Run the named branches through the core's executor."""
        return ctx.executor(names, x_t, t.to(x_t.device), step, branches={**self.table(ctx, cond), **(extra or {})})

    def guided(self, ctx: Context, x_t: Tensor, t: Tensor, step: GuidanceStep, cond: str = "cond",
               also: tuple[str, ...] = (), extra: Mapping[str, Branch] | None = None
               ) -> tuple[Guided, dict[str, Prediction]]:
        """The guider's prediction at ``x_t`` (``cond`` names the prompt set used as the conditional
        branch), plus the predictions of the branches in ``also`` from the same executor call: the
        core's guided step (:func:`~omniguide.core.sampler.evaluate_guider`)."""
        table = {**self.table(ctx, cond), **(extra or {})}
        preds, result = evaluate_guider(ctx.guider, ctx.executor, x_t, t.to(x_t.device), step, branches=table,
                                        also=also)
        return result, preds

    def __call__(self, ctx: Context) -> Output:
        """The gradient, its finiteness watch, clamp then scale (threestudio's order), the target loss
        and the logs, all without a host sync when ``ctx.watch`` is given."""
        self._terms = {}
        with torch.no_grad():
            g = self.gradient(ctx)
            clip = None if self.grad_clip is None else at(self.grad_clip, ctx.progress)
            if clip is not None:
                g = g.clamp(-clip, clip)
            g = g * self.scale
        watch = ctx.watch if ctx.watch is not None else Watch(self.name)
        watch.see(ctx.step, {**self._terms, GRADIENT: g})
        if ctx.watch is None:
            watch.check()
        x = ctx.x
        loss = 0.5 * torch.nn.functional.mse_loss(x, (x - g).detach(), reduction="sum") / x.shape[0]
        values = {"grad_norm": norm(g)}
        for name, value in self._terms.items():
            per_sample = value.ndim == 0 or value.numel() == value.shape[0]
            values[name] = value.detach().float().mean() if per_sample else norm(value)
        estimator_loss = self.estimator_loss(ctx, values)
        return Output(loss, g, values, estimator_loss)

    def estimator_loss(self, ctx: Context, logs: dict[str, Tensor]) -> Tensor | None:
        """The trainable estimator's own loss (VSD, ASD); None for objectives without one."""
        return None
