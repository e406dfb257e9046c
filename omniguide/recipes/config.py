"""Loading recipes: YAML (+ ``extends``) + ``key=value`` overrides -> a strict, typed config.

omegaconf does the work: files are loaded and merged with ``OmegaConf.merge``, overrides parsed
with ``OmegaConf.from_dotlist``, types converted by merging into ``OmegaConf.structured(schema)``.
This module adds what users see when something is wrong: one :class:`ConfigError` naming the
dotted path, the problem and the nearest valid choice.

Top-level keys every recipe understands besides its schema's fields:
``kind`` (the recipe), ``extends`` (base recipe file(s), relative to this file), ``run`` (the
run folder section) and ``plugins`` (modules to import first, which register components).

Layers merge key by key (lists replace), except **component sections**: a mapping with a ``name``
under a ``dict``-typed field (``guider``, ``model``, ``scheduler``, an inner ``guider.guider`` ...)
*replaces* the schema's default outright, and replaces a lower layer's mapping when it names a
different component; without a ``name``, or with the same one, it merges. So ``guider: {name:
interval, guider: {name: cfg}, sigma: [0.28, 5.42]}`` does not inherit the default CFG's
``scale``, while a child recipe's ``guider: {scale: 5}`` keeps its base's guider.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import errors
from ..io.config import RECIPE_DIRS, check_constraints, translate_omegaconf_error
from ..io.config import first_line as _first_line
from ..io.config import join as _join
from .registry import Recipe, get_recipe
from .run import RunSection
from .runners import entry_point_plugins, load_entry_point_plugins  # noqa: F401  (their home before)

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
        raise errors.ConfigError(where, f"file not found: {path}")
    import yaml

    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise errors.ConfigError(where, f"invalid YAML{at}: {problem}") from None
    except Exception as err:  # omegaconf rejects e.g. non-string keys
        raise errors.ConfigError(where, f"invalid recipe: {_first_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise errors.ConfigError(where, "a recipe must be a mapping of keys to values at the top level")
    return cfg


def load_layers(path: str | Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """The recipe's layers as plain data, lowest first: its ``extends`` base file(s) (recursively,
    left to right), then the file itself. Interpolations stay unresolved (``${...}`` text)."""
    path = Path(path).resolve()
    if path in seen:
        raise errors.ConfigError("extends", f"circular extends: {' -> '.join(p.name for p in (*seen, path))}")
    cfg = load_yaml(path, str(path) if seen else "")
    bases = cfg.pop("extends", None)
    own = OmegaConf.to_container(cfg, resolve=False)
    if bases is None:
        return [own]
    if isinstance(bases, str):
        bases = [bases]
    layers = []
    for i, base in enumerate(bases):
        if not isinstance(base, str):
            raise errors.ConfigError(f"extends.{i}", "expected a file name")
        base_path = path.parent / base
        if not base_path.is_file():
            raise errors.ConfigError("extends", f"file not found: {base} (relative to {path.parent})")
        layers += load_layers(base_path, (*seen, path))
    return [*layers, own]


# -- merging layers: component sections replace, everything else merges --------------------------
def merge_recipe(lower: Mapping, upper: Mapping, schema_cls: type, over_defaults: bool = False) -> dict:
    """``upper`` over ``lower`` (plain recipe data at the top level, ``run`` included); see the
    module docstring. ``over_defaults``: ``lower`` is the schema's defaults, which a named
    component mapping replaces even when it has the same name."""
    hints = {**typing.get_type_hints(schema_cls), "run": RunSection}
    out = dict(lower)
    for key, value in upper.items():
        out[key] = merge_data(lower[key], value, hints.get(key), over_defaults) if key in lower else value
    return out


def merge_data(lower: Any, upper: Any, hint: Any, over_defaults: bool = False) -> Any:
    """``upper`` over ``lower`` for a value of type ``hint`` (None: unknown, merged like a section)."""
    if not (isinstance(lower, Mapping) and isinstance(upper, Mapping)):
        return copy.deepcopy(upper)
    if is_component(hint) and replaces(lower, upper, over_defaults):
        return copy.deepcopy(upper)
    out = dict(lower)
    for key, value in upper.items():
        out[key] = merge_data(lower[key], value, field_hint(hint, key), over_defaults) if key in lower else value
    return out


def merge_component(base: Mapping, own: Mapping) -> dict:
    """A component config ``own`` over ``base`` by the same rule (e.g. a prompt item's ``guider``
    over the recipe's): replaced when ``own`` names another component, else merged key by key."""
    return merge_data(base, own, Any)


def replaces(lower: Mapping, upper: Mapping, over_defaults: bool = False) -> bool:
    """True when a component mapping ``upper`` replaces ``lower`` instead of merging into it: it
    names a component (``name``), or a guider preset (``preset``), other than ``lower``'s."""
    key = _identity_key(upper)
    return key is not None and (over_defaults or upper[key] != lower.get(key))


def _identity_key(data: Mapping) -> str | None:
    """The key that names what a component mapping builds: ``name``, else ``preset`` (guider presets)."""
    return "name" if "name" in data else "preset" if "preset" in data else None


def is_component(hint: Any) -> bool:
    """A value under a ``dict``-typed field (or an untyped one): where components are configured."""
    return hint is Any or typing.get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping)


