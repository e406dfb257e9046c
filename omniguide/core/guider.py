"""The guider protocol and the per-step context every guider reads.

A guider does two things at each step:

* ``branches(step)`` -- the names of the branches (model evaluations) it needs *at this step*, so a
  step outside the guidance interval, a neutral scale or an adaptive skip costs one forward pass;
* ``combine(preds, step)`` -- a :class:`~omniguide.core.prediction.Guided` result from the
  predictions of those branches.

State (APG momentum, adaptive skipping, caches) lives on the guider, is created lazily and is
cleared by ``reset()``, which the sampler calls at the start of every run. Score distillation
queries random noise levels with no step index, so stateful guiders refuse to run there
(``step.index is None``) unless they say otherwise.

What a guider needs from whoever drives it is declared by ``requires()`` and checked *before*
sampling or distillation starts (:func:`check_requirements`):

* ``step-index`` -- a sampler step index (state between steps, the ``step`` coordinate);
* ``reanchor``   -- a sampler that steps from an inconsistent ``(x0, eps)`` pair (CFG++);
* ``gradient``   -- autograd kept on the sample through the model call (scorer guidance);
* ``follow-up``  -- a driver that runs the guider's follow-up branches in the same step (SAG, GFCG);
* ``recurrence`` -- a driver that can repeat a step with re-noising (scorer guidance's self-recurrence);
* ``progress``   -- a training-progress coordinate in ``[0, 1]`` (score distillation provides it;
  samplers do not): a scale scheduled over ``progress`` anneals over training;
* ``sample``     -- a real noisy sample ``x_t`` at its noise level, which the guider reads itself
  (residual CFG rebuilds a noise from it); samplers, the pipeline adapter and score distillation
  provide one, MusicGen's logits processor does not;
* ``noise-level`` -- a noise level ``(alpha, sigma)`` for the step: the ``sigma`` coordinate, a
  re-anchored or re-noised sample. Logits have none (``step.noise is None``): there every prediction
  is its own value in every parameterization (see :mod:`.prediction`) and ``t = 1 - step``.

What a method needs whatever its settings is declared on its class, ``needs = {need: why}``: the
driver requirements above that always hold (CFG++ re-anchors), and what it needs of the model or of
its user (:mod:`omniguide.core.needs`): a module kind to perturb, a second model, a scorer or a
classifier, video history, several conditions. ``requires()`` includes the declared driver
requirements; the registry answers "which guiders need X" from the declarations, so no list of
such guiders is typed out.

Three optional hooks, all with neutral defaults, serve methods that are not a single combine:

* ``follow_up(preds, step) -> {name: Branch}`` -- branches built from this step's predictions and
  run in the same step (SAG's degraded sample, GFCG's reference label); counted in the same step;
* ``recurrence`` -- how many times the sampler repeats each step, re-noising in between
  (Universal Guidance's self-recurrence); 1 by default;
* ``report()`` -- what the guider chose during the run (a scale schedule), returned with the samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import Field, asdict, dataclass, fields, is_dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .axes import Axes
from .errors import GuidanceError
from .needs import CLASSIFIER, SCORER
from .noise import NoiseLevel
from .prediction import Guided, Prediction
from .scale import SCALES, DynamicScale, ScaleSchedule, check_scales

STEP_INDEX = "step-index"
REANCHOR = "reanchor"
GRADIENT = "gradient"
FOLLOW_UP = "follow-up"
RECURRENCE = "recurrence"
PROGRESS = "progress"
SAMPLE = "sample"
NOISE_LEVEL = "noise-level"
REQUIREMENTS = {
    STEP_INDEX: "a sampler step index",
    REANCHOR: "a sampler that re-anchors the sample to the guided (x0, eps) pair",
    GRADIENT: "autograd on the sample through the model call",
    FOLLOW_UP: "a driver that runs follow-up branches within the step",
    RECURRENCE: "a sampler that repeats a step with re-noising",
    PROGRESS: "a training-progress coordinate",
    SAMPLE: "a noisy sample x_t at its noise level",
    NOISE_LEVEL: "a noise level (alpha, sigma) for the sample",
}


@dataclass
class GuidanceStep:
    """What a guider may read at one model evaluation.

    ``x`` and ``noise`` describe the sample the model sees (``noise`` is None where there is no
    noise level: logits); ``index`` / ``num_steps`` exist only
    inside a sampler loop; ``axes`` are the sample's declared reduction and frequency axes;
    ``progress`` (training progress in ``[0, 1]``) exists only in score distillation;
    ``embeddings`` names the model inputs that carry the prompt embeddings when the driver knows
    them (the pipeline adapter: its family's), for methods that replace the condition (ICG)."""

    x: Tensor
    noise: NoiseLevel | None
    timestep: Any = None
    index: int | None = None
    num_steps: int | None = None
    axes: Axes | None = None
    progress: float | None = None
    embeddings: tuple[str, ...] | None = None

    def coordinate(self, name: str) -> Tensor:
        """``sigma``, ``t`` or ``step`` at this evaluation (see :mod:`omniguide.core.noise`), or
        ``progress`` (training progress in [0, 1], score distillation only)."""
        if name == PROGRESS:
            if self.progress is None:
                raise GuidanceError(f"the 'progress' coordinate exists only in score distillation, not at {self.where}")
            return torch.as_tensor(float(self.progress), dtype=self.noise.sigma.dtype)
        if self.noise is not None:
            return self.noise.coordinate(name, self.index, self.num_steps)
        if name not in ("t", "step") or self.index is None or not self.num_steps:  # readers of sigma declare it
            raise GuidanceError(f"'{name}' does not exist at {self.where}: it has no noise level (logits)")
        at = self.index / max(self.num_steps - 1, 1)   # without a noise level t runs over the steps: 1 at the first
        return torch.as_tensor(1 - at if name == "t" else at, dtype=self.x.dtype, device=self.x.device)

    def require_axes(self, who: str, own: Axes | None = None) -> Axes:
        axes = own if own is not None else self.axes
        if axes is None:
            raise GuidanceError(
                f"{who}: no axes declared for a sample of shape {tuple(self.x.shape)}; pass axes= to the "
                f"guider or the sampler (e.g. 'BCHW', 'BCT', 'BCFHW')"
            )
        axes.check(self.x, who)
        return axes

    @property
    def where(self) -> str:
        return f"step {self.index}" if self.index is not None else "a distillation query"


class Guider:
    """Base class. Subclasses are dataclasses whose fields are their configuration.

    Class attributes:
      ``stateful`` -- True when ``combine`` reads or writes state between steps;
      ``needs`` -- ``{need: why}`` for what every instance needs (:data:`REQUIREMENTS`, :mod:`.needs`).
    ``neutral`` (a property) is the scale at which the method returns its fallback branch.
    """

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    needs: ClassVar[Mapping[str, str]] = {}   # {need: why} whatever the settings (module docstring)

    def __post_init__(self) -> None:
        check_scales(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A guider's own ``__post_init__`` ends with :func:`~.scale.check_scales` too: every scale field
        given in Python is checked as a recipe's is, once for all guiders."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:
            def __post_init__(self, *args: Any) -> None:
                own(self, *args)
                check_scales(self)
            cls.__post_init__ = __post_init__

    @property
    def neutral(self) -> float:
        """The scale at which this method returns its fallback prediction."""
        return 1.0

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        raise NotImplementedError

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        raise NotImplementedError

    def wrapped(self) -> list[Guider]:
        """The guiders among this one's fields (what a wrapper wraps); the hooks below ask them."""
        values = (getattr(self, f.name) for f in (fields(self) if is_dataclass(self) else ()))
        return [value for value in values if isinstance(value, Guider)]

    def reset(self) -> None:
        """Forget state from a previous run. Wrappers reset what they wrap."""
        for guider in self.wrapped():
            guider.reset()

    def requires(self) -> dict[str, str]:
        """``{requirement: why}`` for what this guider needs from its driver (see the module docstring):
        its own needs, those of the guiders it wraps, and ``step`` coordinates in its scale schedules."""
        needs = {k: why for k, why in self.needs.items() if k in REQUIREMENTS}
        if self.stateful:
            needs[STEP_INDEX] = f"{self.name or type(self).__name__} keeps state between sampler steps"
        for f in fields(self) if is_dataclass(self) else ():
            value = getattr(self, f.name)
            if isinstance(value, Guider):
                needs = {**value.requires(), **needs}
            elif isinstance(value, DynamicScale) and value.reads_step:
                needs.setdefault(STEP_INDEX, f"{f.name} is scheduled over the 'step' coordinate")
            elif isinstance(value, DynamicScale) and value.reads_noise:
                needs.setdefault(NOISE_LEVEL, f"{f.name} is scheduled over the 'sigma' coordinate")
            elif isinstance(value, ScaleSchedule) and value.coordinate == PROGRESS:
                needs.setdefault(PROGRESS, f"{f.name} is scheduled over training 'progress'")
        return needs

    def branch_defaults(self) -> dict:
        """Branches this method defines itself (e.g. PAG's perturbed branch), as ``{name: Branch}``.
        User-supplied branches of the same name take precedence."""
        return {name: branch for guider in self.wrapped() for name, branch in guider.branch_defaults().items()}

    @property
    def fallback(self) -> str:
        """The branch returned when guidance is off (a step outside an interval)."""
        return "cond"

    def follow_up(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> dict:
        """Branches to run in this step after ``preds`` (``{name: Branch}``; none by default).
        Wrappers ask the guider they wrap."""
        return {name: branch for guider in self.wrapped() for name, branch in guider.follow_up(preds, step).items()}

    @property
    def recurrence(self) -> int:
        """How many times the sampler runs each step, re-noising back in between (1: once)."""
        return max([1, *(guider.recurrence for guider in self.wrapped())])

    def report(self) -> dict:
        """What the guider decided during the last run (e.g. a chosen scale per step); ``{}`` by default."""
        return {key: value for guider in self.wrapped() for key, value in guider.report().items()}

    def config(self) -> dict:
        """A plain dict that :func:`omniguide.core.registry.build_guider` turns back into this guider."""
        return guider_config(self)


def config_fields(obj: Any) -> list[Field]:
    """The init fields of dataclass ``obj`` that belong in its config: all but those declared with
    ``metadata={"config": False}`` (a model object, which a branch table names; a random generator)."""
    return [f for f in fields(obj) if f.init and f.metadata.get("config", True)]


def plain(value: Any) -> Any:
    """A config value as plain data: nested guiders, registered scales, axes and tensors as plain values."""
    if isinstance(value, Guider):
        return guider_config(value)
    if isinstance(value, ScaleSchedule):
        return asdict(value)
    if isinstance(value, DynamicScale) and is_dataclass(value) and getattr(type(value), "name", None) in SCALES:
        return {"name": type(value).name, **{f.name: plain(getattr(value, f.name)) for f in fields(value) if f.init}}
    if isinstance(value, Axes):
        return value.config()
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def guider_config(guider: Guider) -> dict:
    """The inverse of :func:`~omniguide.core.registry.build_guider`: a plain dict of the guider's
    name and init fields (:func:`plain` values; a scorer or classifier object as its ``config()`` or its
    class name)."""

    def field_value(f: Field):
        value = getattr(guider, f.name)
        if f.metadata.get("need") in (SCORER, CLASSIFIER) and callable(value) and not isinstance(value, (str, Mapping)):
            return getattr(value, "config", lambda: type(value).__name__)()
        return plain(value)

    return {"name": type(guider).name, **{f.name: field_value(f) for f in config_fields(guider)}}


def passthrough(preds: Mapping[str, Prediction], step: GuidanceStep, name: str = "cond") -> Guided:
    """The prediction of one branch, unguided, at the step's sample."""
    pred = preds[name]
    return Guided.from_value(pred.value, pred.kind, step.x, step.noise)


def guided(value: Tensor, step: GuidanceStep, kind: str = "eps") -> Guided:
    """A consistent guided result from a prediction of ``kind`` at the step's sample."""
    return Guided.from_value(value, kind, step.x, step.noise)


def check_requirements(guider: Guider, available: Iterable[str], where: str) -> None:
    """Refuse, before any work is done, a guider whose needs ``where`` (a sampler, the pipeline
    adapter, score distillation) cannot meet: one line naming the guider, the need and why."""
    available = set(available)
    for need, why in guider.requires().items():
        if need not in available:
            name = guider.name or type(guider).__name__
            raise GuidanceError(f"guider '{name}' needs {REQUIREMENTS[need]} ({why}), which {where} does not provide")
