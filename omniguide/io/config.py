"""The ground floor's config helpers: torch-free, so every room (and ``omniguide show``) can use them.

* ``option(default, ge=0, choices=[...], file=True)`` declares a schema field with a constraint that
  :func:`check_constraints` checks after omegaconf has converted types; a violation is a
  :class:`~omniguide.errors.ConfigError` naming the dotted path.
* :func:`build_dataclass` builds a schema dataclass from a mapping (omegaconf checks the types);
  :func:`find_file` finds a file given in a config next to the recipe (:data:`RECIPE_DIRS`).
* :class:`Registry` holds one kind of component by name; :meth:`Registry.build` (:func:`construct`)
  is the one way to build guiders, presets, scales, correctors, scorers, objectives and recipe
  models from ``{name: ..., key: value}``. Values are converted by their fields' declared types
  (resolved type hints, never type names as text), with conversions the rooms register for their
  own types (:func:`register_conversion`), so this floor names no class above it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean


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
            raise ConfigError(where, f"'{value}' is not allowed{did_you_mean(value, meta['choices'])}")
        if meta.get("file"):
            setattr(obj, f.name, str(find_file(value, where, base_dirs)))


def _check_finite(value: Any, hint: Any, where: str) -> None:
    """NaN or infinity in a field typed ``float`` (or in a ``list[float]``) is an error: omegaconf
    accepts ``nan`` and ``inf`` as floats, and no float setting of a recipe means either."""
    if float in declared_types(hint) and isinstance(value, float):
        require_finite(value, where)
    elif isinstance(value, list) and typing.get_origin(hint) is list \
            and float in declared_types(typing.get_args(hint)[0]):
        for i, item in enumerate(value):
            require_finite(item, f"{where}.{i}")


def require_finite(value: Any, where: str) -> None:
    """A ConfigError at ``where`` unless ``value`` is a finite real number (not a bool, not text:
    ``scale=nan`` on the command line reaches an untyped field as the text ``'nan'``)."""
    number = as_number(value)
    if number is None:
        raise ConfigError(where, f"expected a number, got {describe(value)}")
    if not math.isfinite(number):
        raise ConfigError(where, f"must be a finite number, got {value!r}")
    if isinstance(value, str):
        raise ConfigError(where, f"expected a number, not text, got {value!r}")


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


def strict_kwargs(target: Any, cfg: Mapping, path: str, skip: tuple[str, ...] = ("name",), what: str = "") -> dict:
    """``cfg`` minus ``skip`` keys, checked against ``target``'s dataclass fields or signature; an
    unknown key is a ConfigError at ``path.key`` naming ``what`` (``guider 'cfg'``) and the nearest key."""
    known = init_parameters(target)
    out = {}
    for key, value in cfg.items():
        if key in skip:
            continue
        if known is not None and key not in known:
            what = what or f"'{cfg.get('name', getattr(target, '__name__', 'component'))}'"
            raise ConfigError(f"{path}.{key}", f"unknown key for {what}{did_you_mean(key, known)}")
        out[key] = value
    return out


def init_parameters(target: Any) -> list[str] | None:
    """The keyword arguments ``target`` takes: a dataclass's init fields, else its signature's
    parameters (None when it takes ``**kwargs``, i.e. any key)."""
    if dataclasses.is_dataclass(target):
        return [f.name for f in dataclasses.fields(target) if f.init]
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]


def build_dataclass(cls: type, cfg: Mapping, path: str, skip: tuple[str, ...] = ("name",), what: str = "") -> Any:
    """``cls(**cfg)`` for a schema dataclass (plain field types, ``option`` constraints): omegaconf
    converts and checks the types; unknown keys, bad types and constraints are reported against ``path``."""
    from omegaconf import OmegaConf  # imported when first needed: the core's builds never need it

    kwargs = strict_kwargs(cls, cfg, path, skip, what)
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


def translate_omegaconf_error(err: Exception, prefix: str = "") -> Exception:
    """An omegaconf exception as a one-line ConfigError at ``prefix`` + the error's key path."""
    if isinstance(err, ConfigError):
        return err
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
    key = str(key).replace("[", ".").replace("]", "")
    message = getattr(err, "msg", None) or str(err)
    message = first_line(message).replace("could not be converted to", "is not a valid")
    message = message.split(". Did you mean")[0]
    return ConfigError(join(prefix, key) or "<config>", message)


def join(path: str, key: str) -> str:
    """``path.key`` (either alone when the other is empty)."""
    return f"{path}.{key}" if path and key else path or key


