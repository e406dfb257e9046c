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
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, did_you_mean
from ..core.schedulers import is_flow_scheduler
from ..io.config import build_dataclass, find_file, option, strict_kwargs
from ..zoo.gaussian_mixture import UNCOND, GaussianMixture, MixtureSpec, denoiser_for, label_branches
from .builders import (  # noqa: F401  (re-exported: recipes and plugins build guiders through these)
    SCHEDULE_EXAMPLE,
    _named,
    check_guider_values,
    check_scale,
    make_guider,
    make_scheduler,
)
from .registry import BUILTIN_INDEX, CALLBACKS, COMPONENTS, LISTINGS, MODELS, Registry, register_model


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
        if is_flow_scheduler(scheduler):
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
    return MODELS.build(cfg, path).sampler(dict(scheduler_cfg or {}), batch, path)


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


# -- every registry, for `omniguide list` and the committed index of built-in names -----------------
def all_components() -> dict[str, Registry]:
    """Every registry by kind, in listing order (recipes, guiders, models, ...).

    Imports the core (torch) for the guiders; this module registers the built-in models,
    schedulers and callbacks -- but imports neither Lightning nor diffusers."""
    order = ["recipes", "guiders", "presets", "models", "schedulers", "callbacks", "objectives"]
    kinds = [*order, *(k for k in [*COMPONENTS, *LISTINGS] if k not in order)]
    return {k: COMPONENTS[k] if k in COMPONENTS else LISTINGS[k]() for k in dict.fromkeys(kinds)}


def builtin_names(plugins: bool = False) -> dict[str, list[str]]:
    """Every registry's names by kind, as the live registries hold them (imports torch): the
    built-in components, and with ``plugins`` the installed entry-point plugins' too."""
    from . import runners

    runners.load_all(plugins=plugins)
    return {kind: list(registry.names()) for kind, registry in all_components().items()}


def write_builtin_index() -> None:
    """Rewrite :data:`BUILTIN_INDEX` from the live registries, then the index of every entry-point
    plugin that ships one (the names loading it adds). Run it in a fresh interpreter."""
    from .registry import plugin_index_file
    from .runners import entry_point_plugins

    names = builtin_names()
    BUILTIN_INDEX.write_text(json.dumps(names, indent=1) + "\n")
    for entry_point in entry_point_plugins():
        if (file := plugin_index_file(entry_point)) is not None:
            entry_point.load()
            live = {kind: registry.names() for kind, registry in all_components().items()}
            added = {kind: [n for n in live[kind] if n not in names.get(kind, [])] for kind in live}
            file.write_text(json.dumps({k: v for k, v in added.items() if v}, indent=1) + "\n")
            names = live


def component_kind(kind: str) -> Registry:
    """The registry listed as ``kind`` (``guiders``, ``models``; a singular name works too)."""
    from .registry import RENAMED_LISTINGS

    registries = all_components()
    kind = RENAMED_LISTINGS.get(kind, kind)
    for key in (kind, kind + "s"):
        if key in registries:
            return registries[key]
    raise ConfigError("list", f"unknown component kind '{kind}'{did_you_mean(kind, registries)}")


from . import sample_musicgen  # noqa: E402, F401  (registers model: {name: musicgen})
