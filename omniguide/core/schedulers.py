"""What the sampler needs to know about a diffusers scheduler (the only core file importing diffusers).

For step ``i`` a :class:`SchedulerView` gives the model input, the timestep, and the noise levels
of both the scheduler's *sample* and the *model input* (they differ for Euler, whose sample is
``x0 + sigma eps`` and whose model sees ``sample / sqrt(sigma^2 + 1)``). ``x0`` and ``eps`` are
the same in both spaces, which is what lets a guided ``(x0, eps)`` pair drive any scheduler.

Supported families:

* ``vp``   -- DDIMScheduler, DDPMScheduler: ``abar`` from ``alphas_cumprod[t]``;
* ``dpm``  -- DPMSolverMultistepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler: the
              scheduler's ``sigmas[i]`` through its own ``_sigma_to_alpha_sigma_t`` (VP or flow);
* ``ve``   -- EulerDiscreteScheduler, EulerAncestralDiscreteScheduler: ``sigmas[i]``, VE sample;
* ``flow`` -- FlowMatchEulerDiscreteScheduler: ``alpha = 1 - s``, ``sigma = s``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError, GuidanceError, did_you_mean
from .noise import NoiseLevel, NoiseSchedule
from .prediction import Guided, check_parameterization, from_x0_eps

FAMILIES = {
    "DDIMScheduler": "vp",
    "DDPMScheduler": "vp",
    "DPMSolverMultistepScheduler": "dpm",
    "UniPCMultistepScheduler": "dpm",
    "DEISMultistepScheduler": "dpm",
    "EulerDiscreteScheduler": "ve",
    "EulerAncestralDiscreteScheduler": "ve",
    "FlowMatchEulerDiscreteScheduler": "flow",
}


def scheduler_family(scheduler) -> str:
    """``vp``, ``dpm``, ``ve`` or ``flow`` for the diffusers scheduler classes in :data:`FAMILIES`
    (subclasses included); a one-line error listing them otherwise."""
    import diffusers

    for name, family in FAMILIES.items():
        if isinstance(scheduler, getattr(diffusers, name)):
            return family
    raise GuidanceError(
        f"scheduler {type(scheduler).__name__} is not supported by the sampler; supported: {', '.join(FAMILIES)}"
    )


def scheduler_parameterization(scheduler) -> str:
    if scheduler_family(scheduler) == "flow":
        return "flow"
    return check_parameterization(scheduler.config.prediction_type, "scheduler.config.prediction_type")


def is_flow_scheduler(scheduler) -> bool:
    """True for flow-matching schedulers, including DPM-style solvers run on flow sigmas."""
    import diffusers

    config = scheduler.config
    return (isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler) or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def stochastic_first_order() -> tuple[type, ...]:
    """diffusers' schedulers whose step samples the reverse SDE to first order (ancestral steps)."""
    import diffusers

    return (diffusers.DDPMScheduler, diffusers.EulerAncestralDiscreteScheduler)


def model_parameterization(scheduler) -> str:
    """What a model driven by ``scheduler`` predicts: ``flow`` for flow-matching schedulers, else the
    scheduler's ``prediction_type`` (diffusers' names accepted)."""
    if is_flow_scheduler(scheduler):
        return "flow"
    kind = scheduler.config.get("prediction_type")
    if kind is None:
        raise GuidanceError(f"scheduler {type(scheduler).__name__} has no prediction_type in its config")
    return check_parameterization(kind, "scheduler.config.prediction_type")


# EDM-preconditioned schedulers: class name -> how the timestep encodes the noise (c_noise)
EDM_SCHEDULERS = {"EDMEulerScheduler": "log", "EDMDPMSolverMultistepScheduler": "log",
                  "CosineDPMSolverMultistepScheduler": "atan"}


def edm_preconditioning(scheduler) -> str | None:
    """``"log"`` / ``"atan"`` for diffusers' EDM-preconditioned schedulers (see
    :meth:`NoiseSchedule.edm`), ``None`` for every other scheduler."""
    import diffusers

    for name, kind in EDM_SCHEDULERS.items():
        cls = getattr(diffusers, name, None)
        if isinstance(cls, type) and isinstance(scheduler, cls):
            return kind
    return None


