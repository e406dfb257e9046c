"""Per-step greedy scale search with an evaluator (the greedy, per-step view of guided generation: e.g.
Blasingame & Liu 2025, "Greed is Good: A Unifying Perspective on Guided Generation", and the
inference-time search literature): at every step try several CFG scales, let an evaluator score each
candidate's denoised estimate, and keep the best -- per sample.

    candidates w_1 ... w_n                      (``scales``, or ``candidates`` values from 1 to ``scale``)
    g_k  = u + w_k (c - u)                      one cond and one uncond pass serve every candidate
    k*   = argmax_k evaluator(x0(g_k))          per sample
    pred = g_{k*}

The evaluator is a plugin (:mod:`omniguide.core.scorers`, one score per sample, higher is better; no
gradient needed). The chosen scale of every step and sample is kept and returned with the samples
(``SampleOutput.report["scale_search"]``, the adapter handle's ``report``). NFE is CFG's: 2 per step,
plus the evaluator calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..guider import GuidanceStep, guided, passthrough
from ..needs import SCORER
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from ..scorers import build_scorer, check_scores
from .common import CFGFamily, cfg


@register_guider("scale-search")
@dataclass
class ScaleSearch(CFGFamily):
    """Greedy per-step CFG scale chosen by an evaluator among candidates (see the module docstring)."""

    needs: ClassVar[Mapping[str, str]] = {SCORER: "its evaluator ranks the candidate scales"}

    scale: Scale = 8.0
    candidates: int = 5
    scales: tuple[float, ...] | None = None
    evaluator: Any = field(default=None, metadata={"need": SCORER})
    form: str = "u+w(c-u)"
    _chosen: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.evaluator is None:
            raise ConfigError("evaluator", "scale-search needs an evaluator (a callable or a registered name)")
        if self.scales is None and int(self.candidates) < 1:
            raise ConfigError("candidates", f"must be >= 1, got {self.candidates}")
        if self.scales is not None and not self.scales:
            raise ConfigError("scales", "give at least one candidate scale")
        self._evaluator = build_scorer(self.evaluator, "evaluator")

    def reset(self) -> None:
        self._chosen = []

    def candidate_scales(self, step: GuidanceStep) -> list[float]:
        if self.scales is not None:
            return [float(w) for w in self.scales]
        top, n = float(resolve(self.scale, step)), int(self.candidates)
        low = self.neutral
        return [low + (top - low) * k / max(n - 1, 1) for k in range(n)] if n > 1 else [top]

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if all(w == self.neutral for w in self.candidate_scales(step)):
            return ("cond",)
        return ("cond", "uncond")

    def report(self) -> dict:
        return {"scale_search": {"scales": [list(row) for row in self._chosen]}}

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            self._chosen.append([self.neutral] * step.x.shape[0])
            return passthrough(preds, step)
        kind = preds["cond"].kind
        c, u = preds["cond"].value, preds["uncond"].to(kind)
        scales = self.candidate_scales(step)
        results = [guided(cfg(c, u, w, self.form), step, kind) for w in scales]
        with torch.no_grad():
            scores = torch.stack([check_scores(self._evaluator(r.x0), c.shape[0], "scale-search").double()
                                  for r in results])
        best = scores.argmax(dim=0)
        self._chosen.append([scales[k] for k in best.tolist()])
        value = torch.stack([cfg(c, u, w, self.form) for w in scales])[best, torch.arange(c.shape[0])]
        return guided(value, step, kind)
