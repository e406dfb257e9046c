"""The guidance methods. Importing this package registers them by name."""

from .adaptive import Adaptive
from .apg import APG
from .autoguidance import AutoGuidance
from .beta import BetaCFG
from .cfg import CFG
from .cfg_cache import CFGCache
from .cfg_norm import CFGNorm
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .cfg_zero_star import CFGZeroStar
from .fdg import FDG
from .fresca import FreSca
from .gfcg import GFCG
from .icg import ICG, IndependentCondition
from .interval import Interval
from .magnitude_aware import MagnitudeAware
from .momentum import Momentum
from .nag import NAG
from .pag import PAG
from .perp_neg import PerpNeg
from .pladis import PLADIS
from .prior_guidance import PriorGuidance
from .rescale import Rescale
from .residual_cfg import ResidualCFG
from .s2_guidance import S2Guidance
from .sag import SAG
from .scale_search import ScaleSearch
from .schedule import Schedule
from .scorer_guidance import ScorerGuidance
from .seg import SEG
from .skip_layer import SkipLayer
from .smc_cfg import SMCCFG
from .tcfg import TCFG
from .terms import Term, Terms
from .tpg import TPG
from .tsg import TSG
from .vsf import VSF

__all__ = [
    "APG", "CFG", "FDG", "PAG", "SEG", "TCFG", "Adaptive", "AutoGuidance", "BetaCFG", "CFGCache", "CFGPlusPlus",
    "CFGRescale", "CFGZeroStar", "Interval", "Rescale", "Schedule", "SkipLayer", "Term", "Terms",
    "CFGNorm", "FreSca", "GFCG", "ICG", "IndependentCondition", "MagnitudeAware", "Momentum", "NAG", "PerpNeg",
    "PLADIS",
    "PriorGuidance", "ResidualCFG", "S2Guidance", "SAG", "ScaleSearch", "ScorerGuidance", "SMCCFG", "TPG", "TSG", "VSF",
]
