"""Scale schedules as a wrapper: ``Schedule(CFG(scale=7), shape="cosine")``.

The wrapped guider's ``scale`` becomes ``neutral + (scale - neutral) f(x)`` with ``f`` a shape of
mean 1 over ``x in [0, 1]`` (x = 1 at pure noise); see :mod:`omniguide.core.scale` for the shapes
(constant, linear, cosine; Wang et al. 2024, arXiv:2404.13040). A scale can also be a
:class:`~omniguide.core.scale.ScaleSchedule` directly; this wrapper is the recipe-friendly form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..guider import STEP_INDEX, GuidanceStep, Guider
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import ScaleSchedule
from .common import Wrapper


@register_guider("schedule")
@dataclass
class Schedule(Wrapper):
    """Vary ``guider.scale`` over ``t`` or ``step`` with a ``constant``, ``linear`` or ``cosine`` shape."""

    guider: Guider
    shape: str = "linear"
    coordinate: str = "t"

    def __post_init__(self):
        scale = getattr(self.guider, "scale", None)
        if not isinstance(scale, (int, float)):
            raise ConfigError("guider.scale",
                              f"schedule needs a guider with a numeric 'scale', got {type(scale).__name__}")
        schedule = ScaleSchedule(float(scale), self.shape, self.coordinate, self.guider.neutral)
        self.scheduled = dataclasses.replace(self.guider, scale=schedule)

    def requires(self) -> dict[str, str]:
        needs = super().requires()
        if self.coordinate == "step":
            needs[STEP_INDEX] = "the schedule runs over the 'step' coordinate (use 't')"
        return needs

    def reset(self) -> None:
        self.scheduled.reset()

    # the scheduled copy is the guider that runs: its branches, follow-up, state and reports
    def branch_defaults(self) -> dict:
        return self.scheduled.branch_defaults()

    def follow_up(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> dict:
        return self.scheduled.follow_up(preds, step)

    @property
    def recurrence(self) -> int:
        return self.scheduled.recurrence

    def report(self) -> dict:
        return self.scheduled.report()

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return self.scheduled.branches(step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return self.scheduled.combine(preds, step)
