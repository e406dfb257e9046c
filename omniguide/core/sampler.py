"""The sampler loop: a diffusers scheduler driven by a guider through the branch executor.

    for i, t in enumerate(timesteps):
        step   = GuidanceStep(x, noise(i), t, i, N, axes)
        preds  = executor(guider.branches(step), x, t, step)     # only what this step needs
        preds += executor(guider.follow_up(preds, step))         # a second round, when a method has one
        result = guider.combine(preds, step)                     # Guided (x0, eps)
        x      = scheduler.step(result in the scheduler's parameterization)
        x      = corrector.after_step(...)                       # optional: Langevin, SMC resampling

``guider.recurrence > 1`` repeats each step with re-noising in between (Universal Guidance's
self-recurrence); a guider that requires ``gradient`` sees a sample that carries autograd.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .axes import Axes, as_axes
from .branch import BranchExecutor, BranchTable
from .errors import ConfigError, GuidanceError
from .guider import (
    FOLLOW_UP,
    GRADIENT,
    NOISE_LEVEL,
    REANCHOR,
    RECURRENCE,
    SAMPLE,
    STEP_INDEX,
    GuidanceStep,
    Guider,
    check_requirements,
)
from .model_call import ModelCall
from .prediction import Guided, Prediction, check_parameterization
from .schedulers import SchedulerView, StepPoint


@dataclass
class SampleOutput:
    sample: Tensor
    nfe: int
    forward_passes: int
    nfe_per_step: list[int] = field(default_factory=list)
    passes_per_step: list[int] = field(default_factory=list)
    report: dict = field(default_factory=dict)


StepCallback = Callable[[int, GuidanceStep, Guided, Mapping[str, Any]], None]


def evaluate_guider(
    guider: Guider, executor: BranchExecutor, sample: Tensor, timestep: Any, step: GuidanceStep,
    accumulate: bool = False, branches: BranchTable | None = None, model: Callable | ModelCall | None = None,
    also: Sequence[str] = (),
) -> tuple[dict[str, Prediction], Guided]:
    """The guided step, written once for every driver: the branches the guider asks for (and ``also``,
    in the same executor call), its follow-up round (counted in the same step), and the combine;
    ``branches`` / ``model`` hold for this step (see :class:`~omniguide.core.branch.BranchExecutor`).
    With a ``gradient`` requirement the sample carries autograd through the model call and the
    combine; the result is detached."""
    grad = GRADIENT in guider.requires()
    if grad:
        sample = sample.detach().requires_grad_(True)
        step = dataclasses.replace(step, x=sample)
    with torch.enable_grad() if grad else contextlib.nullcontext():
        names = tuple(dict.fromkeys((*guider.branches(step), *also)))
        preds = executor(names, sample, timestep, step, accumulate=accumulate, branches=branches, model=model)
        extra = guider.follow_up(preds, step)
        if extra:
            table = {**(branches or {}), **extra}
            preds = {**preds, **executor(list(extra), sample, timestep, step, True, table, model)}
        result = guider.combine(preds, step)
    if grad:
        result = Guided(result.x0.detach(), result.eps.detach(), result.x.detach(), result.noise, result.consistent)
        preds = {k: Prediction(p.value.detach(), p.kind, p.x.detach(), p.noise) for k, p in preds.items()}
    return preds, result


def step_at(view: SchedulerView, x: Tensor, i: int, axes: Axes | None) -> tuple[StepPoint, GuidanceStep]:
    """The scheduler's point at step ``i`` for sample ``x`` and the step a guider reads there."""
    point = view.point(x, i)
    return point, GuidanceStep(point.model_input, point.model_noise.to(x), point.timestep, i, len(view.timesteps), axes)


def renoise(x: Tensor, frm, to, generator: torch.Generator | None = None) -> Tensor:
    """Forward-noise ``x`` from the (less noisy) level ``frm`` back to ``to``:
    ``x_to = (a_to / a_frm) x + sqrt(s_to^2 - (a_to / a_frm)^2 s_frm^2) z`` (Universal Guidance's
    self-recurrence re-noising, for any ``x = alpha x0 + sigma eps`` path)."""
    ratio = to.alpha / frm.alpha
    var = (to.sigma ** 2 - (ratio * frm.sigma) ** 2).clamp_min(0)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device if generator is None else "cpu")
    return ratio * x + var.sqrt() * z.to(x.device)


def sample(
    model: Callable | ModelCall,
    scheduler,
    guider: Guider,
    noise: Tensor,
    branches: BranchTable | None = None,
    num_steps: int = 30,
    parameterization: str | None = None,
    axes: Axes | str | tuple | None = None,
    batch: bool = True,
    callback: StepCallback | None = None,
    progress: bool = True,
    generator: torch.Generator | None = None,
    corrector=None,
) -> SampleOutput:
    """Sample with ``guider`` from standard-normal ``noise``.

    ``model(sample, timestep, **inputs)`` (or a :class:`~omniguide.core.model_call.ModelCall` for
    other conventions) returns a prediction of ``parameterization`` (default: the scheduler's).
    ``branches`` maps names (``cond``, ``uncond``, ...) to input overrides or
    :class:`~omniguide.core.branch.Branch` objects. ``callback(i, step, result, preds)`` runs after
    each step. ``corrector`` (:mod:`omniguide.core.correctors`: ``PCG``, ``FKC``) acts after every
    scheduler step. Returns the final sample, the work done (NFE and forward passes per step) and
    ``report`` (what the guider and the corrector decided: chosen scales, effective sample sizes)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError("num_steps", f"must be an int >= 1, got {num_steps!r}")
    check_requirements(guider, (STEP_INDEX, REANCHOR, GRADIENT, FOLLOW_UP, RECURRENCE, SAMPLE, NOISE_LEVEL),
                       "the sampler")
    view = SchedulerView(scheduler, num_steps, device=noise.device)
    kind = check_parameterization(parameterization or view.parameterization)
    executor = BranchExecutor(model, branches, kind, batch=batch, defaults=guider.branch_defaults())
    axes = as_axes(axes)
    recurrence = int(guider.recurrence)
    if recurrence > 1 and view.family != "vp":
        raise GuidanceError(f"guider '{guider.name}': recurrence={recurrence} re-runs a step, which needs a stateless "
                            f"scheduler (DDIM, DDPM); {type(scheduler).__name__} counts its own steps")
    if corrector is not None:
        corrector.check(guider, view)
    guider.reset()
    x = noise * view.init_noise_sigma
    if corrector is not None:
        corrector.reset(noise)
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling", leave=False):
        for r in range(recurrence):
            point, step = step_at(view, x, i, axes)
            preds, result = evaluate_guider(guider, executor, point.model_input, point.timestep, step, accumulate=r > 0)
            x_next = view.step(result, point, x, generator)
            if r < recurrence - 1 and i < num_steps - 1:
                x = renoise(x_next, view.point(x_next, i + 1).sample_noise.to(x), point.sample_noise.to(x), generator)
            else:
                break
        if corrector is not None:
            x_next = corrector.after_step(i, x_next, point, step, preds, result, view, executor, generator)
        x = x_next
        if callback is not None:
            callback(i, step, result, preds)
    report = dict(guider.report())
    if corrector is not None:
        report.update(corrector.report())
    return SampleOutput(x, executor.nfe, executor.forward_passes, executor.nfe_per_step, executor.passes_per_step,
                        report)