def field_hint(hint: Any, key: Any) -> Any:
    """The type of ``key`` inside a value of type ``hint`` (None when the schema does not say)."""
    hint = _strip_optional(hint)
    if is_component(hint):
        return Any
    if dataclasses.is_dataclass(hint):
        return typing.get_type_hints(hint).get(str(key))
    if typing.get_origin(hint) in (list, tuple, Sequence):
        args = typing.get_args(hint)
        return args[0] if args else Any
    return None


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return hint


def _path_hint(schema_cls: type, dotted: str) -> Any:
    """The schema type at a dotted path (``guider.guider`` -> Any, ``trainer`` -> TrainerConfig)."""
    parts = dotted.split(".")
    hint = {**typing.get_type_hints(schema_cls), "run": RunSection}.get(parts[0])
    for part in parts[1:]:
        hint = field_hint(hint, part)
    return hint


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["guider.scale=5", "trainer.devices=2"]`` -> ``[(key, value)]`` (values typed by omegaconf)."""
    pairs = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or any(not part for part in key.split(".")):
            raise errors.ConfigError(f"override '{item}'", "expected key.path=value")
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
        except Exception as err:
            raise errors.ConfigError(key, f"cannot parse override value: {_first_line(err)}") from None
        pairs.append((key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return pairs


def apply_overrides(cfg: DictConfig, pairs: Sequence[tuple[str, Any]], schema_cls: type | None = None) -> DictConfig:
    """Set each dotted key (list items by index: ``guiders.1.scale=5``) with ``OmegaConf.update``.

    With the recipe's schema, an override that names another component (``guider.name=apg``, or
    ``guider={name: apg}``) first resets that section to the new component, whatever the order of
    the overrides, so fields of the old one do not leak into it."""
    def in_component(dotted: str) -> bool:
        return schema_cls is not None and bool(dotted) and is_component(_path_hint(schema_cls, dotted))

    for key, value in pairs:   # renames first: `guider.scale=5 guider.name=apg` keeps the scale
        parent, _, leaf = key.rpartition(".")
        if leaf in ("name", "preset") and in_component(parent) and _select(cfg, key) != value:
            _update(cfg, parent, {leaf: value}, merge=False)
    for key, value in pairs:
        current = _select(cfg, key)
        reset = (isinstance(value, Mapping) and OmegaConf.is_dict(current) and in_component(key)
                 and replaces(current, value))
        _update(cfg, key, value, merge=not reset)
    return cfg


def _select(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key, or None where there is none (or the path cannot be followed:
    ``prompts.x`` on a list; applying the override reports that)."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:
        return None


def _update(cfg: DictConfig, key: str, value: Any, merge: bool) -> None:
    try:
        OmegaConf.update(cfg, key, value, merge=merge, force_add=True)
    except Exception as err:
        raise errors.ConfigError(key, f"cannot apply override: {_first_line(err)}") from None


def load_raw(path: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The merged, untyped recipe: schema defaults, the file with its bases, then overrides
    (component sections follow the replace rule of the module docstring)."""
    pairs = parse_overrides(overrides)
    for key, _ in pairs:
        if key.split(".")[0] == "extends":
            raise errors.ConfigError(key, "base recipes can only be named in the recipe file")
    layers = load_layers(path) if path is not None else []
    kind = dict(pairs).get("kind", _last(layers, "kind"))
    plugins = dict(pairs).get("plugins", _last(layers, "plugins")) or []
    if isinstance(plugins, (list, ListConfig)):
        import_plugins(list(plugins))
    recipe = get_recipe(kind)
    data: dict = {}
    for layer in layers:
        data = merge_recipe(data, layer, recipe.schema)
    defaults = OmegaConf.to_container(OmegaConf.structured(recipe.schema))
    merged = OmegaConf.create(merge_recipe(defaults, data, recipe.schema, over_defaults=True))
    return apply_overrides(merged, pairs, recipe.schema)


