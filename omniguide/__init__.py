"""omniguide: one guidance core for every modality.

The public names (``from omniguide import CFG, guide, sample``) are loaded on first use (PEP 562), so
that ``import omniguide`` -- and with it ``omniguide --help`` and ``omniguide show`` -- does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ["APG", "CFG", "FDG", "PAG", "SEG", "TCFG", "Adaptive", "AutoGuidance", "Axes", "BetaCFG", "Branch",
         "CFGCache", "CFGPlusPlus", "CFGRescale", "CFGZeroStar", "ConfigError", "GuidanceError", "Guided", "Guider",
         "Interval", "ModelCall", "NoiseLevel", "Prediction", "Rescale", "ScaleSchedule", "Schedule", "SkipLayer",
         "Term", "Terms", "build_guider", "preset", "register_guider", "register_preset"],
        "omniguide.core",
    ),
    "sample": "omniguide.core.sampler",
    "guide": "omniguide.modalities.base",
    "Guide": "omniguide.modalities.base",
    "from_diffusers": "omniguide.modalities.from_diffusers",
}

__all__ = [
    "Adaptive", "APG", "AutoGuidance", "Axes", "BetaCFG", "Branch", "build_guider", "CFG", "CFGCache", "CFGPlusPlus",
    "CFGRescale", "CFGZeroStar", "ConfigError", "FDG", "from_diffusers", "Guide", "guide", "GuidanceError", "Guided",
    "Guider", "Interval", "ModelCall", "NoiseLevel", "PAG", "Prediction", "preset", "register_guider",
    "register_preset", "Rescale", "sample",
    "ScaleSchedule", "Schedule", "SEG", "SkipLayer", "TCFG", "Term", "Terms",
]


def _zoo_pipelines() -> None:
    importlib.import_module("omniguide.zoo.shapes.pipeline")   # registers the zoo's pixel pipeline classes


# distillation's load_pipeline finds the zoo's pipeline classes by registration; the root, which sees
# every room, imports the zoo for it the first time a folder names a class it does not know
importlib.import_module("omniguide.distillation.pipelines").LOADERS.append(_zoo_pipelines)


def _modalities() -> None:
    importlib.import_module("omniguide.modalities.base").load_families()   # each registers its names


# the modalities register guiders, presets and scales of the core's registries (video's history, stg,
# audio's presets): loaded the first time such a name is looked up, as `omniguide list` does
for _kind in ("guider", "guider preset", "scale"):
    importlib.import_module("omniguide.io.config").LOADERS.setdefault(_kind, []).append(_modalities)


def __getattr__(name: str) -> Any:
    """Import a public name the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omniguide' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from .core import (  # noqa: F401
        APG,
        CFG,
        FDG,
        PAG,
        SEG,
        TCFG,
        Adaptive,
        AutoGuidance,
        Axes,
        BetaCFG,
        Branch,
        CFGCache,
        CFGPlusPlus,
        CFGRescale,
        CFGZeroStar,
        ConfigError,
        GuidanceError,
        Guided,
        Guider,
        Interval,
        ModelCall,
        NoiseLevel,
        Prediction,
        Rescale,
        ScaleSchedule,
        Schedule,
        SkipLayer,
        Term,
        Terms,
        build_guider,
        preset,
        register_guider,
        register_preset,
    )
    from .core.sampler import sample  # noqa: F401
    from .modalities.base import Guide, guide  # noqa: F401
    from .modalities.from_diffusers import from_diffusers  # noqa: F401
