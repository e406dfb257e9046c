"""Built-in components recipes look up by name: guiders, schedulers, sample models, callbacks.

    guider: {name: cfg, scale: 4}                         # any guider of omniguide.core, checked first
    scheduler: {name: ddim}                               # any name in omniguide.core.schedulers
    model: {name: mixture, classes: 3}                    # the analytic testbed (exact scores)
    model: {name: small-denoiser, weights: runs/.../model.safetensors}   # one trained by `train`
    model: {name: diffusers, path: <pipeline folder or model id>}        # any pipeline guide() serves
    callbacks: [{name: lr-monitor}]                       # Lightning callbacks

A sample model's config is a dataclass registered with ``@register_model("name")`` whose
``sampler(scheduler_cfg, batch, path)`` returns what generates items (see
:mod:`omniguide.recipes.sample_models`).

Importing this module registers the built-ins; it imports torch and the core, but neither
Lightning nor diffusers (``omniguide list`` imports it): those are imported when a component is
built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, did_you_mean
from ..core.registry import GUIDERS, build_guider, init_fields
from ..core.schedulers import ALIASES, BY_NAME, SCHEDULER_NAMES, build_scheduler
from ..zoo.gaussian_mixture import UNCOND, GaussianMixture, MixtureSpec, denoiser_for, label_branches
from .registry import CALLBACKS, MODELS, SCHEDULERS, register_model
from .schema import as_number, build_dataclass, describe, find_file, option, require_finite

for _name in SCHEDULER_NAMES:
    SCHEDULERS.register(_name)(BY_NAME[_name][0])
for _alias, (_short, _) in ALIASES.items():   # ComfyUI's names for the same solvers
    SCHEDULERS.register(_alias)(BY_NAME[_short][0])


# -- guiders -----------------------------------------------------------------------------------
SCHEDULE_EXAMPLE = "{shape: linear, scale: 7}"


def make_guider(cfg: Any, path: str = "guider") -> Any:
    """A guider from its recipe config: :func:`check_guider_values`, then the core's ``build_guider``
    (which reports unknown names and keys). Recipes build every guider through this function, in
    ``check`` and in the run alike, so ``validate`` rejects what the run would."""
    from .. import zoo  # noqa: F401  (registers the built-in scorers a guider may name)
    from ..modalities.base import load_families

    load_families()     # the modalities register their guiders (history, stg, ...) and presets (audio)
    check_guider_values(cfg, path)
    return build_guider(cfg, path)


def check_guider_values(cfg: Any, path: str = "guider") -> None:
    """Scales must be finite numbers (or schedules of one) and number fields numbers, at any depth.

    In code a scale may be a tensor and the core trusts its caller; in a recipe ``scale: abc``,
    ``scale: .nan`` or ``scale: [1, 2]`` is a mistake that would otherwise surface mid-run (or
    as a non-finite model output). Field types are read from the guider dataclass, as
    ``build_guider`` reads them; keys it does not know are left to it."""
    if not isinstance(cfg, Mapping):
        return
    if "name" in cfg and not isinstance(cfg["name"], str):
        raise ConfigError(f"{path}.name", f"expected the name of a guider, got {describe(cfg['name'])}")
    if cfg.get("name") not in GUIDERS:
        return
    fields = init_fields(GUIDERS.get(cfg["name"]))
    for key, value in cfg.items():
        if key not in fields or value is None:
            continue
        where = f"{path}.{key}"
        annotation = _annotation(fields[key].type)
        if "Guider" in annotation and isinstance(value, Mapping):
            check_guider_values(value, where)
        elif "Scale" in annotation:
            check_scale(value, where, allow_list="tuple" in annotation)
        elif cfg["name"] == "terms" and key == "terms" and isinstance(value, Mapping):
            for branch, term in value.items():
                check_scale(term.get("scale", 1.0) if isinstance(term, Mapping) else term, f"{where}.{branch}")
        elif annotation in ("float", "int", "float | None", "int | None"):
            require_finite(value, where)


def check_scale(value: Any, where: str, allow_list: bool = False) -> None:
    """A finite number, a named dynamic scale (``{name: piecewise, ...}``, built to check it), a
    schedule mapping with a finite ``scale`` (and a ``shape``), or -- where
    the guider takes one scale per band or level (``allow_list``) -- a list of finite numbers."""
    if isinstance(value, Mapping) and "name" in value:
        from ..core.registry import build_scale  # a named dynamic scale (piecewise, frame-ramp, ...)
        from ..modalities.base import load_families

        load_families()   # the modalities register their scales (frame-ramp, region, ...)
        build_scale(dict(value), where)
        return
    if isinstance(value, Mapping):
        if "shape" not in value:
            raise ConfigError(where, f"a scale schedule needs a 'shape' (constant, linear, cosine), e.g. "
                              f"{SCHEDULE_EXAMPLE}; got {describe(value)}")
        for key in ("scale", "neutral"):
            if key in value:
                require_finite(value[key], f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)) and allow_list:
        for i, item in enumerate(value):
            require_finite(item, f"{where}.{i}")
        return
    if as_number(value) is None:
        raise ConfigError(where, f"expected a number or a schedule {SCHEDULE_EXAMPLE}, got {describe(value)}")
    require_finite(value, where)


def _annotation(hint: Any) -> str:
    """A field's type as text (``"float"``, ``"Scale | tuple"``), whether or not it was stringified."""
    return hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))


