"""The guidance methods. Importing this package registers them by name."""

from .adaptive import Adaptive
from .apg import APG
from .autoguidance import AutoGuidance
from .beta import BetaCFG
from .cfg import CFG
from .cfg_cache import CFGCache
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .cfg_zero_star import CFGZeroStar
from .fdg import FDG
from .interval import Interval
from .pag import PAG
from .rescale import Rescale
from .schedule import Schedule
from .seg import SEG
from .skip_layer import SkipLayer
from .tcfg import TCFG
from .terms import Term, Terms

__all__ = [
    "APG", "CFG", "FDG", "PAG", "SEG", "TCFG", "Adaptive", "AutoGuidance", "BetaCFG", "CFGCache", "CFGPlusPlus",
    "CFGRescale", "CFGZeroStar", "Interval", "Rescale", "Schedule", "SkipLayer", "Term", "Terms",
]
