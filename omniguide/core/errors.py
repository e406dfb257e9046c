"""Errors that users see. Each renders as one line naming the culprit."""

from __future__ import annotations


class OmniguideError(Exception):
    """Base class of every error omniguide raises on purpose (bad input, bad config, bad model output)."""


class GuidanceError(OmniguideError, ValueError):
    """A model evaluation or a guidance combination went wrong (names the branch and step)."""


class ConfigError(OmniguideError, ValueError):
    """A bad configuration value. ``path`` is the dotted config path, e.g. ``guider.scale``."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def nearest(name: str, choices) -> str | None:
    """The closest valid choice to a misspelled ``name`` (or None when nothing is close)."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return match[0] if match else None


def did_you_mean(name: str, choices) -> str:
    best = nearest(name, choices)
    return f"; did you mean '{best}'?" if best else f"; valid: {', '.join(sorted(map(str, choices)))}"
