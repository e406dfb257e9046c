"""Benchmark recipes (``bench-*`` kinds): the timing kit (:mod:`.kit`), the sweeps, reports and plots.

The bench is a plugin of the recipe system: ``pyproject.toml`` names this package under the
``omniguide.plugins`` entry points, and importing it imports every module here (each registers its
kind; one that fails is recorded and skipped like a runner). The names it adds are indexed in
``components.json`` next to this file, so ``omniguide list`` answers without importing it."""

from omniguide.recipes.runners import import_modules

import_modules(__name__, __path__)