def first_line(err: Any) -> str:
    """The first non-empty line of an error's text (or its class name)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


# -- components by name: one registry class, one builder -------------------------------------------
LOADERS: dict[str, list[Callable[[], Any]]] = {}   # registry kind -> loaders for every registry of that kind


class Registry:
    """Names -> classes (or factories) of one kind of component.

    ``noun`` names the kind in "unknown key for <noun> 'x'" (default: ``kind``); ``typed`` registries
    hold schema dataclasses built through omegaconf (:func:`build_dataclass`: recipe models).
    ``loaders`` are called once, the first time a name is looked up or listed, for registries whose
    entries live in packages the registry's room does not import (guider presets from the modalities);
    so are those in :data:`LOADERS` under the registry's ``kind`` (added by the package root, which sees every room)."""

    def __init__(self, kind: str, noun: str | None = None, typed: bool = False):
        self.kind = kind
        self.noun = noun or kind
        self.typed = typed
        self._items: dict[str, Any] = {}
        self.loaders: list[Callable[[], Any]] = []

    def _load(self) -> None:
        self.loaders.extend(LOADERS.pop(self.kind, ()))
        while self.loaders:
            self.loaders.pop(0)()

    def register(self, name: str) -> Callable:
        """Decorator: register ``obj`` under ``name`` (a class also gets ``obj.name = name``)."""

        def decorator(obj):
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._items[name]} and {obj})")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorator

    def get(self, name: Any, path: str = "name") -> Any:
        """The object registered as ``name``; a ConfigError at ``path`` with the nearest name otherwise."""
        if not isinstance(name, str):
            raise ConfigError(path, f"expected the name of a {self.kind}, got {describe(name)}")
        if name not in self._items:
            self._load()
        if name not in self._items:
            raise ConfigError(path, f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: Any) -> bool:
        if name not in self._items:
            self._load()
        return name in self._items

    def build(self, cfg: Any, path: str, key: str = "name") -> Any:
        """The component ``{name: ..., **fields}`` names (a name alone works too), built by
        :func:`construct` (or :func:`build_dataclass` for a ``typed`` registry); errors name the
        full key path, with the nearest valid name or key."""
        if isinstance(cfg, str):
            cfg = {key: cfg}
        if not isinstance(cfg, Mapping):
            raise ConfigError(path, f"expected a {self.noun} config with a '{key}', got {describe(cfg)}")
        if key not in cfg:
            raise ConfigError(f"{path}.{key}", f"missing; one of: {', '.join(self.names())}")
        target = self.get(cfg[key], f"{path}.{key}")
        what = f"{self.noun} '{cfg[key]}'"
        if self.typed:
            return build_dataclass(target, cfg, path, skip=(key,), what=what)
        return construct(target, {k: v for k, v in cfg.items() if k != key}, path, what)


def construct(target: Callable, cfg: Mapping, path: str, what: str, errors_as: str | None = None) -> Any:
    """``target(**cfg)``, each value converted by its declared type (:func:`convert`).

    Unknown keys are ConfigErrors at ``path.key`` naming ``what``; a ConfigError the target raises
    is re-rooted at ``path``, a TypeError or ValueError becomes one at ``path`` (prefixed
    ``errors_as: `` when given)."""
    kwargs = strict_kwargs(target, cfg, path, skip=(), what=what)
    declared = declared_fields(target)
    kwargs = {k: convert(v, declared.get(k, ()), join(path, k)) for k, v in kwargs.items()}
    try:
        return target(**kwargs)
    except ConfigError as err:
        raise ConfigError(join(path, err.path), err.message) from None
    except (TypeError, ValueError) as err:   # a bad argument the target itself refused
        raise ConfigError(path, f"{errors_as}: {err}" if errors_as else str(err)) from None


# declared class -> convert(value, path): a config value for a field of that type (unchanged when
# the conversion does not apply to the value)
CONVERSIONS: dict[type, Callable[[Any, str], Any]] = {}


def register_conversion(cls: type, conversion: Callable[[Any, str], Any]) -> None:
    """Build config values of fields declared as ``cls`` (alone or in a union) with
    ``conversion(value, path)``; a value that already is a ``cls`` is left alone."""
    CONVERSIONS[cls] = conversion


def convert(value: Any, declared: tuple[type, ...], path: str) -> Any:
    """A config value for a field that admits the classes ``declared``: a list becomes a tuple where
    the field takes one, else the first registered conversion that applies builds it (lists stay
    tuples otherwise)."""
    if isinstance(value, list) and any(issubclass(t, tuple) for t in declared):
        return _tuples(value)
    for t in declared:
        for cls, conversion in CONVERSIONS.items():
            if issubclass(t, cls) and not isinstance(value, cls):
                out = conversion(value, path)
                if out is not value:
                    return out
    return _tuples(value) if isinstance(value, list) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def declared_fields(target: Any) -> dict[str, tuple[type, ...]]:
    """Each init field (or parameter) of ``target`` -> the classes its resolved type hint admits
    (empty where a hint is missing or cannot be resolved)."""
    try:
        hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) or not isinstance(target, type)
                                      else target.__init__)
    except Exception:  # a hint naming what its module only imports for type checkers: no conversion
        hints = {}
    return {name: declared_types(hint) for name, hint in hints.items()}


def declared_types(hint: Any) -> tuple[type, ...]:
    """The classes a type hint admits: ``float | Tensor | None`` -> (float, Tensor, NoneType); a
    generic gives its origin (``tuple[float, ...]`` -> tuple, ``Mapping[str, Guider]`` -> Mapping)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in declared_types(arg))
    if origin is not None:
        return (origin,) if isinstance(origin, type) else ()
    return (hint,) if isinstance(hint, type) else ()
