"""Errors that users see. Each renders as one line naming the culprit.

The ground floor: this module imports nothing, so the torch-free rooms (the CLI, the recipe loader,
the config helpers of :mod:`omniguide.io.config`) raise the same classes as the core."""

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
    """The closest valid choice to a misspelled ``name`` (or None when nothing is close): among the
    similar ones (difflib), the fewest edits, a swap of neighbours counting as one (``cgf`` -> ``cfg``)."""
    import difflib

    name = str(name)
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=5, cutoff=0.5)
    if not close:
        return None
    return min(close, key=lambda c: (_edits(name, c), -difflib.SequenceMatcher(None, name, c).ratio()))


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def did_you_mean(name: str, choices) -> str:
    best = nearest(name, choices)
    return f"; did you mean '{best}'?" if best else f"; valid: {', '.join(sorted(map(str, choices)))}"