# -- schedulers ---------------------------------------------------------------------------------
def make_scheduler(cfg: Mapping[str, Any], path: str = "scheduler") -> Any:
    """A fresh diffusers scheduler from ``{name: ddim, **config}``; unknown config keys are errors
    (diffusers itself would only warn)."""
    import diffusers

    cfg = _named(cfg, path)
    cls = getattr(diffusers, SCHEDULERS.get(cfg["name"], f"{path}.name"))
    known = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    kwargs = {}
    for key, value in cfg.items():
        if key == "name":
            continue
        if key not in known:
            hint = did_you_mean(key, known)
            raise ConfigError(f"{path}.{key}", f"unknown key for scheduler '{cfg['name']}'{hint}")
        kwargs[key] = value
    return build_scheduler(cfg["name"], path, **kwargs)


def _named(cfg: Any, path: str) -> dict:
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"expected a mapping with a 'name', got {type(cfg).__name__}")
    if "name" not in cfg:
        raise ConfigError(f"{path}.name", "missing")
    return dict(cfg)


# -- sample models -----------------------------------------------------------------------------
@dataclass
class SampleModel:
    """What the ``sample`` runner needs from a model."""

    denoiser: Callable                      # denoiser(sample, timestep, labels=...) -> prediction
    parameterization: str                   # eps | x0 | v | flow
    dim: int
    mixture: GaussianMixture                # the data, for labels and evaluation
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def label(self, prompt: Any, path: str) -> int:
        """The class label a prompt names (an int, or its decimal string)."""
        classes = self.mixture.classes
        try:
            label = int(prompt)
        except (TypeError, ValueError):
            raise ConfigError(path, f"prompt {prompt!r} is not a class label; valid: {classes}") from None
        if label not in classes:
            raise ConfigError(path, f"unknown class {label}; valid: {classes}")
        return label

    def branches(self, label: int, n: int) -> dict:
        """Branch inputs for ``n`` samples of class ``label`` (and the unconditional branch)."""
        y = torch.full((n,), label, dtype=torch.long, device=self.device)
        return label_branches(y)

    def evaluate(self, samples: Tensor, label: int) -> dict:
        """Accuracy (share of samples whose most likely component has ``label``) and moments."""
        gm, x = self.mixture, samples.double().cpu()
        d2 = (x.unsqueeze(1) - gm.means.unsqueeze(0)).pow(2).sum(-1)
        logp = gm.weights.log() - 0.5 * d2 / gm.stds.pow(2) - gm.dim * gm.stds.log()
        nearest = gm.labels[logp.argmax(1)]
        return {"accuracy": float((nearest == label).double().mean()),
                "mean": x.mean(0).tolist(), "std": x.std(0).tolist()}


@register_model("mixture")
@dataclass
class MixtureModel(MixtureSpec):
    """The analytic Gaussian-mixture testbed (:meth:`GaussianMixture.ring` arguments)."""

    def sampler(self, scheduler_cfg: dict, batch: bool = True, path: str = "model"):
        from .sample_models import MixtureSampler

        return MixtureSampler(self, scheduler_cfg, batch)

    def build(self, scheduler, path: str = "model") -> SampleModel:
        """The exact denoiser on the scheduler's noise path (VP, or flow for flow-matching schedulers)."""
        gm = self.mixture()
        denoiser = denoiser_for(gm, scheduler)
        return SampleModel(denoiser, denoiser.parameterization, gm.dim, gm)


