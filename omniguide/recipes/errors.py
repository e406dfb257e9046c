"""The core's user-facing errors for the light modules of the recipe layer, imported on first use.

:class:`~omniguide.core.errors.ConfigError` and ``did_you_mean`` live in ``omniguide/core/errors.py``,
a module with no dependencies, but importing any module of ``omniguide.core`` first runs
``omniguide/core/__init__.py``, which imports torch (about 1.4 s). The modules that ``omniguide
--help`` and ``omniguide show`` load (the CLI, the loader, the schema helpers, the registries, the
runners' schemas) therefore write ``errors.ConfigError(...)``: the core is imported when an error
is raised or caught, never on the way to a successful ``show``. The classes are the core's own, so
``except omniguide.ConfigError`` catches everything the recipe layer raises.
"""

from __future__ import annotations

from typing import Any

_NAMES = ("ConfigError", "GuidanceError", "OmniguideError", "did_you_mean", "nearest")


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
    from ..core import errors

    return getattr(errors, name)