def noise_schedule(scheduler) -> NoiseSchedule:
    """The training noise schedule behind a diffusers scheduler: flow for flow-matching ones, EDM for
    the EDM-preconditioned ones, else VP from its ``alphas_cumprod`` (what UNet-family models were
    trained with)."""
    if is_flow_scheduler(scheduler):
        return NoiseSchedule.flow(scheduler.config.num_train_timesteps)
    edm = edm_preconditioning(scheduler)
    if edm is not None:
        if scheduler.config.prediction_type != "v_prediction":
            raise GuidanceError(
                f"{type(scheduler).__name__} with prediction_type '{scheduler.config.prediction_type}': the EDM "
                "'epsilon' output F is -v, not the noise; only EDM v_prediction models are supported")
        return NoiseSchedule.edm(scheduler.config.sigma_data, edm)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise GuidanceError(
            f"scheduler {type(scheduler).__name__} has neither flow sigmas nor an alphas_cumprod table; its "
            "noise level cannot be read from a timestep"
        )
    return NoiseSchedule.vp(abar)


def scales_model_input(scheduler) -> bool:
    """True when the scheduler's sample is VE (``x0 + sigma eps``) and the model sees it scaled to
    unit variance (Euler-family schedulers); then the sample's noise level differs from the model input's."""
    import diffusers

    return edm_preconditioning(scheduler) is not None or isinstance(
        scheduler, (diffusers.EulerDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler,
                    diffusers.HeunDiscreteScheduler, diffusers.KDPM2DiscreteScheduler,
                    diffusers.KDPM2AncestralDiscreteScheduler, diffusers.LMSDiscreteScheduler))


def sample_unit(scheduler) -> float:
    """The scheduler's sample in units of the model's ``x0`` (``sigma_data`` for EDM schedulers,
    whose noise levels are read in units of ``x0 / sigma_data``; 1 otherwise)."""
    return float(scheduler.config.sigma_data) if edm_preconditioning(scheduler) is not None else 1.0


@dataclass
class StepPoint:
    model_input: Tensor
    timestep: Tensor
    model_noise: NoiseLevel   # noise level of model_input
    sample_noise: NoiseLevel  # noise level of the scheduler's sample


class SchedulerView:
    """A diffusers scheduler set to ``num_steps``, read through one interface."""

    def __init__(self, scheduler, num_steps: int, device: torch.device | str | None = None):
        self.scheduler = scheduler
        self.family = scheduler_family(scheduler)
        self.parameterization = scheduler_parameterization(scheduler)
        scheduler.set_timesteps(num_steps, device=device)
        self.timesteps = scheduler.timesteps
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self._step_kwargs = set(inspect.signature(scheduler.step).parameters)
        if len(self.timesteps) != num_steps:
            raise GuidanceError(
                f"{type(scheduler).__name__} made {len(self.timesteps)} timesteps for {num_steps} steps "
                "(higher-order schedulers that evaluate the model twice per step are not supported)"
            )
        last = int(self.timesteps.max()) if self.family == "vp" and len(self.timesteps) else 0
        if last >= self.num_train_timesteps:   # DDIM's steps_offset=1 at num_steps = num_train_timesteps
            raise ConfigError("num_steps", f"{num_steps} steps of {type(scheduler).__name__} reach timestep {last}, "
                              f"past its last training timestep {self.num_train_timesteps - 1}; use fewer steps")

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))

    def point(self, sample: Tensor, i: int) -> StepPoint:
        timestep = self.timesteps[i]
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        if self.family == "vp":
            abar = self.scheduler.alphas_cumprod[int(timestep)].to(dtype)
            noise = NoiseLevel.vp(abar, t=torch.as_tensor(float(timestep) / self.num_train_timesteps, dtype=dtype))
            return StepPoint(sample, timestep, noise, noise)
        s = self.scheduler.sigmas[i].to(dtype)
        if self.family == "flow":
            noise = NoiseLevel.flow(s)
            return StepPoint(sample, timestep, noise, noise)
        t = torch.as_tensor(float(timestep) / self.num_train_timesteps, dtype=dtype)
        if self.family == "dpm":
            alpha, sigma = self.scheduler._sigma_to_alpha_sigma_t(s)
            model_time = s if self.scheduler.config.get("use_flow_sigmas") else t
            noise = NoiseLevel(alpha.to(dtype), sigma.to(dtype), model_time)
            return StepPoint(sample, timestep, noise, noise)
        # ve: the sample is x0 + s eps; the model sees it scaled to unit variance
        model_input = self.scheduler.scale_model_input(sample, timestep)
        scale = (s * s + 1).rsqrt()
        return StepPoint(model_input, timestep, NoiseLevel(scale, s * scale, t), NoiseLevel.edm(s, t))

    def step(self, result: Guided, point: StepPoint, sample: Tensor, generator=None) -> Tensor:
        """Advance one step from a guided ``(x0, eps)`` pair.

        For an inconsistent pair (CFG++) the sample is re-anchored to ``alpha x0 + sigma eps`` in
        the scheduler's sample space, so first-order solvers give
        ``x_next = alpha_next x0 + sigma_next eps`` exactly."""
        output = from_x0_eps(result.x0, result.eps, self.parameterization, point.model_noise)
        if not result.consistent:
            sample = point.sample_noise.alpha * result.x0 + point.sample_noise.sigma * result.eps
        kwargs = {"return_dict": False}
        if generator is not None and "generator" in self._step_kwargs:
            kwargs["generator"] = generator
        return self.scheduler.step(output.to(sample.dtype), point.timestep, sample, **kwargs)[0]


