"""The user-facing errors, kept importable here; they live on the ground floor, :mod:`omniguide.errors`."""

from collections.abc import Collection

from ..errors import ConfigError, GuidanceError, OmniguideError, did_you_mean, nearest  # noqa: F401


def check_choice(value: str, valid: Collection[str], key: str) -> None:
    """A one-line error at config key ``key`` when ``value`` is not one of ``valid``."""
    if value not in valid:
        raise ConfigError(key, f"unknown '{value}'; valid: {', '.join(valid)}")
