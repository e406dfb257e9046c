"""String registries with a decorator, and strict construction from plain configs.

    @register_guider("my-method")
    @dataclass
    class MyMethod(Guider):
        scale: float = 3.0

    build_guider({"name": "my-method", "scale": 5})        # -> MyMethod(scale=5)
    build_guider({"name": "my-method", "scle": 5})
    # ConfigError: guider.scle: unknown key for guider 'my-method'; did you mean 'scale'?
    build_guider({"preset": "ace-step", "scale": 10})     # a named configuration (register_preset)

A guider field that holds another guider is built recursively (``interval``, ``schedule``); a
scale given as ``{shape: linear, scale: 7}`` becomes a :class:`~omniguide.core.scale.ScaleSchedule`,
and ``{name: piecewise, values: [...], at: [...]}`` any registered dynamic scale
(:data:`SCALES`; ``@register_scale("name")`` adds one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .axes import Axes
from .errors import ConfigError, did_you_mean
from .needs import NEEDS
from .scale import DynamicScale, Piecewise, ScaleSchedule


class Registry:
    """Names -> classes (or factories) of one kind of component.

    ``loaders`` are called once, the first time a name is looked up or listed, for registries whose
    entries live in packages the core does not import (guider presets register from the modalities)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self.loaders: list[Callable[[], Any]] = []

    def _load(self) -> None:
        while self.loaders:
            self.loaders.pop(0)()

    def register(self, name: str) -> Callable:
        def decorator(obj):
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._items[name]} and {obj})")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorator

    def get(self, name: str, path: str = "name") -> Any:
        if not isinstance(name, str):
            raise ConfigError(path, f"expected a {self.kind} name (a string), got {type(name).__name__}")
        if name not in self._items:
            self._load()
        if name not in self._items:
            raise ConfigError(path, f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        if name not in self._items:
            self._load()
        return name in self._items


GUIDERS = Registry("guider")
SCALES = Registry("scale")


def register_guider(name: str) -> Callable:
    """Class decorator: make a :class:`~omniguide.core.guider.Guider` dataclass buildable by name."""
    return GUIDERS.register(name)


def guider_needs(name: str) -> dict[str, str]:
    """``{need: why}`` that the guider registered as ``name`` declares (its class's ``needs``)."""
    return dict(getattr(GUIDERS.get(name), "needs", {}))


def guiders_needing(*needs: str) -> list[str]:
    """The registered guiders whose declared needs include any of ``needs``, sorted:
    ``guiders_needing(*MODULES)`` are the guiders that perturb a module of the model."""
    return [name for name in GUIDERS.names() if set(guider_needs(name)) & set(needs)]


def guiders_served(provided: Iterable[str]) -> list[str]:
    """The registered guiders whose declared needs of the model and the user (:data:`NEEDS`) are
    all ``provided``, sorted (the driver's requirements are checked when it starts)."""
    provided = set(provided)
    return [name for name in GUIDERS.names() if set(guider_needs(name)) & set(NEEDS) <= provided]


def need_fields(cls: type, need: str) -> list[str]:
    """The fields of guider class ``cls`` that take what ``need`` names (a scorer, a second model):
    those declared with ``field(metadata={"need": need})``."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("need") == need]


def with_needs(spec: Mapping[str, Any], supplies: Mapping[str, Any]) -> dict[str, Any]:
    """A guider config ``{name: ...}`` with what a place supplies (``{need: object or config}``) set
    in the fields that take it, where the config leaves them empty; wrapped guiders too."""
    out = dict(spec)
    cls = GUIDERS.get(out["name"])
    for need, value in supplies.items():
        for name in need_fields(cls, need) if dataclasses.is_dataclass(cls) else ():
            if out.get(name) is None:
                out[name] = value
    if isinstance(out.get("guider"), Mapping):
        out["guider"] = with_needs(out["guider"], supplies)
    return out


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named guider configuration reproducing a reference implementation's defaults.

    ``build(**overrides)`` makes the guider; its keyword parameters (with their defaults) are what
    a recipe may override (``guider: {preset: ace-step, scale: 10}``). ``source`` says where the
    defaults come from (repository, file, function)."""

    name: str
    build: Callable[..., Any]
    source: str
    summary: str = ""

    def parameters(self) -> dict[str, Any]:
        """The overridable parameters and their defaults."""
        import inspect

        return {k: p.default for k, p in inspect.signature(self.build).parameters.items()}

    def __call__(self, **overrides: Any):
        return build_guider({"preset": self.name, **overrides})


PRESETS = Registry("guider preset")


def register_preset(name: str, source: str) -> Callable:
    """Function decorator: ``@register_preset("ace-step", source="...")`` on a factory
    ``build(scale=15.0, ...) -> Guider`` makes it selectable as ``{preset: ace-step}`` and by
    :func:`preset`. The factory's docstring's first line is its summary."""
    def decorator(fn: Callable) -> Callable:
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        PRESETS.register(name)(Preset(name, fn, source, summary))
        return fn
    return decorator


def preset(name: str, **overrides: Any):
    """The guider of preset ``name`` with ``overrides`` (e.g. ``preset("ace-step", scale=10)``)."""
    return build_guider({"preset": name, **overrides})


def _build_preset(cfg: Mapping, path: str):
    if "name" in cfg:
        raise ConfigError(f"{path}.name", "give either 'name' (a guider) or 'preset' (a named configuration), not both")
    item = PRESETS.get(cfg["preset"], f"{path}.preset")
    known = item.parameters()
    kwargs = {}
    for key, value in cfg.items():
        if key == "preset":
            continue
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key for preset '{item.name}'{did_you_mean(key, known)}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return item.build(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err.path}" if err.path else path, err.message) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(path, f"preset '{item.name}': {err}") from None


def register_scale(name: str) -> Callable:
    """Class decorator: make a :class:`~omniguide.core.scale.DynamicScale` dataclass buildable by
    name in a guider's scale fields (``scale: {name: ..., ...}``)."""
    return SCALES.register(name)


register_scale("piecewise")(Piecewise)
register_scale("schedule")(ScaleSchedule)


def build_scale(cfg: Any, path: str = "scale") -> Any:
    """A dynamic scale from ``{name: ..., **fields}`` (lists become tuples); anything else unchanged."""
    if isinstance(cfg, DynamicScale) or not isinstance(cfg, Mapping):
        return cfg
    cls = SCALES.get(cfg.get("name"), f"{path}.name")
    known = init_fields(cls)
    kwargs = {}
    for key, value in cfg.items():
        if key == "name":
            continue
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key for scale '{cfg['name']}'{did_you_mean(key, known)}")
        kwargs[key] = _plain_value(value, known[key], f"{path}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err.path}" if err.path else path, err.message) from None
    except TypeError as err:
        raise ConfigError(path, str(err)) from None


def _plain_value(value: Any, field: dataclasses.Field, path: str) -> Any:
    if isinstance(value, Mapping) and "name" in value and "Scale" in str(field.type):
        return build_scale(value, path)
    if isinstance(value, list) and "Tensor" in str(field.type) and all(isinstance(v, (int, float)) for v in value):
        return torch.tensor(value)
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


def init_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def build_guider(cfg: Any, path: str = "guider"):
    """A guider from a config mapping ``{name: ..., **fields}`` (or a guider, returned as is)."""
    from .guider import Guider

    if isinstance(cfg, Guider):
        return cfg
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"expected a guider config with a 'name', got {type(cfg).__name__}")
    if cfg.get("preset") is not None:
        return _build_preset(cfg, path)
    if "preset" in cfg:   # `preset: null` (an item overriding a recipe's preset with a named guider)
        cfg = {k: v for k, v in cfg.items() if k != "preset"}
    if "name" not in cfg:
        raise ConfigError(f"{path}.name", f"missing; one of: {', '.join(GUIDERS.names())}")
    cls = GUIDERS.get(cfg["name"], f"{path}.name")
    known = init_fields(cls)
    kwargs = {}
    for key, value in cfg.items():
        if key == "name":
            continue
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key for guider '{cfg['name']}'{did_you_mean(key, known)}")
        kwargs[key] = _build_value(value, known[key], f"{path}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err.path}" if err.path else path, err.message) from None
    except TypeError as err:
        raise ConfigError(path, str(err)) from None


