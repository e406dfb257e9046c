"""The guidance methods. Importing this package registers them by name."""

from .cfg import CFG
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .interval import Interval
from .schedule import Schedule

__all__ = ["CFG", "CFGPlusPlus", "CFGRescale", "Interval", "Schedule"]