@register_model("small-denoiser")
@dataclass
class SmallDenoiserModel:
    """A :class:`~omniguide.zoo.small_denoiser.SmallDenoiser` trained by a ``train`` recipe."""

    weights: str = "???"                                  # model.safetensors of a train run
    data: dict[str, Any] = field(default_factory=dict)    # the mixture it learned (for evaluation)

    def sampler(self, scheduler_cfg: dict, batch: bool = True, path: str = "model"):
        from .sample_models import MixtureSampler

        return MixtureSampler(self, scheduler_cfg, batch)

    def build(self, scheduler, path: str = "model") -> SampleModel:
        """Load the weights (CPU, eval mode) and check they match the data's dimension and classes."""
        if type(scheduler).__name__.startswith("FlowMatch"):
            raise ConfigError("scheduler.name",
                              "small-denoiser predicts eps on a VP schedule; use ddim, euler, dpm++")
        from ..zoo.small_denoiser import SmallDenoiser  # imports Lightning

        weights = find_file(self.weights, f"{path}.weights")
        spec = build_dataclass(MixtureSpec, self.data, f"{path}.data", skip=())
        model = SmallDenoiser.load(weights)
        if model.config.dim != spec.dim or model.config.num_classes != spec.classes:
            c = model.config
            raise ConfigError(f"{path}.data", f"model has dim {c.dim} and {c.num_classes} classes; "
                              f"data has dim {spec.dim} and {spec.classes}")

        @torch.no_grad()
        def denoiser(sample: Tensor, timestep, labels: Tensor | int = UNCOND) -> Tensor:
            return model(sample, timestep, labels)

        return SampleModel(denoiser, "eps", spec.dim, spec.mixture())


@register_model("diffusers")
@dataclass
class DiffusersModel:
    """Any diffusers pipeline that :func:`omniguide.guide` serves, loaded with ``from_pretrained``."""

    path: str = "???"                       # a local pipeline folder or a model id
    pipeline_class: str | None = None       # "module:Class" when the folder's class is not in diffusers
    dtype: str = option("float32", choices=("float32", "float16", "bfloat16"))
    device: str = "auto"                    # auto: the Lightning rank's device; or cpu, cuda, cuda:1, mps
    attention: str = option("sdpa", choices=("sdpa", "xformers"))
    scorer: Any = None                      # score outputs against their prompts: a name or {name: ..., ...}
    rerank: int | None = option(None, ge=1)  # keep the best N outputs per item by the scorer's clip scores
    call: dict[str, Any] = field(default_factory=dict)   # other pipeline arguments (height, width, ...)

    def sampler(self, scheduler_cfg: dict, batch: bool = True, path: str = "model"):
        from .sample_models import PipelineSampler

        self.check(path)
        return PipelineSampler(self, scheduler_cfg, batch, path)

    def check(self, path: str = "model") -> None:
        """Settings that only fail on the device at run time, checked now."""
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise ConfigError(f"{path}.device", f"'{self.device}' is not a device; use auto, cpu, cuda, cuda:N, mps")
        if self.attention == "xformers":
            import importlib.util

            if importlib.util.find_spec("xformers") is None:
                raise ConfigError(f"{path}.attention", "xformers is not installed (pip install xformers); use sdpa")
            if not torch.cuda.is_available() or self.device in ("cpu", "mps"):
                raise ConfigError(f"{path}.attention", "xformers needs a CUDA device; use sdpa on this machine")


def make_sampler(cfg: Mapping[str, Any], scheduler_cfg: Mapping[str, Any], batch: bool = True,
                 path: str = "model"):
    """What generates items for ``model:`` (the dataclass registered under its name)."""
    cfg = _named(cfg, path)
    cls = MODELS.get(cfg["name"], f"{path}.name")
    return build_dataclass(cls, cfg, path).sampler(dict(scheduler_cfg or {}), batch, path)


# -- Lightning callbacks -----------------------------------------------------------------------
@dataclass(frozen=True)
class LazyCallback:
    """A callback class registered by import path (``"module:Class"``) and imported when a recipe
    uses it, so that registering and listing Lightning's callbacks does not import Lightning."""

    target: str

    def load(self) -> Callable:
        """The class (or factory) the path names."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def make_callbacks(cfgs: list, path: str = "callbacks") -> list:
    """Lightning callbacks from ``[{name: ..., **kwargs}]`` (factories registered in CALLBACKS)."""
    from .schema import strict_kwargs

    out = []
    for i, cfg in enumerate(cfgs):
        where = f"{path}.{i}"
        cfg = _named(cfg, where)
        factory = CALLBACKS.get(cfg["name"], f"{where}.name")
        if isinstance(factory, LazyCallback):
            factory = factory.load()
        try:
            out.append(factory(**strict_kwargs(factory, cfg, where)))
        except TypeError as err:
            raise ConfigError(where, str(err)) from None
    return out


LIGHTNING_CALLBACKS = {
    "lr-monitor": "lightning.pytorch.callbacks:LearningRateMonitor",
    "model-summary": "lightning.pytorch.callbacks:ModelSummary",
    "early-stopping": "lightning.pytorch.callbacks:EarlyStopping",
}
for _name, _target in LIGHTNING_CALLBACKS.items():
    if _name not in CALLBACKS:
        CALLBACKS.register(_name)(LazyCallback(_target))


from . import sample_musicgen  # noqa: E402, F401  (registers model: {name: musicgen})
