"""The user-facing errors, re-exported from the ground floor (:mod:`omniguide.errors`) for modules
and plugins that import them from the recipe layer. The classes are the core's own, so ``except
omniguide.ConfigError`` catches everything the recipe layer raises."""

from ..errors import ConfigError, GuidanceError, OmniguideError, did_you_mean, nearest

__all__ = ["ConfigError", "GuidanceError", "OmniguideError", "did_you_mean", "nearest"]
