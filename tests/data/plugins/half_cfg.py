"""A throwaway guider from a plugin (tests/test_guider_plugin.py): ``u + (w / 2) (c - u)``, which is
CFG at half the scale. It declares no needs, so every place that runs "all guiders whose needs it
meets" picks it up without an edit."""

from collections.abc import Mapping
from dataclasses import dataclass

from omniguide.core.guider import GuidanceStep, Guided, Guider, guided
from omniguide.core.prediction import Prediction
from omniguide.core.registry import register_guider
from omniguide.core.scale import Scale, resolve


@register_guider("test-half-cfg")
@dataclass
class HalfCFG(Guider):
    scale: Scale = 3.0

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return ("cond", "uncond")

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        c = preds["cond"]
        u = preds["uncond"].to(c.kind)
        return guided(u + 0.5 * resolve(self.scale, step) * (c.value - u), step, c.kind)
