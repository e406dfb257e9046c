"""The user-facing errors, kept importable here; they live on the ground floor, :mod:`omniguide.errors`."""

from ..errors import ConfigError, GuidanceError, OmniguideError, did_you_mean, nearest  # noqa: F401