# -- schedulers by name (recipes) ---------------------------------------------------------------
# short name -> (diffusers class name, config defaults)
BY_NAME = {
    # Stable Diffusion's DDIM config (its scheduler_config.json, which the pipelines load): timesteps
    # 1 + k (1000 // N), and the last step lands on alphas_cumprod[0] rather than alpha = 1, so sampling
    # ends at sigma ~ 0.01 (linear betas), not at x0; kept so that `ddim` steps as those pipelines do.
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}),
}
SCHEDULER_NAMES = tuple(BY_NAME)
# ComfyUI's sampler names for the same solvers: alias -> (short name, config it implies)
ALIASES = {
    "euler_ancestral": ("euler-ancestral", {}),
    "dpmpp_2m": ("dpm++", {}),
    "uni_pc": ("unipc", {"solver_type": "bh1"}),
    "uni_pc_bh2": ("unipc", {"solver_type": "bh2"}),
}


def resolve_scheduler_name(name: str, path: str = "scheduler") -> tuple[str, dict]:
    """``(short name, implied config)`` for a short name or one of ComfyUI's names (:data:`ALIASES`)."""
    if name in ALIASES:
        return ALIASES[name][0], dict(ALIASES[name][1])
    if name not in BY_NAME:
        raise ConfigError(path, f"unknown scheduler '{name}'{did_you_mean(name, [*BY_NAME, *ALIASES])}")
    return name, {}


def build_scheduler(name: str, path: str = "scheduler", **overrides):
    """A diffusers scheduler by short name (``ddim``, ``euler``, ``dpm++``, ``deis``, ``flow-euler`` ...;
    ComfyUI's ``euler_ancestral``, ``dpmpp_2m``, ``uni_pc`` also work).

    Defaults suit data that is not in [-1, 1] (no sample clipping); ``overrides`` go to the config."""
    import diffusers

    short, implied = resolve_scheduler_name(name, path)
    cls_name, defaults = BY_NAME[short]
    try:
        return getattr(diffusers, cls_name)(**{**defaults, **implied, **overrides})
    except TypeError as err:
        raise ConfigError(path, str(err)) from None


def swap_scheduler(current, name: str, path: str = "scheduler", **overrides):
    """A scheduler by short name (as :func:`build_scheduler`) on ``current``'s training noise schedule
    (its betas, ``num_train_timesteps`` and ``prediction_type`` carry over); ``overrides`` win."""
    import diffusers

    short, implied = resolve_scheduler_name(name, path)
    cls = getattr(diffusers, BY_NAME[short][0])
    try:
        return cls.from_config(current.config, **{**implied, **overrides})
    except TypeError as err:
        raise ConfigError(path, str(err)) from None
