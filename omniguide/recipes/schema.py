"""Schema helpers: bounded fields, strict dataclass checks, and the ``trainer:`` section.

``option(default, ge=0, choices=[...], file=True)`` declares a field with a constraint that the
loader checks after omegaconf has converted types; a violation is a
:class:`~omniguide.core.errors.ConfigError` naming the dotted path.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, did_you_mean


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
    """Check every ``option`` constraint of a dataclass instance tree; resolve ``file`` fields to
    absolute paths (looked up in the current folder, then in ``base_dirs``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            check_constraints(value, where, base_dirs)
            continue
        meta = f.metadata
        if value is None or not meta:
            continue
        _check_bounds(value, meta, where)
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(where, f"'{value}' is not allowed{did_you_mean(value, meta['choices'])}")
        if meta.get("file"):
            setattr(obj, f.name, str(find_file(value, where, base_dirs)))


def _check_bounds(value: Any, meta: Mapping, where: str) -> None:
    tests = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
             "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for key, (ok, sign) in tests.items():
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(where, f"must be {sign} {bound}, got {value}")


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
    raise ConfigError(where, f"file not found: {value}")


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
            raise ConfigError(f"{path}.{key}", f"unknown key for '{name}'{did_you_mean(key, known)}")
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
            raise ConfigError(f"{path}.{missing[0]}", "required value is missing")
        obj = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as err:  # omegaconf's own validation errors, re-rooted at `path`
        raise translate_omegaconf_error(err, path) from None
    check_constraints(obj, path)
    return obj


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
