"""Recipe kinds. Every module in this package is imported by :func:`load_all`, so a new runner
registers itself by existing (no shared list to edit); installed ``omniguide.plugins`` entry points
add theirs (:func:`load_entry_point_plugins`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from .. import errors

FAILED: dict[str, str] = {}   # module -> why it could not be imported


def import_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` (found on ``path``; each registers its recipe kinds) and
    return their names. Also for plugins that bring several runner modules.

    A module that fails to import is recorded in :data:`FAILED` and skipped, so one broken runner
    does not take down the recipes of the others; an unknown ``kind`` names the failures."""
    names = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        module = f"{package}.{info.name}"
        if module in FAILED:
            continue
        try:
            importlib.import_module(module)
        except Exception as err:
            FAILED[module] = f"{type(err).__name__}: {err}".splitlines()[0]
            continue
        names.append(info.name)
    return names


def load_all(plugins: bool = True) -> list[str]:
    """Import every runner module of this package, then (``plugins``) the installed entry-point
    plugins; returns the runner modules' names."""
    names = import_modules(__name__, __path__)
    if plugins:
        load_entry_point_plugins()
    return names


def entry_point_plugins() -> list:
    """The installed ``omniguide.plugins`` entry points."""
    from importlib.metadata import entry_points

    return list(entry_points(group="omniguide.plugins"))


def load_entry_point_plugins() -> None:
    """Import every module registered under the ``omniguide.plugins`` entry-point group."""
    for ep in entry_point_plugins():
        try:
            ep.load()
        except Exception as err:
            why = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise errors.ConfigError(f"entry point '{ep.name}'", f"cannot load plugin: {why}") from None
