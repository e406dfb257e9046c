"""The recipes' schema sections: the Gaussian-mixture ring and the ``trainer:`` section.

The helpers every room needs (``option``, ``build_dataclass``, ``find_file``, ``check_constraints``
...) live on the ground floor, :mod:`omniguide.io.config`; they are re-exported here for the
recipes' runner modules and for plugins written against this module.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..io.config import (  # noqa: F401  (re-exported: the schema API of plugins and runner modules)
    RECIPE_DIRS,
    as_number,
    build_dataclass,
    check_constraints,
    describe,
    find_file,
    option,
    require_finite,
    strict_kwargs,
)


@dataclass
class MixtureSection:
    """The Gaussian-mixture testbed's ring as a recipe section: the fields of
    :class:`omniguide.zoo.MixtureSpec`, repeated here because the zoo imports torch and a schema
    must load without it (``tests/test_cli_startup.py`` keeps the two identical)."""

    dim: int = 2
    classes: int = 3
    per_class: int = 2
    radius: float = 3.0
    std: float = 0.35
    seed: int = 0

    def spec(self) -> Any:
        """The zoo's :class:`~omniguide.zoo.MixtureSpec` with these values."""
        from ..zoo import MixtureSpec

        return MixtureSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MixtureSpec)})

    def mixture(self) -> Any:
        """The :class:`~omniguide.zoo.GaussianMixture` these values describe."""
        return self.spec().mixture()


@dataclass
class TrainerConfig:
    """The ``trainer:`` section: arguments of :class:`lightning.Trainer` (``extra`` takes any other)."""

    accelerator: str = "auto"                  # cpu | gpu | cuda | mps | auto
    devices: Any = 1                           # int, list of ids, or "auto"
    num_nodes: int = option(1, ge=1)
    strategy: str = "auto"                     # auto | ddp | fsdp | deepspeed | ...
    precision: Any = "32-true"                 # 32-true | 16-mixed | bf16-mixed | 64-true ...
    max_steps: int = option(-1, ge=-1)
    max_epochs: int | None = None
    log_every_n_steps: int = option(10, ge=1)
    enable_progress_bar: bool = True
    deterministic: bool = False
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = option(1, ge=1)
    logger: str = option("csv", choices=("csv", "tensorboard", "none"))
    process_group_backend: str | None = option(None, choices=("gloo", "nccl", "mpi"))
    timeout_s: float = option(300.0, gt=0)     # DDP collective timeout: a dead rank ends the job
    threads: int | None = option(None, ge=1)   # torch CPU threads per process (None: torch's default)
    extra: dict[str, Any] = field(default_factory=dict)


def check_trainer_values(tcfg: TrainerConfig, path: str = "trainer") -> None:
    """``devices`` and ``precision`` as Lightning accepts them, checked before anything runs
    (Lightning itself would only reject them when the Trainer is built, inside the run)."""
    check_devices(tcfg.devices, f"{path}.devices")
    check_precision(tcfg.precision, f"{path}.precision")


def check_devices(value: Any, where: str = "trainer.devices") -> None:
    """A device count >= 1, -1 (all devices), ``auto``, or device ids (a list, or ``"0,1"``)."""
    expected = "expected a number of devices >= 1, -1 (all), 'auto' or a list of device ids"
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "," in text and parts and all(p.isdigit() for p in parts):
            return
        try:
            value = int(text)
        except ValueError:
            raise errors.ConfigError(where, f"{expected}, got {value!r}") from None
    if isinstance(value, list):
        ids_ok = value and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
        if not ids_ok or len(set(value)) != len(value):
            raise errors.ConfigError(where, f"{expected} (distinct ids >= 0), got {describe(value)}")
        return
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
        raise errors.ConfigError(where, f"{expected}, got {describe(value)}")


def check_precision(value: Any, where: str = "trainer.precision") -> None:
    """One of the precisions Lightning accepts (``32-true``, ``16-mixed``, ``bf16-mixed``, 64 ...)."""
    choices = precision_choices()
    if choices and value not in choices:
        names = list(dict.fromkeys(str(c) for c in choices))
        raise errors.ConfigError(where, f"unknown precision {value!r}{errors.did_you_mean(value, names)}")


def precision_choices() -> tuple:
    """The values of Lightning's precision argument, read from its type (imports Lightning's fabric
    connector; empty when that private name is gone, and Lightning then judges at run time)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:
        return ()
    return tuple(_literal_values(_PRECISION_INPUT))


def _literal_values(hint: Any) -> list:
    """The values of a ``Literal`` or of a union of ``Literal`` types."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return [v for arg in typing.get_args(hint) for v in _literal_values(arg)]
