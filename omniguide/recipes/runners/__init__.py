"""Recipe kinds. Every module in this package is imported by :func:`load_all`, so a new runner
registers itself by existing (no shared list to edit)."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> list[str]:
    """Import every module of this package (each registers its recipe kinds); returns their names."""
    names = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
        names.append(info.name)
    return names
