"""Built-in components recipes look up by name: schedulers, sample models, trainable models.

    scheduler: {name: ddim}                               # any name in omniguide.core.schedulers
    model: {name: mixture, classes: 3}                    # the analytic testbed (exact scores)
    model: {name: small-denoiser, weights: runs/.../model.safetensors}   # one trained by `train`

A sample model turns a prompt into branch inputs and evaluates what it generated; register your
own with ``@register_model("name")`` on a dataclass whose ``build(path)`` returns one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError, did_you_mean
from ..core.schedulers import BY_NAME, SCHEDULER_NAMES, build_scheduler
from ..zoo.gaussian_mixture import UNCOND, GaussianMixture, MixtureSpec, denoiser_for, label_branches
from ..zoo.small_denoiser import SmallDenoiser
from .registry import MODELS, SCHEDULERS, register_model
from .schema import build_dataclass, find_file

for _name in SCHEDULER_NAMES:
    SCHEDULERS.register(_name)(BY_NAME[_name][0])


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

    def build(self, scheduler, path: str = "model") -> SampleModel:
        """Load the weights (CPU, eval mode) and check they match the data's dimension and classes."""
        if type(scheduler).__name__.startswith("FlowMatch"):
            raise ConfigError("scheduler.name",
                              "small-denoiser predicts eps on a VP schedule; use ddim, euler, dpm++")
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


def make_model(cfg: Mapping[str, Any], scheduler, path: str = "model") -> SampleModel:
    """A sample model from ``{name: ..., **fields}`` (the dataclass registered under the name)."""
    cfg = _named(cfg, path)
    cls = MODELS.get(cfg["name"], f"{path}.name")
    return build_dataclass(cls, cfg, path).build(scheduler, path)


# -- Lightning callbacks -----------------------------------------------------------------------
def make_callbacks(cfgs: list, path: str = "callbacks") -> list:
    """Lightning callbacks from ``[{name: ..., **kwargs}]`` (factories registered in CALLBACKS)."""
    from .registry import CALLBACKS
    from .schema import strict_kwargs

    out = []
    for i, cfg in enumerate(cfgs):
        where = f"{path}.{i}"
        cfg = _named(cfg, where)
        factory = CALLBACKS.get(cfg["name"], f"{where}.name")
        try:
            out.append(factory(**strict_kwargs(factory, cfg, where)))
        except TypeError as err:
            raise ConfigError(where, str(err)) from None
    return out


def _register_lightning_callbacks() -> None:
    from lightning.pytorch import callbacks as cb

    from .registry import CALLBACKS

    for name, cls in (("lr-monitor", cb.LearningRateMonitor), ("model-summary", cb.ModelSummary),
                      ("early-stopping", cb.EarlyStopping)):
        if name not in CALLBACKS:
            CALLBACKS.register(name)(cls)


_register_lightning_callbacks()
