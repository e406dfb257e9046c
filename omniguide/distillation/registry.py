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
from collections.abc import Callable
from typing import Any

from ..io.config import Registry

OBJECTIVES = Registry("distillation objective", noun="objective")


def register_objective(name: str) -> Callable:
    """Class decorator: make an :class:`~omniguide.distillation.score.objectives.base.Objective` buildable by name."""
    return OBJECTIVES.register(name)


def build_objective(cfg: Any, path: str = "objective"):
    """An objective from ``{name: ..., **fields}`` (a name alone, or an objective, works too); fields
    declared as annealed values are built by the conversion :mod:`.schedules` registers."""
    from .score import objectives  # noqa: F401  (registers the built-in objectives)
    from .score.objectives.base import Objective

    if isinstance(cfg, Objective):
        return cfg
    return OBJECTIVES.build(cfg, path)


def objective_config(objective) -> dict:
    """The plain config that :func:`build_objective` turns back into ``objective``."""
    from .schedules import Anneal

    out = {"name": type(objective).name}
    for f in dataclasses.fields(objective):
        if f.init:
            v = getattr(objective, f.name)
            out[f.name] = dataclasses.asdict(v) if isinstance(v, Anneal) else list(v) if isinstance(v, tuple) else v
    return out
