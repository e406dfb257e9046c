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
    NoiseLevel,
    Prediction,
    ScaleSchedule,
    Schedule,
    SkipLayer,
    Term,
    Terms,
    build_guider,
    register_guider,
)
from .core.sampler import sample

__version__ = "0.1.0"

__all__ = [
    "Axes", "Branch", "CFG", "CFGPlusPlus", "CFGRescale", "ConfigError", "GuidanceError", "Guided", "Guider",
    "Interval", "NoiseLevel", "Prediction", "Schedule", "ScaleSchedule", "build_guider", "register_guider",
    "sample",
]
__all__ += [
    "APG", "TCFG", "CFGZeroStar", "FDG", "Adaptive", "CFGCache", "BetaCFG", "AutoGuidance", "Terms", "Term",
]
__all__ += ["PAG", "SEG", "SkipLayer"]
