"""omniguide: one guidance core for every modality."""

from .core import (
    CFG,
    Axes,
    Branch,
    CFGPlusPlus,
    CFGRescale,
    ConfigError,
    GuidanceError,
    Guided,
    Guider,
    Interval,
    NoiseLevel,
    Prediction,
    Schedule,
    ScaleSchedule,
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
