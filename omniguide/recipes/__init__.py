"""The recipe system: YAML recipes -> strict structured configs -> recipe functions on Lightning.

    from omniguide.recipes import register_recipe, RunContext
"""

from .registry import (
    CALLBACKS,
    COMPONENTS,
    MODELS,
    OBJECTIVES,
    RECIPES,
    SCHEDULERS,
    Recipe,
    register_callback,
    register_model,
    register_objective,
    register_recipe,
)
from .run import RunContext, RunSection

__all__ = [
    "CALLBACKS", "COMPONENTS", "MODELS", "OBJECTIVES", "RECIPES", "Recipe", "RunContext", "RunSection",
    "SCHEDULERS", "register_callback", "register_model", "register_objective", "register_recipe",
]