def _last(layers: Sequence[Mapping], key: str) -> Any:
    """``key``'s value in the highest layer that sets it (None if none does)."""
    return next((layer[key] for layer in reversed(layers) if key in layer), None)


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
        except errors.ConfigError:
            raise
        except Exception as err:
            raise errors.ConfigError(where, f"cannot import plugin '{module}': {_first_line(err)}") from None


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


# -- the typed config --------------------------------------------------------------------------
def resolve(raw: DictConfig, source: Path | None = None) -> Resolved:
    """Check ``raw`` against its recipe's schema and return the typed config."""
    try:
        data = OmegaConf.to_container(raw, resolve=True)
    except Exception as err:  # bad ${interpolation}
        raise translate_omegaconf_error(err) from None
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise errors.ConfigError("plugins", "expected a list of module names")
    import_plugins(plugins)
    recipe = get_recipe(data.get("kind"))
    body = {k: v for k, v in data.items() if k not in FRAMEWORK_KEYS}
    check_structure(recipe.schema, body, "", extra_keys=FRAMEWORK_KEYS)
    cfg = typed(recipe.schema, body, "")
    if data.get("run") is not None:
        check_structure(RunSection, data["run"], "run")
    run = typed(RunSection, data.get("run") or {}, "run")
    base_dirs = (source.parent.resolve(),) if source is not None else ()
    RECIPE_DIRS[:] = base_dirs
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
    """A ``cls`` instance from plain ``data`` through an omegaconf structured merge.

    The merge would fold each ``dict`` field's default into the data's mapping again (a default
    ``{name: cfg, scale: 3}`` under a given ``{name: interval, ...}``); component mappings with a
    ``name`` are put back as the data gives them (omegaconf converts nothing inside ``dict[str, Any]``)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
    except Exception as err:
        raise translate_omegaconf_error(err, path) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        key = str(missing[0]).replace("[", ".").replace("]", "")
        raise errors.ConfigError(_join(path, key), "required value is missing")
    obj = OmegaConf.to_object(merged)
    _keep_named_components(obj, data)
    return obj


def _keep_named_components(obj: Any, data: Any) -> None:
    """Set every ``dict`` field of the dataclass tree ``obj`` whose ``data`` is a named mapping to
    that mapping (see :func:`typed`); sections and lists of sections are followed."""
    if dataclasses.is_dataclass(obj) and isinstance(data, Mapping):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            given = data.get(f.name)
            if is_component(_strip_optional(hints[f.name])) and isinstance(given, Mapping) \
                    and _identity_key(given) is not None:
                setattr(obj, f.name, copy.deepcopy(dict(given)))
            else:
                _keep_named_components(getattr(obj, f.name), given)
    elif isinstance(obj, list) and isinstance(data, list):
        for item, given in zip(obj, data):
            _keep_named_components(item, given)


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
            raise errors.ConfigError(path or "<root>", f"expected a section (mapping), got {_kind(data)}")
        hints = typing.get_type_hints(target)
        known = [f.name for f in dataclasses.fields(target)]
        for key, value in data.items():
            if key not in known:
                hint = errors.did_you_mean(key, [*known, *extra_keys])
                raise errors.ConfigError(_join(path, str(key)), f"unknown key{hint}")
            check_structure(hints[key], value, _join(path, key))
    elif origin in (list, tuple, Sequence) or target in (list, tuple):
        if not isinstance(data, list):
            raise errors.ConfigError(path, f"expected a list, got {_kind(data)}")
        for i, item in enumerate(data):
            check_structure(args[0] if args else Any, item, _join(path, str(i)))
    elif origin in (dict, Mapping) or target in (dict,):
        if not isinstance(data, Mapping):
            raise errors.ConfigError(path, f"expected a mapping, got {_kind(data)}")
    elif target in (int, float, str, bool) and isinstance(data, (Mapping, list)):
        raise errors.ConfigError(path, f"expected {target.__name__}, got {_kind(data)}")
    elif target in (int, float, bool) and data is not None:
        _check_scalar(target, data, path)


def _check_scalar(target: type, data: Any, path: str) -> None:
    """A value omegaconf cannot convert to ``target``, reported at its full path (omegaconf's own
    message names the path from the nearest section only, e.g. ``scales.1`` inside a list item)."""
    from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode

    node = {int: IntegerNode, float: FloatNode, bool: BooleanNode}[target]
    try:
        node(value=data)
    except Exception as err:
        message = _first_line(err).replace("could not be converted to", "is not a valid")
        # a node outside a config leaves omegaconf's template unfilled; fill it as omegaconf would
        message = message.replace("$VALUE_TYPE", type(data).__name__).replace("$VALUE", str(data))
        raise errors.ConfigError(path, message) from None


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
