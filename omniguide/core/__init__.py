"""The guidance core: noise levels, predictions, branches, guiders, scales, axes and the sampler.

Imports torch only (diffusers only in ``schedulers.py``, loaded by the sampler)."""

from .axes import Axes
from .branch import Branch, BranchExecutor, Perturbation
from .errors import ConfigError, GuidanceError, OmniguideError
from .guider import GuidanceStep, Guider, check_requirements
from .methods import (
    APG,
    CFG,
    FDG,
    PAG,
    SEG,
    TCFG,
    Adaptive,
    AutoGuidance,
    BetaCFG,
    CFGCache,
    CFGPlusPlus,
    CFGRescale,
    CFGZeroStar,
    Interval,
    Rescale,
    Schedule,
    SkipLayer,
    Term,
    Terms,
)
from .model_call import ModelCall
from .noise import NoiseLevel, NoiseSchedule
from .prediction import Guided, Prediction, convert
from .registry import GUIDERS, build_guider, register_guider
from .scale import ScaleSchedule

__all__ = [
    "Adaptive", "APG", "AutoGuidance", "Axes", "BetaCFG", "Branch", "BranchExecutor", "build_guider", "CFG",
    "CFGCache", "CFGPlusPlus", "CFGRescale", "CFGZeroStar", "ConfigError", "convert", "FDG", "GuidanceError",
    "GuidanceStep", "Guided", "Guider", "GUIDERS", "Interval", "ModelCall", "NoiseLevel", "NoiseSchedule",
    "OmniguideError", "PAG", "Perturbation", "check_requirements", "Prediction", "register_guider", "Rescale",
    "ScaleSchedule", "Schedule", "SEG", "SkipLayer", "TCFG", "Term", "Terms",
]
