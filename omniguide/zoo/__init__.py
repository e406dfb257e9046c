"""The zoo: the analytic testbed and small models used by tests, benchmarks and the quickstart."""

from .gaussian_mixture import UNCOND, GaussianMixture, MixtureDenoiser, MixtureSpec, denoiser_for, label_branches

__all__ = ["UNCOND", "GaussianMixture", "MixtureDenoiser", "MixtureSpec", "denoiser_for", "label_branches"]
