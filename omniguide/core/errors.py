"""The user-facing errors, re-exported from the ground floor (:mod:`omniguide.errors`, which imports
nothing), so the core's modules and users' ``from omniguide.core.errors import ConfigError`` keep working."""

from ..errors import ConfigError, GuidanceError, OmniguideError, did_you_mean, nearest

__all__ = ["ConfigError", "GuidanceError", "OmniguideError", "did_you_mean", "nearest"]
