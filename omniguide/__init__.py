"""omniguide: one guidance core for every modality."""

from .core import (
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
    register_guider,
)
from .core.sampler import sample
from .modalities.base import Guide, guide
from .modalities.from_diffusers import from_diffusers

__version__ = "0.1.0"

__all__ = [
    "Adaptive", "APG", "AutoGuidance", "Axes", "BetaCFG", "Branch", "build_guider", "CFG", "CFGCache", "CFGPlusPlus",
    "CFGRescale", "CFGZeroStar", "ConfigError", "FDG", "from_diffusers", "Guide", "guide", "GuidanceError", "Guided",
    "Guider", "Interval", "ModelCall", "NoiseLevel", "PAG", "Prediction", "register_guider", "Rescale", "sample",
    "ScaleSchedule", "Schedule", "SEG", "SkipLayer", "TCFG", "Term", "Terms",
]
