"""The sampler loop: a diffusers scheduler driven by a guider through the branch executor.

    for i, t in enumerate(timesteps):
        step   = GuidanceStep(x, noise(i), t, i, N, axes)
        preds  = executor(guider.branches(step), x, t, step)     # only what this step needs
        result = guider.combine(preds, step)                     # Guided (x0, eps)
        x      = scheduler.step(result in the scheduler's parameterization)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .axes import Axes, as_axes
from .branch import BranchExecutor, BranchTable
from .guider import GuidanceStep, Guider
from .prediction import Guided, check_parameterization
from .schedulers import SchedulerView


@dataclass
class SampleOutput:
    sample: Tensor
    nfe: int
    forward_passes: int
    nfe_per_step: list[int] = field(default_factory=list)
    passes_per_step: list[int] = field(default_factory=list)


StepCallback = Callable[[int, GuidanceStep, Guided, Mapping[str, Any]], None]


def sample(
    model: Callable,
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
) -> SampleOutput:
    """Sample with ``guider`` from standard-normal ``noise``.

    ``model(sample, timestep, **inputs)`` returns a prediction of ``parameterization`` (default:
    the scheduler's). ``branches`` maps names (``cond``, ``uncond``, ...) to input overrides or
    :class:`~omniguide.core.branch.Branch` objects. ``callback(i, step, result, preds)`` runs after
    each step. Returns the final sample and the work done (NFE and forward passes per step)."""
    view = SchedulerView(scheduler, num_steps, device=noise.device)
    kind = check_parameterization(parameterization or view.parameterization)
    executor = BranchExecutor(model, branches, kind, batch=batch)
    executor.with_defaults(guider.branch_defaults())
    axes = as_axes(axes)
    guider.reset()
    x = noise * view.init_noise_sigma
    for i in tqdm(range(num_steps), disable=not progress, desc="sampling", leave=False):
        point = view.point(x, i)
        step = GuidanceStep(point.model_input, point.model_noise.to(x), point.timestep, i, num_steps, axes)
        preds = executor(guider.branches(step), point.model_input, point.timestep, step)
        result = guider.combine(preds, step)
        x = view.step(result, point, x, generator)
        if callback is not None:
            callback(i, step, result, preds)
    return SampleOutput(x, executor.nfe, executor.forward_passes, executor.nfe_per_step, executor.passes_per_step)
