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
from .errors import ConfigError
from .guider import REANCHOR, STEP_INDEX, GuidanceStep, Guider, check_requirements
from .model_call import ModelCall
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
) -> SampleOutput:
    """Sample with ``guider`` from standard-normal ``noise``.

    ``model(sample, timestep, **inputs)`` (or a :class:`~omniguide.core.model_call.ModelCall` for
    other conventions) returns a prediction of ``parameterization`` (default: the scheduler's).
    ``branches`` maps names (``cond``, ``uncond``, ...) to input overrides or
    :class:`~omniguide.core.branch.Branch` objects. ``callback(i, step, result, preds)`` runs after
    each step. Returns the final sample and the work done (NFE and forward passes per step)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError("num_steps", f"must be an int >= 1, got {num_steps!r}")
    check_requirements(guider, (STEP_INDEX, REANCHOR), "the sampler")
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
