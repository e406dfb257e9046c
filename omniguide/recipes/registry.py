"""Registries of recipe kinds and of the components recipes build by name.

    @register_recipe("quickstart", QuickstartConfig, check=check_quickstart)
    def run_quickstart(cfg: QuickstartConfig, run: RunContext) -> dict | None: ...

A recipe kind is a strict dataclass schema plus a function; ``kind: quickstart`` in a YAML file
picks it. Components (models, schedulers, callbacks, ...) live in :class:`Registry` objects listed
in :data:`COMPONENTS` (and, for registries that live in heavier modules such as the core's guiders,
:data:`LISTINGS`), which is what ``omniguide list`` prints. Users add their own with the decorators
below from a module loaded with ``--plugin`` or an ``omniguide.plugins`` entry point.

This module imports neither torch nor Lightning: runner modules register their kinds at import
time, and ``omniguide show`` imports every runner module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import errors
from .schema import describe


class Registry:
    """Names -> classes (or factories) of one kind of component.

    The same interface as :class:`omniguide.core.registry.Registry` (which holds the guiders), kept
    here because that module imports torch and the recipe registries must load without it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable:
        """Decorator: register ``obj`` under ``name`` (a class also gets ``obj.name = name``)."""

        def decorator(obj):
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._items[name]} and {obj})")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorator

    def get(self, name: str, path: str = "name") -> Any:
        """The object registered as ``name``; a ConfigError at ``path`` with the nearest name otherwise."""
        if not isinstance(name, str):
            raise errors.ConfigError(path, f"expected the name of a {self.kind}, got {describe(name)}")
        if name not in self._items:
            raise errors.ConfigError(path, f"unknown {self.kind} '{name}'{errors.did_you_mean(name, self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


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

# The registries ``omniguide list`` shows. Guiders live in the core (torch), so they are listed
# through a loader; so may other kinds whose names live in heavier modules (``register_listing``).
COMPONENTS: dict[str, Registry] = {
    "recipes": RECIPES,
    "models": MODELS,
    "schedulers": SCHEDULERS,
    "callbacks": CALLBACKS,
}
LISTINGS: dict[str, Callable[[], Registry]] = {}


def register_listing(kind: str, loader: Callable[[], Registry]) -> None:
    """Show the registry ``loader()`` returns as ``kind`` in ``omniguide list`` (loaded only when listed)."""
    LISTINGS.setdefault(kind, loader)


def _guiders() -> Registry:
    from ..core.registry import GUIDERS
    from ..modalities.base import load_families

    load_families()   # the modality packages register their own guiders (history, stg, nested, ...)
    return GUIDERS


def _scales() -> Registry:
    from ..core.registry import SCALES
    from ..modalities.base import load_families

    load_families()   # the video modality registers frame-ramp, region, decay, ...
    return SCALES


register_listing("guiders", _guiders)
register_listing("scales", _scales)


def _presets() -> Registry:
    from ..core.registry import PRESETS  # filled by the modalities (audio presets) when first read

    return PRESETS


register_listing("presets", _presets)


def _correctors() -> Registry:
    from ..core.correctors import CORRECTORS

    return CORRECTORS


def _scorers() -> Registry:
    from ..core.scorers import SCORERS
    from ..zoo import scorers  # noqa: F401  (registers the testbed's analytic scorers)

    return SCORERS


register_listing("correctors", _correctors)
register_listing("scorers", _scorers)


def _objectives() -> Registry:
    from ..distillation import objectives  # noqa: F401  (registers the built-in objectives)
    from ..distillation.registry import OBJECTIVES

    return OBJECTIVES


# Score-distillation objectives live in the library, next to the guiders (omniguide.distillation.registry,
# which imports torch); ``OBJECTIVES`` here is that registry, loaded when first used.
register_listing("objectives", _objectives)


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":
        return _objectives()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def all_components() -> dict[str, Registry]:
    """Every registry by kind, in listing order (recipes, guiders, models, ...).

    Imports the core (torch) for the guiders and :mod:`omniguide.recipes.components` for the
    built-in models, schedulers and callbacks -- but neither Lightning nor diffusers."""
    from . import components  # noqa: F401  (registers the built-in components)

    order = ["recipes", "guiders", "presets", "models", "schedulers", "callbacks", "objectives"]
    kinds = [*order, *(k for k in [*COMPONENTS, *LISTINGS] if k not in order)]
    return {k: COMPONENTS[k] if k in COMPONENTS else LISTINGS[k]() for k in dict.fromkeys(kinds)}


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
        raise errors.ConfigError(path, f"missing or not a string; one of: {', '.join(RECIPES.names())}")
    if kind not in RECIPES and FAILED:
        hint = errors.did_you_mean(kind, RECIPES.names())
        raise errors.ConfigError(path, f"unknown recipe '{kind}'{hint}{broken}")
    return RECIPES.get(kind, path)


# The components' names, committed, so that ``omniguide list`` answers without importing torch
# (1.2 s of a 1.7 s listing): the built-in ones here, each entry-point plugin's own in the
# ``components.json`` of its package (a plugin that ships none is imported to be listed).
# tests/test_cli_startup.py checks them against the live registries; regenerate them with
# ``python -c "from omniguide.recipes.registry import write_builtin_index as w; w()"``.
BUILTIN_INDEX = Path(__file__).with_name("builtin_components.json")
PLUGIN_INDEX = "components.json"


def builtin_names(plugins: bool = False) -> dict[str, list[str]]:
    """Every registry's names by kind, as the live registries hold them (imports torch): the
    built-in components, and with ``plugins`` the installed entry-point plugins' too."""
    from . import runners

    runners.load_all(plugins=plugins)
    return {kind: list(registry.names()) for kind, registry in all_components().items()}


def plugin_index_file(entry_point: Any) -> Path | None:
    """The name index an entry-point plugin ships: ``components.json`` in its package (None if none)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(entry_point.module)
    except ImportError:
        return None
    folders = list(spec.submodule_search_locations or []) if spec else []
    file = Path(folders[0]) / PLUGIN_INDEX if folders else None
    return file if file is not None and file.is_file() else None


def write_builtin_index() -> None:
    """Rewrite :data:`BUILTIN_INDEX` from the live registries, then the index of every entry-point
    plugin that ships one (the names loading it adds). Run it in a fresh interpreter."""
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


def committed_names() -> dict[str, list[str]]:
    """The committed indexes merged: the built-in names and each entry-point plugin's (``{}`` if
    a file is missing or a plugin ships no index; the listing then imports the registries)."""
    from .runners import entry_point_plugins

    names = json.loads(BUILTIN_INDEX.read_text()) if BUILTIN_INDEX.is_file() else {}
    for entry_point in entry_point_plugins():
        if not names or (file := plugin_index_file(entry_point)) is None:
            return {}
        for kind, added in json.loads(file.read_text()).items():
            names[kind] = sorted({*names.get(kind, []), *added})
    return names


def component_kind(kind: str) -> Registry:
    """The registry listed as ``kind`` (``guiders``, ``models``; a singular name works too)."""
    registries = all_components()
    for key in (kind, kind + "s"):
        if key in registries:
            return registries[key]
    raise errors.ConfigError("list", f"unknown component kind '{kind}'{errors.did_you_mean(kind, registries)}")


def register_model(name: str) -> Callable:
    """Decorator for a model factory ``factory(cfg: dict, path: str) -> model`` (recipes' ``model:``)."""
    return MODELS.register(name)


def register_callback(name: str) -> Callable:
    """Decorator for a Lightning callback class or factory (recipes' ``callbacks: [{name: ...}]``)."""
    return CALLBACKS.register(name)


def register_objective(name: str) -> Callable:
    """Decorator for a score-distillation objective (used by ``kind: distill``): the same as
    :func:`omniguide.distillation.registry.register_objective`."""
    return _objectives().register(name)
