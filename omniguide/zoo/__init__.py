"""The zoo: the analytic testbed and small models used by tests, benchmarks and the quickstart."""

from . import scorers  # noqa: F401  (registers the testbed's scorers)
from .gaussian_mixture import UNCOND, GaussianMixture, MixtureDenoiser, MixtureSpec, denoiser_for, label_branches
from .shapes import classifier  # noqa: F401  (registers shapes-classifier)

__all__ = ["UNCOND", "GaussianMixture", "MixtureDenoiser", "MixtureSpec", "denoiser_for", "label_branches"]
