"""Guidance in training, in two rooms on one Lightning trainer.

* ``score/`` -- score distillation: objectives (SDS, CSD, NFSD, VSD, ASD, ISM, SDS-bridge, RFDS)
  computed from branch predictions of the guidance core, trainable estimators, a pure-PyTorch scene
  and the Lightning system;
* ``guidance/`` -- students that carry guidance in their weights, and guidance-free training (next).

Shared by both: ``priors`` (frozen diffusion/flow models as branch predictors), ``registry`` (the
objectives by name) and ``schedules`` (values annealed over training progress).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that moved into score/: their old import paths (users' code, pickled checkpoints) still work.
MOVED = {f"{__name__}.{m}": f"{__name__}.score.{m}"
         for m in ("objectives", "scene", "system", "estimators", "metrics", "threestudio")}


def _moved_to(fullname: str) -> str | None:
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``omniguide.distillation.scene`` (and the other old paths) as the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = _moved_to(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        module = importlib.import_module(_moved_to(spec.name))
        self._spec = module.__spec__          # the import system overwrites __spec__; exec_module puts it back
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


sys.meta_path.insert(0, _MovedModules())   # before the path finder, which would load a second copy
