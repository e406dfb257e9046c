"""The corrector protocol: what a sampler option does after every scheduler step.

``sample(model, scheduler, guider, noise, ..., corrector=PCG(gamma=3))``. A corrector is not a combine
rule: it runs *between* sampler steps, on the sample itself -- Langevin moves towards a target
distribution (predictor-corrector guidance), importance weights and resampling of particles
(Feynman-Kac correctors). The sampler calls

* ``check(guider, view)`` before any work (a one-line error for what cannot work);
* ``reset(noise)`` with the initial standard-normal noise;
* ``after_step(i, x_next, point, step, preds, result, view, executor, generator) -> x_next`` after the
  scheduler's step ``i``; model evaluations go through ``executor(..., accumulate=True)`` so they count
  in step ``i``'s NFE;
* ``report()`` for ``SampleOutput.report``.

Correctors are registered by name (``@register_corrector``) so a recipe's ``corrector: {name: fkc, ...}``
builds one strictly, like a guider.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from ...io.config import Registry
from ..guider import config_fields

CORRECTORS = Registry("corrector")


def register_corrector(name: str):
    return CORRECTORS.register(name)


class Corrector:
    name: ClassVar[str] = ""

    def check(self, guider, view) -> None:
        """Refuse, before any work, a guider or scheduler this corrector cannot serve."""

    def reset(self, x: Tensor) -> None:
        """Start a run from the initial sample ``x``."""

    def after_step(self, i: int, x_next: Tensor, point, step, preds, result, view, executor, generator) -> Tensor:
        raise NotImplementedError

    def report(self) -> dict:
        return {}

    def config(self) -> dict:
        out = {"name": type(self).name}
        for f in config_fields(self) if dataclasses.is_dataclass(self) else ():
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) \
                else value
        return out


def build_corrector(cfg: Any, path: str = "corrector") -> Corrector | None:
    """A corrector from ``{name: ..., **fields}`` (or a corrector, returned as is; ``None`` stays ``None``)."""
    if cfg is None or isinstance(cfg, Corrector):
        return cfg
    return CORRECTORS.build(cfg, path)
