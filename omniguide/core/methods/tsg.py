"""Time-step guidance (TSG; Sadat et al. 2025, "No Training, No Problem: Rethinking Classifier-Free
Guidance for Diffusion Models", arXiv:2407.02687, Sec. 5 and App. G).

Guidance without any condition: the guiding branch is the model with a Gaussian-perturbed time-step
embedding, so TSG works for unconditional models too (the conditional branch keeps its condition):

    t_emb' = t_emb + s t^power std(t_emb) n,        n ~ N(0, I)
    pred   = D(x, t_emb') + w (D(x, t_emb) - D(x, t_emb'))         for t in [t_min, t_max]

outside ``t`` (model time in [0, 1]) the step is unguided and costs one pass. Defaults are the paper's
Stable Diffusion conditional setting (App. G): ``w = 4``, power schedule ``s = 3``, ``power = 0.25``,
``t in [0.4, 1]`` (its T in [400, 1000]); its unconditional SD setting is ``w = 3``, ``s = 1.25``,
``power = 0``, ``t in [0.1, 0.9]``. The paper's option of perturbing only the first N layers' embedding
is not implemented (every consumer of the embedding sees the noise). ``seed`` seeds the noise
(re-seeded per run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..branch import Branch
from ..errors import ConfigError
from ..guider import GuidanceStep, Guider
from ..needs import TIMESTEP_EMBEDDING
from ..perturbations import TimestepNoiseSchedule, as_selectors
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from .common import cfg_against


@register_guider("tsg")
@dataclass
class TSG(Guider):
    """``D(t_emb') + w (D(t_emb) - D(t_emb'))`` with a noisy time-step embedding (arXiv:2407.02687)."""

    needs: ClassVar[Mapping[str, str]] = {TIMESTEP_EMBEDDING: "perturbs the timestep embedding"}

    scale: Scale = 4.0
    noise: float = 3.0
    power: float = 0.25
    t: tuple[float, float] = (0.4, 1.0)
    layers: Any = None
    seed: int = 0
    branch: str = "tsg"

    def __post_init__(self):
        low, high = (float(v) for v in self.t)
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError("t", f"a model-time window [low, high] inside [0, 1], got {list(self.t)}")
        self.t = (low, high)
        self.layers = as_selectors(self.layers)
        self.perturbation = TimestepNoiseSchedule(self.layers, noise=float(self.noise), power=float(self.power),
                                                  seed=int(self.seed))

    def reset(self) -> None:
        self.perturbation.reseed()

    def branch_defaults(self) -> dict:
        return {self.branch: Branch(self.branch, base="cond", perturbation=self.perturbation)}

    def active(self, step: GuidanceStep) -> bool:
        t = step.coordinate("t")
        inside = (t >= self.t[0]) & (t <= self.t[1])
        return bool(inside.all()) and not is_neutral(resolve(self.scale, step), 1.0)

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return ("cond", self.branch) if self.active(step) else ("cond",)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return cfg_against(preds, step, self.branch, self.scale)
