"""The guidance methods. Importing this package registers them by name."""

from .adaptive import Adaptive
from .apg import APG
from .autoguidance import AutoGuidance
from .beta import BetaCFG
from .cfg import CFG
from .cfg_cache import CFGCache

# Methods II: new branches, combine rules from other tools, attention-space negatives
from .cfg_norm import CFGNorm  # noqa: E402
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .cfg_zero_star import CFGZeroStar
from .fdg import FDG
from .fresca import FreSca  # noqa: E402
from .gfcg import GFCG  # noqa: E402
from .icg import ICG, IndependentCondition  # noqa: E402
from .interval import Interval
from .magnitude_aware import MagnitudeAware  # noqa: E402
from .momentum import Momentum  # noqa: E402
from .nag import NAG  # noqa: E402
from .pag import PAG
from .perp_neg import PerpNeg  # noqa: E402
from .pladis import PLADIS  # noqa: E402
from .prior_guidance import PriorGuidance  # noqa: E402
from .rescale import Rescale
from .residual_cfg import ResidualCFG  # noqa: E402
from .s2_guidance import S2Guidance  # noqa: E402
from .sag import SAG  # noqa: E402
from .scale_search import ScaleSearch  # noqa: E402
from .schedule import Schedule
from .scorer_guidance import ScorerGuidance  # noqa: E402
from .seg import SEG
from .skip_layer import SkipLayer
from .smc_cfg import SMCCFG  # noqa: E402
from .tcfg import TCFG
from .terms import Term, Terms
from .tpg import TPG  # noqa: E402
from .tsg import TSG  # noqa: E402
from .vsf import VSF  # noqa: E402

__all__ = [
    "APG", "CFG", "FDG", "PAG", "SEG", "TCFG", "Adaptive", "AutoGuidance", "BetaCFG", "CFGCache", "CFGPlusPlus",
    "CFGRescale", "CFGZeroStar", "Interval", "Rescale", "Schedule", "SkipLayer", "Term", "Terms",
    "CFGNorm", "FreSca", "GFCG", "ICG", "IndependentCondition", "MagnitudeAware", "Momentum", "NAG", "PerpNeg",
    "PLADIS",
    "PriorGuidance", "ResidualCFG", "S2Guidance", "SAG", "ScaleSearch", "ScorerGuidance", "SMCCFG", "TPG", "TSG", "VSF",
]
