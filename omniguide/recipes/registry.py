"""Registries of recipe kinds and of the components recipes build by name.

    @register_recipe("quickstart", QuickstartConfig, check=check_quickstart)
    def run_quickstart(cfg: QuickstartConfig, run: RunContext) -> dict | None: ...

A recipe kind is a strict dataclass schema plus a function; ``kind: quickstart`` in a YAML file
picks it. Components (models, schedulers, callbacks, ...) live in :class:`~omniguide.core.registry.Registry`
objects listed in :data:`COMPONENTS`, which is what ``omniguide list`` prints. Users add their own
with the decorators below from a module loaded with ``--plugin`` or an ``omniguide.plugins`` entry point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError, did_you_mean
from ..core.registry import GUIDERS, SCALES, Registry


@dataclass(frozen=True)
class Recipe:
    """One recipe kind: its config schema, its run function and an optional build-only check."""

    name: str
    schema: type
    fn: Callable[..., dict | None]
    check: Callable[[Any], None] | None = None

    @property
    def doc(self) -> str:
        """The first line of the run function's docstring (shown by ``omniguide list recipes``)."""
        return (self.fn.__doc__ or "").strip().split("\n")[0]


RECIPES = Registry("recipe")
MODELS = Registry("model")            # name -> factory(cfg: dict, path: str) -> model
SCHEDULERS = Registry("scheduler")    # name -> diffusers scheduler class
CALLBACKS = Registry("callback")      # name -> factory(**kwargs) -> lightning.Callback
# Score-distillation objectives: the slot a later issue fills (omniguide.distillation registers here).
OBJECTIVES = Registry("distillation objective")

COMPONENTS: dict[str, Registry] = {
    "recipes": RECIPES,
    "guiders": GUIDERS,
    "scales": SCALES,
    "models": MODELS,
    "schedulers": SCHEDULERS,
    "callbacks": CALLBACKS,
    "objectives": OBJECTIVES,
}


def register_recipe(name: str, schema: type, check: Callable[[Any], None] | None = None) -> Callable:
    """Function decorator: make ``fn(cfg, run)`` runnable as ``kind: name`` with config ``schema``.

    ``schema`` must be a dataclass (fields typed for omegaconf; component configs as
    ``dict[str, Any]``). ``check(cfg)`` builds components without running and raises
    :class:`~omniguide.core.errors.ConfigError`; ``omniguide validate`` and ``run`` call it."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"recipe '{name}': schema must be a dataclass, got {schema!r}")

    def decorator(fn: Callable) -> Callable:
        existing = RECIPES._items.get(name)
        if existing is not None and _same_function(existing.fn, fn):
            RECIPES._items.pop(name)   # the same module imported twice (e.g. run as __main__)
        RECIPES.register(name)(Recipe(name, schema, fn, check))
        return fn

    return decorator


def _same_function(a: Callable, b: Callable) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def get_recipe(kind: Any, path: str = "kind") -> Recipe:
    """The recipe registered as ``kind`` (ConfigError naming ``path`` with the nearest kind otherwise)."""
    from .runners import FAILED

    broken = f" (runner modules that failed to import: {'; '.join(f'{k}: {v}' for k, v in FAILED.items())})"
    if not isinstance(kind, str) or not kind:
        raise ConfigError(path, f"missing or not a string; one of: {', '.join(RECIPES.names())}")
    if kind not in RECIPES and FAILED:
        raise ConfigError(path, f"unknown recipe '{kind}'{did_you_mean(kind, RECIPES.names())}{broken}")
    return RECIPES.get(kind, path)


def component_kind(kind: str) -> Registry:
    """The registry listed as ``kind`` (``guiders``, ``models``; a singular name works too)."""
    for key in (kind, kind + "s"):
        if key in COMPONENTS:
            return COMPONENTS[key]
    raise ConfigError("list", f"unknown component kind '{kind}'{did_you_mean(kind, COMPONENTS)}")


def register_model(name: str) -> Callable:
    """Decorator for a model factory ``factory(cfg: dict, path: str) -> model`` (recipes' ``model:``)."""
    return MODELS.register(name)


def register_callback(name: str) -> Callable:
    """Decorator for a Lightning callback class or factory (recipes' ``callbacks: [{name: ...}]``)."""
    return CALLBACKS.register(name)


def register_objective(name: str) -> Callable:
    """Decorator for a score-distillation objective (used by ``kind: distill``)."""
    return OBJECTIVES.register(name)
