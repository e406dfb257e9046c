"""Recipe kinds. Every module in this package and in :mod:`omniguide.bench` is imported by
:func:`load_all`, so a new runner registers itself by existing (no shared list to edit)."""

from __future__ import annotations

import importlib
import pkgutil

FAILED: dict[str, str] = {}   # module -> why it could not be imported


def load_all() -> list[str]:
    """Import every module of this package (each registers its recipe kinds); returns their names.

    A module that fails to import is recorded in :data:`FAILED` and skipped, so one broken runner
    does not take down the recipes of the others; an unknown ``kind`` names the failures."""
    import omniguide.bench as bench

    names = []
    for package, path in ((__name__, __path__), (bench.__name__, bench.__path__)):
        for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
            name = f"{package}.{info.name}"
            if info.name in FAILED:
                continue
            try:
                importlib.import_module(name)
            except Exception as err:
                FAILED[info.name] = f"{type(err).__name__}: {err}".splitlines()[0]
                continue
            names.append(info.name)
    return names
