"""String registries with a decorator, and strict construction from plain configs.

    @register_guider("my-method")
    @dataclass
    class MyMethod(Guider):
        scale: float = 3.0

    build_guider({"name": "my-method", "scale": 5})        # -> MyMethod(scale=5)
    build_guider({"name": "my-method", "scle": 5})
    # ConfigError: guider.scle: unknown key for guider 'my-method'; did you mean 'scale'?
    build_guider({"preset": "ace-step", "scale": 10})     # a named configuration (register_preset)

Every component is built by the ground floor's one builder (:meth:`omniguide.io.config.Registry.build`),
which converts each value by its field's declared type: a field declared as a :class:`Guider` is built
as a guider (``interval``, ``schedule``; registered below), a scale given as ``{shape: linear, scale: 7}``
becomes a :class:`~omniguide.core.scale.ScaleSchedule` and ``{name: piecewise, values: [...], at: [...]}``
any registered dynamic scale (:data:`SCALES`; ``@register_scale("name")`` adds one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..io.config import Registry, construct, register_conversion  # noqa: F401  (Registry: re-exported)
from .errors import ConfigError
from .guider import Guider, guider_config  # noqa: F401  (re-exported, as are the scales' names)
from .needs import NEEDS
from .scale import SCALES, build_scale, register_scale  # noqa: F401

GUIDERS = Registry("guider")


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


def build_guider(cfg: Any, path: str = "guider"):
    """A guider from a config mapping ``{name: ..., **fields}`` or ``{preset: ..., **overrides}``
    (or a guider, returned as is)."""
    if isinstance(cfg, Guider):
        return cfg
    if isinstance(cfg, Mapping) and cfg.get("preset") is not None:
        if "name" in cfg:
            raise ConfigError(f"{path}.name",
                              "give either 'name' (a guider) or 'preset' (a named configuration), not both")
        item = PRESETS.get(cfg["preset"], f"{path}.preset")
        overrides = {k: v for k, v in cfg.items() if k != "preset"}
        return construct(item.build, overrides, path, f"preset '{item.name}'", errors_as=f"preset '{item.name}'")
    if isinstance(cfg, Mapping) and "preset" in cfg:   # `preset: null` (an item overriding a recipe's preset)
        cfg = {k: v for k, v in cfg.items() if k != "preset"}
    return GUIDERS.build(cfg, path)


def _guider_field(value: Any, path: str) -> Any:
    """The conversion of a field declared as a guider: a config (or a name) is built as one."""
    return build_guider(value, path) if isinstance(value, (Mapping, str)) else value


register_conversion(Guider, _guider_field)