def _build_value(value: Any, field: dataclasses.Field, path: str) -> Any:
    annotation = str(field.type)
    if "Guider" in annotation and isinstance(value, (Mapping, str)) and not _is_plain_mapping_field(annotation):
        return build_guider(value, path)
    if isinstance(value, Mapping) and "name" in value and "Scale" in annotation:
        return build_scale(value, path)
    if isinstance(value, Mapping) and "shape" in value and "Scale" in annotation:
        try:
            return ScaleSchedule(**value)
        except TypeError as err:
            raise ConfigError(path, str(err)) from None
        except ConfigError as err:
            raise ConfigError(f"{path}.{err.path}", err.message) from None
    if isinstance(value, list) and "Tensor" in annotation and "Scale" in annotation:
        return torch.tensor(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _is_plain_mapping_field(annotation: str) -> bool:
    return annotation.startswith(("Mapping", "dict"))


def guider_config(guider) -> dict:
    """The inverse of :func:`build_guider`: a plain dict of the guider's name and init fields."""
    from .guider import Guider

    def plain(value):
        if isinstance(value, Guider):
            return guider_config(value)
        if isinstance(value, ScaleSchedule):
            return dataclasses.asdict(value)
        registered = getattr(type(value), "name", None) in SCALES
        if isinstance(value, DynamicScale) and dataclasses.is_dataclass(value) and registered:
            return {"name": type(value).name,
                    **{f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}}
        if isinstance(value, Axes):
            return value.config()
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    out = {"name": type(guider).name}
    for name in init_fields(type(guider)):
        out[name] = plain(getattr(guider, name))
    return out
