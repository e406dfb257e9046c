"""The registry of score-distillation objectives, next to the guiders' (recipes and ``omniguide
list objectives`` read this one).

    @register_objective("my-objective")
    @dataclass
    class MyObjective(Objective): ...

    build_objective({"name": "sds", "weighting": "sigma/alpha"})
    build_objective({"name": "sds", "weigting": "uniform"})
    # ConfigError: objective.weigting: unknown key for objective 'sds'; did you mean 'weighting'?
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..core.errors import ConfigError, did_you_mean
from ..core.registry import Registry, init_fields

OBJECTIVES = Registry("distillation objective")


def register_objective(name: str) -> Callable:
    """Class decorator: make an :class:`~omniguide.distillation.objectives.base.Objective` buildable by name."""
    return OBJECTIVES.register(name)


def build_objective(cfg: Any, path: str = "objective"):
    """An objective from ``{name: ..., **fields}`` (a name alone, or an objective, works too)."""
    from . import objectives  # noqa: F401  (registers the built-in objectives)
    from .objectives.base import Objective
    from .schedules import as_anneal

    if isinstance(cfg, Objective):
        return cfg
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ConfigError(f"{path}.name", f"missing; one of: {', '.join(OBJECTIVES.names())}")
    cls = OBJECTIVES.get(cfg["name"], f"{path}.name")
    known = init_fields(cls)
    kwargs = {}
    for key, value in cfg.items():
        if key == "name":
            continue
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key for objective '{cfg['name']}'{did_you_mean(key, known)}")
        annotation = str(known[key].type)
        if "Anneal" in annotation:
            value = as_anneal(value, f"{path}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err.path}" if err.path else path, err.message) from None
    except TypeError as err:
        raise ConfigError(path, str(err)) from None


def objective_config(objective) -> dict:
    """The plain config that :func:`build_objective` turns back into ``objective``."""
    from .schedules import Anneal

    out = {"name": type(objective).name}
    for f in dataclasses.fields(objective):
        if f.init:
            v = getattr(objective, f.name)
            out[f.name] = dataclasses.asdict(v) if isinstance(v, Anneal) else list(v) if isinstance(v, tuple) else v
    return out
