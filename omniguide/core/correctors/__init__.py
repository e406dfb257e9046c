"""Sampler options that act between sampler steps (not combine rules): predictor-corrector guidance and
Feynman-Kac correctors with SMC resampling. ``sample(..., corrector=PCG(...))``; a recipe's
``corrector: {name: fkc, ...}``."""

from .base import CORRECTORS, Corrector, build_corrector, register_corrector
from .fkc import FKC, effective_sample_size, flat_prior, systematic_resample
from .pcg import PCG

__all__ = ["CORRECTORS", "FKC", "PCG", "Corrector", "build_corrector", "effective_sample_size", "flat_prior",
           "register_corrector", "systematic_resample"]
