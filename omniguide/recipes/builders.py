"""Guiders (``guider: {name: cfg, scale: 4}``) and schedulers (``scheduler: {name: ddim}``) from recipe
configs, checked the way the run builds them; below the sample models, which build theirs here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.guider import Guider
from ..core.registry import GUIDERS, build_guider
from ..core.scale import DynamicScale, build_scale
from ..core.schedulers import ALIASES, BY_NAME, SCHEDULER_NAMES, build_scheduler
from ..io.config import as_number, declared_fields, describe, init_parameters, require_finite, strict_kwargs
from .registry import SCHEDULERS

for _name in SCHEDULER_NAMES:
    SCHEDULERS.register(_name)(BY_NAME[_name][0])
for _alias, (_short, _) in ALIASES.items():   # ComfyUI's names for the same solvers
    SCHEDULERS.register(_alias)(BY_NAME[_short][0])


# -- guiders -----------------------------------------------------------------------------------
SCHEDULE_EXAMPLE = "{shape: linear, scale: 7}"


def make_guider(cfg: Any, path: str = "guider") -> Any:
    """A guider from its recipe config: :func:`check_guider_values`, then the core's ``build_guider``
    (which reports unknown names and keys). Recipes build every guider through this function, in
    ``check`` and in the run alike, so ``validate`` rejects what the run would."""
    from .. import zoo  # noqa: F401  (registers the built-in scorers a guider may name)
    from ..modalities.base import load_families

    load_families()     # the modalities register their guiders (history, stg, ...) and presets (audio)
    check_guider_values(cfg, path)
    return build_guider(cfg, path)


def check_guider_values(cfg: Any, path: str = "guider") -> None:
    """Scales must be finite numbers (or schedules of one) and number fields numbers, at any depth.

    In code a scale may be a tensor and the core trusts its caller; in a recipe ``scale: abc``,
    ``scale: .nan`` or ``scale: [1, 2]`` is a mistake that would otherwise surface mid-run (or
    as a non-finite model output). Field types are read from the guider dataclass, as
    ``build_guider`` reads them; keys it does not know are left to it."""
    if not isinstance(cfg, Mapping):
        return
    if "name" in cfg and not isinstance(cfg["name"], str):
        raise ConfigError(f"{path}.name", f"expected the name of a guider, got {describe(cfg['name'])}")
    if cfg.get("name") not in GUIDERS:
        return
    guider = GUIDERS.get(cfg["name"])
    declared = declared_fields(guider)
    for key, value in cfg.items():
        if key not in (init_parameters(guider) or ()) or value is None:
            continue
        where = f"{path}.{key}"
        types = declared.get(key, ())
        if _admits(types, Guider) and isinstance(value, Mapping):
            check_guider_values(value, where)
        elif _admits(types, DynamicScale):
            check_scale(value, where, allow_list=_admits(types, tuple))
        elif cfg["name"] == "terms" and key == "terms" and isinstance(value, Mapping):
            for branch, term in value.items():
                check_scale(term.get("scale", 1.0) if isinstance(term, Mapping) else term, f"{where}.{branch}")
        elif types and set(types) <= {float, int, type(None)}:
            require_finite(value, where)


def make_objective(cfg: Any, path: str = "objective") -> Any:
    """A distillation objective from its recipe config: every field declared as a number (an
    annealed value given as one included) must be a finite number and one declared as text text,
    then the distillation registry's builder (unknown names and keys, "did you mean")."""
    from ..distillation.registry import OBJECTIVES, build_objective
    from ..distillation.score import objectives  # noqa: F401  (registers the built-in objectives)

    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    if isinstance(name, str) and name in OBJECTIVES:
        declared = declared_fields(OBJECTIVES.get(name))
        for key, value in cfg.items():
            types = set(declared.get(key, ()))
            if types & {float, int} and str not in types and value is not None and not isinstance(value, Mapping):
                require_finite(value, f"{path}.{key}")
            elif types and types <= {str, type(None)} and value is not None and not isinstance(value, str):
                raise ConfigError(f"{path}.{key}", f"expected text, got {describe(value)}")
    return build_objective(cfg, path)


def _admits(types: tuple[type, ...], cls: type) -> bool:
    """Whether a field declared as ``types`` takes a ``cls``."""
    return any(issubclass(t, cls) for t in types)


def check_scale(value: Any, where: str, allow_list: bool = False) -> None:
    """A finite number, a named dynamic scale (``{name: piecewise, ...}``, built to check it), a
    schedule mapping with a finite ``scale`` (and a ``shape``), or -- where
    the guider takes one scale per band or level (``allow_list``) -- a list of finite numbers."""
    if isinstance(value, Mapping) and "name" in value:
        from ..modalities.base import load_families

        load_families()   # the modalities register their scales (frame-ramp, region, ...)
        build_scale(dict(value), where)
        return
    if isinstance(value, Mapping):
        if "shape" not in value:
            raise ConfigError(where, f"a scale schedule needs a 'shape' (constant, linear, cosine), e.g. "
                              f"{SCHEDULE_EXAMPLE}; got {describe(value)}")
        for key in ("scale", "neutral"):
            if key in value:
                require_finite(value[key], f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)) and allow_list:
        for i, item in enumerate(value):
            require_finite(item, f"{where}.{i}")
        return
    if as_number(value) is None:
        raise ConfigError(where, f"expected a number or a schedule {SCHEDULE_EXAMPLE}, got {describe(value)}")
    require_finite(value, where)


# -- schedulers ---------------------------------------------------------------------------------
def make_scheduler(cfg: Mapping[str, Any], path: str = "scheduler") -> Any:
    """A fresh diffusers scheduler from ``{name: ddim, **config}``; unknown config keys are errors
    (diffusers itself would only warn)."""
    import diffusers

    cfg = _named(cfg, path)
    cls = getattr(diffusers, SCHEDULERS.get(cfg["name"], f"{path}.name"))
    kwargs = strict_kwargs(cls.__init__, cfg, path, what=f"scheduler '{cfg['name']}'")
    return build_scheduler(cfg["name"], path, **kwargs)


def _named(cfg: Any, path: str) -> dict:
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"expected a mapping with a 'name', got {type(cfg).__name__}")
    if "name" not in cfg:
        raise ConfigError(f"{path}.name", "missing")
    return dict(cfg)
