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

from .. import errors
from ..io.config import Registry  # noqa: F401  (re-exported: the one registry class, torch-free)


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
MODELS = Registry("model", typed=True)  # name -> schema dataclass with .sampler(...)
SCHEDULERS = Registry("scheduler")    # name -> diffusers scheduler class
CALLBACKS = Registry("callback")      # name -> factory(**kwargs) -> lightning.Callback

# The registries ``omniguide list`` shows. Guiders live in the core (torch), so they are listed
# through a loader; so may other kinds whose names live in heavier modules (``register_listing``).
COMPONENTS: dict[str, Registry] = {"recipes": RECIPES, "models": MODELS, "schedulers": SCHEDULERS,
                                   "callbacks": CALLBACKS}
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


def _guidance_scorers() -> Registry:
    from ..core.scorers import GUIDANCE_SCORERS
    from ..zoo import scorers  # noqa: F401  (registers the testbed's analytic scorers)

    return GUIDANCE_SCORERS


def output_scorers() -> Registry:
    """The one registry of output scorers (:data:`omniguide.core.scorers.OUTPUT_SCORERS`: scorers of
    generated outputs against their prompts), with the zoo's and the modalities' entries registered."""
    from .. import zoo  # noqa: F401  (registers shapes, toy-audio)
    from ..core.scorers import OUTPUT_SCORERS
    from ..modalities.base import load_families

    load_families()     # the audio modality registers clap
    return OUTPUT_SCORERS


def listing(kind: str, names: Any) -> Registry:
    """A registry holding ``names`` (kinds kept in a plain table, listed like the others)."""
    listing = Registry(kind)
    for name in names:
        listing.register(name)(name)
    return listing


def _families() -> Registry:
    from ..modalities.base import load_families

    return listing("pipeline family", load_families())


register_listing("correctors", _correctors)
register_listing("guidance-scorers", _guidance_scorers)   # what scorer guidance differentiates while sampling
register_listing("output-scorers", output_scorers)       # what scores a generated output against its prompt
register_listing("families", _families)                   # the diffusers pipeline families guide() serves
RENAMED_LISTINGS = {"scorers": "guidance-scorers", "scorer": "guidance-scorers"}   # former kind names


def _objectives() -> Registry:
    from ..distillation.registry import OBJECTIVES
    from ..distillation.score import objectives  # noqa: F401  (registers the built-in objectives)

    return OBJECTIVES


# Score-distillation objectives live in the library, next to the guiders (omniguide.distillation.registry,
# which imports torch); ``OBJECTIVES`` here is that registry, loaded when first used.
register_listing("objectives", _objectives)


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":
        return _objectives()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
# ``python -c "from omniguide.recipes.components import write_builtin_index as w; w()"``.
BUILTIN_INDEX = Path(__file__).with_name("builtin_components.json")
PLUGIN_INDEX = "components.json"


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
