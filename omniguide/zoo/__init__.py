"""The zoo: the analytic testbed and small models used by tests, benchmarks and the quickstart."""

from . import scorers, toy_audio_data  # noqa: F401  (register the testbed's scorers; the toy-audio output scorer)
from .gaussian_mixture import UNCOND, GaussianMixture, MixtureDenoiser, MixtureSpec, denoiser_for, label_branches
from .shapes import classifier, scorer  # noqa: F401  (register shapes-classifier; the shapes output scorer)

__all__ = ["UNCOND", "GaussianMixture", "MixtureDenoiser", "MixtureSpec", "denoiser_for", "label_branches"]
