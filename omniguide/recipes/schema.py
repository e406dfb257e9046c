"""Schema helpers: bounded fields, strict dataclass checks, and the ``trainer:`` section.

``option(default, ge=0, choices=[...], file=True)`` declares a field with a constraint that the
loader checks after omegaconf has converted types; a violation is a
:class:`~omniguide.core.errors.ConfigError` naming the dotted path.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from . import errors


def option(default: Any = MISSING, *, factory: Any = MISSING, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple | list | None = None, file: bool = False) -> Any:
    """A dataclass field with a range, a set of choices or "must be an existing file" (``file``)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "file": file,
            "choices": tuple(choices) if choices else None}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_constraints(obj: Any, path: str = "", base_dirs: tuple[Path, ...] = ()) -> None:
    """Check every ``option`` constraint of a dataclass instance tree (sections, and lists of
    sections); a ``float`` field (or ``list[float]`` entry) must be finite; resolve ``file`` fields
    to absolute paths (looked up in the current folder, then in ``base_dirs``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            check_constraints(value, where, base_dirs)
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_constraints(item, f"{where}.{i}", base_dirs)
        _check_finite(value, hints.get(f.name), where)
        meta = f.metadata
        if value is None or not meta:
            continue
        _check_bounds(value, meta, where)
        if meta.get("choices") and value not in meta["choices"]:
            raise errors.ConfigError(where, f"'{value}' is not allowed{errors.did_you_mean(value, meta['choices'])}")
        if meta.get("file"):
            setattr(obj, f.name, str(find_file(value, where, base_dirs)))


def _check_finite(value: Any, hint: Any, where: str) -> None:
    """NaN or infinity in a field typed ``float`` (or in a ``list[float]``) is an error: omegaconf
    accepts ``nan`` and ``inf`` as floats, and no float setting of a recipe means either."""
    if _is_float_type(hint) and isinstance(value, float):
        require_finite(value, where)
    elif isinstance(value, list) and typing.get_origin(hint) is list and _is_float_type(typing.get_args(hint)[0]):
        for i, item in enumerate(value):
            require_finite(item, f"{where}.{i}")


def _is_float_type(hint: Any) -> bool:
    """``float``, ``float | None`` or ``Optional[float]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return float in typing.get_args(hint)
    return hint is float


def require_finite(value: Any, where: str) -> None:
    """A ConfigError at ``where`` unless ``value`` is a finite real number (not a bool, not text:
    ``scale=nan`` on the command line reaches an untyped field as the text ``'nan'``)."""
    number = as_number(value)
    if number is None:
        raise errors.ConfigError(where, f"expected a number, got {describe(value)}")
    if not math.isfinite(number):
        raise errors.ConfigError(where, f"must be a finite number, got {value!r}")
    if isinstance(value, str):
        raise errors.ConfigError(where, f"expected a number, not text, got {value!r}")


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number or the text of one (``"nan"``, ``"5"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def describe(value: Any) -> str:
    """A value as an error message names it: ``'abc'``, ``a list [1, 2]``, ``a mapping {...}``."""
    if isinstance(value, Mapping):
        return f"a mapping {dict(value)}"
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)}"
    if isinstance(value, bool):
        return f"a boolean {value}"
    return repr(value)


def _check_bounds(value: Any, meta: Mapping, where: str) -> None:
    tests = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
             "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for key, (ok, sign) in tests.items():
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise errors.ConfigError(where, f"must be {sign} {bound}, got {value}")


# Folders of the recipe being loaded (set by the loader): relative paths inside component configs
# (``model.weights``) are looked up there after the current folder, like schema fields are.
RECIPE_DIRS: list[Path] = []


def find_file(value: str, where: str, base_dirs: tuple[Path, ...] = ()) -> Path:
    """An existing file: ``value`` as given (absolute or relative to the current folder), else
    relative to one of ``base_dirs`` or :data:`RECIPE_DIRS` (the recipe file's folder)."""
    path = Path(value).expanduser()
    dirs = [*base_dirs, *RECIPE_DIRS]
    candidates = [path] + ([] if path.is_absolute() else [Path(b) / path for b in dirs])
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise errors.ConfigError(where, f"file not found: {value}")


def strict_kwargs(target: Any, cfg: Mapping, path: str, skip: tuple[str, ...] = ("name",)) -> dict:
    """``cfg`` minus ``skip`` keys, checked against ``target``'s dataclass fields or signature."""
    if dataclasses.is_dataclass(target):
        known = [f.name for f in dataclasses.fields(target) if f.init]
    else:
        params = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return {k: v for k, v in cfg.items() if k not in skip}
        known = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
    out = {}
    for key, value in cfg.items():
        if key in skip:
            continue
        if key not in known:
            name = cfg.get("name", getattr(target, "__name__", "component"))
            hint = errors.did_you_mean(key, known)
            raise errors.ConfigError(f"{path}.{key}", f"unknown key for '{name}'{hint}")
        out[key] = value
    return out


def build_dataclass(cls: type, cfg: Mapping, path: str, skip: tuple[str, ...] = ("name",)) -> Any:
    """``cls(**cfg)`` with unknown keys, bad types and constraints reported against ``path``."""
    from omegaconf import OmegaConf

    from .config import translate_omegaconf_error

    kwargs = strict_kwargs(cls, cfg, path, skip)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), kwargs)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise errors.ConfigError(f"{path}.{missing[0]}", "required value is missing")
        obj = OmegaConf.to_object(merged)
    except errors.ConfigError:
        raise
    except Exception as err:  # omegaconf's own validation errors, re-rooted at `path`
        raise translate_omegaconf_error(err, path) from None
    check_constraints(obj, path)
    return obj


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
