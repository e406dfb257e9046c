"""Loading recipes: YAML (+ ``extends``) + ``key=value`` overrides -> a strict, typed config.

omegaconf does the work: files are loaded and merged with ``OmegaConf.merge``, overrides parsed
with ``OmegaConf.from_dotlist``, types converted by merging into ``OmegaConf.structured(schema)``.
This module adds what users see when something is wrong: one :class:`ConfigError` naming the
dotted path, the problem and the nearest valid choice.

Top-level keys every recipe understands besides its schema's fields:
``kind`` (the recipe), ``extends`` (base recipe file(s), relative to this file), ``run`` (the
run folder section) and ``plugins`` (modules to import first, which register components).
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..core.errors import ConfigError, did_you_mean
from . import schema
from .registry import Recipe, get_recipe
from .run import RunSection
from .schema import check_constraints

FRAMEWORK_KEYS = ("kind", "extends", "run", "plugins")


@dataclass
class Resolved:
    """A loaded recipe: its kind, typed config, run section and the full resolved YAML."""

    recipe: Recipe
    cfg: Any                 # an instance of recipe.schema
    run: RunSection
    source: Path | None
    yaml: str                # resolved config, as written to the run folder


# -- YAML and overrides ------------------------------------------------------------------------
def load_yaml(path: str | Path, where: str = "") -> DictConfig:
    """One YAML mapping; a missing file or bad YAML is a ConfigError naming the file."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise ConfigError(where, f"file not found: {path}")
    import yaml

    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(where, f"invalid YAML{at}: {problem}") from None
    except Exception as err:  # omegaconf rejects e.g. non-string keys
        raise ConfigError(where, f"invalid recipe: {_first_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(where, "a recipe must be a mapping of keys to values at the top level")
    return cfg


def load_with_extends(path: str | Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe file merged over its ``extends`` base file(s) (recursively, left to right)."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError("extends", f"circular extends: {' -> '.join(p.name for p in (*seen, path))}")
    cfg = load_yaml(path, str(path) if seen else "")
    bases = cfg.pop("extends", None)
    if bases is None:
        return cfg
    if isinstance(bases, str):
        bases = [bases]
    layers = []
    for i, base in enumerate(bases):
        if not isinstance(base, str):
            raise ConfigError(f"extends.{i}", "expected a file name")
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError("extends", f"file not found: {base} (relative to {path.parent})")
        layers.append(load_with_extends(base_path, (*seen, path)))
    return OmegaConf.merge(*layers, cfg)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["guider.scale=5", "trainer.devices=2"]`` -> ``[(key, value)]`` (values typed by omegaconf)."""
    pairs = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}'", "expected key.path=value")
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
        except Exception as err:
            raise ConfigError(key, f"cannot parse override value: {_first_line(err)}") from None
        pairs.append((key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return pairs


def apply_overrides(cfg: DictConfig, pairs: Sequence[tuple[str, Any]]) -> DictConfig:
    """Set each dotted key (list items by index: ``guiders.1.scale=5``) with ``OmegaConf.update``."""
    for key, value in pairs:
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        except Exception as err:
            raise ConfigError(key, f"cannot apply override: {_first_line(err)}") from None
    return cfg


def load_raw(path: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The merged, untyped recipe: schema defaults, the file with its bases, then overrides."""
    pairs = parse_overrides(overrides)
    for key, _ in pairs:
        if key.split(".")[0] == "extends":
            raise ConfigError(key, "base recipes can only be named in the recipe file")
    cfg = load_with_extends(path) if path is not None else OmegaConf.create({})
    kind = dict(pairs).get("kind", cfg.get("kind"))
    plugins = dict(pairs).get("plugins", cfg.get("plugins")) or []
    if isinstance(plugins, (list, ListConfig)):
        import_plugins(list(plugins))
    recipe = get_recipe(kind)
    defaults = OmegaConf.to_container(OmegaConf.structured(recipe.schema))
    for key, value in cfg.items():
        # a component chosen by name in the file replaces the default component; merging their keys
        # would leak the default's settings (the default guider's `scale` into an `interval`)
        default = defaults.get(key)
        if isinstance(value, DictConfig) and isinstance(default, dict) and "name" in default:
            defaults.pop(key)
    return apply_overrides(OmegaConf.merge(OmegaConf.create(defaults), cfg), pairs)


def import_plugins(modules: Sequence[str], path: str = "plugins") -> None:
    """Import plugin modules (dotted names or ``.py`` files) so their decorators register components.
    Each is imported once per process, like any module."""
    for i, module in enumerate(modules):
        where = f"{path}.{i}" if path == "plugins" else path
        try:
            if str(module).endswith(".py"):
                _import_file(Path(module))
            else:
                importlib.import_module(module)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(where, f"cannot import plugin '{module}': {_first_line(err)}") from None


def _import_file(file: Path) -> None:
    import importlib.util
    import sys

    if not file.is_file():
        raise ModuleNotFoundError(f"no such file: {file}")
    name = "omniguide_plugin_" + "".join(c if c.isalnum() else "_" for c in str(file.resolve()))
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_entry_point_plugins() -> None:
    """Import every module registered under the ``omniguide.plugins`` entry-point group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="omniguide.plugins"):
        try:
            ep.load()
        except Exception as err:
            raise ConfigError(f"entry point '{ep.name}'", f"cannot load plugin: {_first_line(err)}") from None


# -- the typed config --------------------------------------------------------------------------
def resolve(raw: DictConfig, source: Path | None = None) -> Resolved:
    """Check ``raw`` against its recipe's schema and return the typed config."""
    try:
        data = OmegaConf.to_container(raw, resolve=True)
    except Exception as err:  # bad ${interpolation}
        raise translate_omegaconf_error(err) from None
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError("plugins", "expected a list of module names")
    import_plugins(plugins)
    recipe = get_recipe(data.get("kind"))
    body = {k: v for k, v in data.items() if k not in FRAMEWORK_KEYS}
    check_structure(recipe.schema, body, "", extra_keys=FRAMEWORK_KEYS)
    cfg = typed(recipe.schema, body, "")
    if data.get("run") is not None:
        check_structure(RunSection, data["run"], "run")
    run = typed(RunSection, data.get("run") or {}, "run")
    base_dirs = (source.parent.resolve(),) if source is not None else ()
    schema.RECIPE_DIRS[:] = base_dirs
    check_constraints(cfg, "", base_dirs)
    full = {"kind": recipe.name, **({"plugins": plugins} if plugins else {}),
            "run": dataclasses.asdict(run), **OmegaConf.to_container(OmegaConf.structured(cfg))}
    return Resolved(recipe, cfg, run, source, OmegaConf.to_yaml(full))


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Resolved:
    """Load, merge, check and type a recipe file (``path`` None: overrides only, ``kind=...``)."""
    from . import runners

    runners.load_all()
    source = Path(path) if path is not None else None
    return resolve(load_raw(path, overrides), source)


def typed(cls: type, data: Mapping, path: str) -> Any:
    """A ``cls`` instance from plain ``data`` through an omegaconf structured merge."""
    try:
        base = OmegaConf.structured(cls)
        for key, value in data.items():   # a component named in data replaces the default one (see load_raw)
            default = base.get(key) if isinstance(base, DictConfig) else None
            if isinstance(value, Mapping) and isinstance(default, DictConfig) and "name" in default \
                    and OmegaConf.get_type(base, key) in (dict, None):
                base[key] = value
        merged = OmegaConf.merge(base, data)
    except Exception as err:
        raise translate_omegaconf_error(err, path) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        key = str(missing[0]).replace("[", ".").replace("]", "")
        raise ConfigError(_join(path, key), "required value is missing")
    return OmegaConf.to_object(merged)


def check_structure(target: Any, data: Any, path: str, extra_keys: Sequence[str] = ()) -> None:
    """Unknown keys and section/list/scalar mismatches, with the nearest valid key.

    omegaconf would reject these too, but its messages lose the path inside lists and the
    valid choices; scalar type conversion is left to omegaconf (:func:`typed`)."""
    origin = typing.get_origin(target)
    args = typing.get_args(target)
    if origin is typing.Union or origin is types.UnionType:
        if data is None:
            return
        target = next((a for a in args if a is not type(None)), Any)
        origin, args = typing.get_origin(target), typing.get_args(target)
    if dataclasses.is_dataclass(target):
        if not isinstance(data, Mapping):
            raise ConfigError(path or "<root>", f"expected a section (mapping), got {_kind(data)}")
        hints = typing.get_type_hints(target)
        known = [f.name for f in dataclasses.fields(target)]
        for key, value in data.items():
            if key not in known:
                hint = did_you_mean(key, [*known, *extra_keys])
                raise ConfigError(_join(path, str(key)), f"unknown key{hint}")
            check_structure(hints[key], value, _join(path, key))
    elif origin in (list, tuple, Sequence) or target in (list, tuple):
        if not isinstance(data, list):
            raise ConfigError(path, f"expected a list, got {_kind(data)}")
        for i, item in enumerate(data):
            check_structure(args[0] if args else Any, item, _join(path, str(i)))
    elif origin in (dict, Mapping) or target in (dict,):
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_kind(data)}")
    elif target in (int, float, str, bool) and isinstance(data, (Mapping, list)):
        raise ConfigError(path, f"expected {target.__name__}, got {_kind(data)}")


def translate_omegaconf_error(err: Exception, prefix: str = "") -> ConfigError:
    """An omegaconf exception as a one-line ConfigError at ``prefix`` + the error's key path."""
    if isinstance(err, ConfigError):
        return err
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
    key = str(key).replace("[", ".").replace("]", "")
    message = getattr(err, "msg", None) or str(err)
    message = _first_line(message).replace("could not be converted to", "is not a valid")
    message = message.split(". Did you mean")[0]
    return ConfigError(_join(prefix, key) or "<config>", message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _first_line(err: Any) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__
