"""Pipeline classes outside diffusers that a pipeline folder's ``model_index.json`` may name, by class
name, for :func:`omniguide.distillation.priors.load_pipeline`. The rooms above register theirs when
imported (the zoo's pixel pipeline, with :func:`register_pipeline`); ``LOADERS`` run once, before an
unknown name is looked up, to import rooms nobody imported yet (the package root adds the zoo).
Torch-free, so adding a loader costs nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PIPELINE_CLASSES: dict[str, type] = {}
LOADERS: list[Callable[[], Any]] = []


def register_pipeline(cls: type) -> type:
    """Let ``load_pipeline`` load folders whose ``model_index.json`` names ``cls`` (a decorator)."""
    PIPELINE_CLASSES[cls.__name__] = cls
    return cls


def pipeline_class(name: str) -> type | None:
    """The registered class called ``name`` (None if there is none, after running the loaders)."""
    while name not in PIPELINE_CLASSES and LOADERS:
        LOADERS.pop(0)()
    return PIPELINE_CLASSES.get(name)
