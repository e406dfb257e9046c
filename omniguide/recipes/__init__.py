"""The recipe system: YAML recipes -> strict structured configs -> recipe functions on Lightning.

    from omniguide.recipes import register_recipe, RunContext
"""

from .registry import (
    CALLBACKS,
    COMPONENTS,
    MODELS,
    RECIPES,
    SCHEDULERS,
    Recipe,
    register_callback,
    register_model,
    register_objective,
    register_recipe,
)
from .run import RunContext, RunSection


def __getattr__(name: str):
    if name == "OBJECTIVES":   # the library's registry (imports torch), loaded when first used
        from .registry import _objectives

        return _objectives()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CALLBACKS", "COMPONENTS", "MODELS", "OBJECTIVES", "RECIPES", "Recipe", "RunContext", "RunSection",
    "SCHEDULERS", "register_callback", "register_model", "register_objective", "register_recipe",
]
