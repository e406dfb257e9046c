"""Gradient-free classifier guidance (GFCG; Shenoy et al. 2024, "Gradient-Free Classifier Guidance for
Diffusion Model Sampling", arXiv:2411.15393).

A pre-trained classifier, used in inference mode only (no gradients), picks at every step a reference
label and a guidance weight from the current denoised estimate; guidance then moves away from the
prediction under that reference label:

    p      = softmax(classifier(x0_c))                      x0_c: the conditional branch's denoised estimate
    r      = argmax_{k != y} p_k                            the most likely wrong class (reference label)
    lam    = omega * min(p_r / p_y, max_ratio)              strong while the classifier confuses y with r
    pred   = base + lam (c - D(x, r))                       base: CFG (``scale``; 1 = the conditional alone)

The reference branch is the conditional branch with its class input (``input``, default ``labels``) set
to ``r`` per sample, or, with ``pool`` (``{input path: [classes, ...]}``, dotted into mappings), every
listed input set to row ``r`` of its table -- per-class prompt embeddings for a text-to-image model: a
follow-up branch in the same step, so a step costs one extra evaluation.

The abstract fixes the ingredients (inference-mode classifier, a time-adaptive reference label and
scale per step, complementary to CFG and autoguidance); the adaptive-weight rule above is our reading,
not checked against the paper's equations (its text was not available here) -- say so before comparing
numbers with it. ``target`` is each sample's intended class ``y`` (an int, or one per sample).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..branch import Branch
from ..errors import ConfigError, GuidanceError
from ..guider import FOLLOW_UP, GuidanceStep, Guider, guided, passthrough
from ..needs import CLASSIFIER
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve
from ..scorers import build_scorer, check_logits
from .common import cfg, cfg_branches
from .icg import get_path, set_path


@register_guider("gfcg")
@dataclass
class GFCG(Guider):
    """Gradient-free classifier guidance: ``base + lam (c - D(x, r))`` with the reference label ``r`` and
    weight ``lam`` chosen by a classifier in inference mode (arXiv:2411.15393); see the module docstring."""

    needs: ClassVar[Mapping[str, str]] = {
        CLASSIFIER: "its classifier picks the reference label",
        FOLLOW_UP: "gfcg evaluates the reference label chosen from the first round",
    }

    scale: Scale = 1.0
    gfcg_scale: Scale = 2.0
    classifier: Any = field(default=None, metadata={"need": CLASSIFIER})
    target: Any = 0
    input: str = "labels"
    pool: Any = None
    max_ratio: float = 1.0
    branch: str = "gfcg"
    _weights: list = field(default_factory=list, init=False, repr=False, compare=False)
    _step: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.classifier is None:
            raise ConfigError("classifier", "gfcg needs a classifier (a callable or a registered name)")
        self._classifier = build_scorer(self.classifier, "classifier")
        if self.pool is not None and not isinstance(self.pool, Mapping):
            raise ConfigError("pool", "a mapping {input: [one row per class, ...]}, e.g. {encoder_hidden_states: E}")
        self._pool = None if self.pool is None else {k: torch.as_tensor(v) for k, v in self.pool.items()}

    def reset(self) -> None:
        self._weights = []
        self._step = None

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step)

    def follow_up(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> dict:
        if is_neutral(resolve(self.gfcg_scale, step), 0.0):
            return {}
        with torch.no_grad():
            x0 = preds["cond"].x0.detach()
            logits = check_logits(self._classifier(x0), x0.shape[0], "gfcg")
            probs = torch.softmax(logits.double(), dim=-1)
        target = torch.as_tensor(self.target, device=probs.device).long().expand(x0.shape[0])
        if int(target.max()) >= probs.shape[1] or int(target.min()) < 0:
            raise GuidanceError(f"gfcg: target class {target.tolist()} is outside the classifier's "
                                f"{probs.shape[1]} classes")
        p_target = probs.gather(1, target[:, None])[:, 0]
        others = probs.scatter(1, target[:, None], -1.0)
        p_ref, reference = others.max(dim=1)
        weight = (p_ref / p_target.clamp_min(1e-12)).clamp(max=float(self.max_ratio))
        self._step = (step.index, weight)
        self._weights.append(float(weight.mean()))
        if self._pool is None:
            return {self.branch: Branch(self.branch, base="cond", inputs={self.input: reference.to(x0.device)})}
        rows = {path: table[reference.cpu()] for path, table in self._pool.items()}

        def draw(_, inputs, rows=rows):
            for path, value in rows.items():
                current = get_path(inputs, path)
                inputs = set_path(inputs, path, value.to(device=current.device, dtype=current.dtype)
                                  if isinstance(current, torch.Tensor) else value)
            return inputs
        return {self.branch: Branch(self.branch, base="cond", draw=draw)}

    def report(self) -> dict:
        return {"gfcg": {"mean_weight_per_step": list(self._weights)}}

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        kind = preds["cond"].kind
        c = preds["cond"].value
        base = cfg(c, preds["uncond"].to(kind), resolve(self.scale, step)) if "uncond" in preds else c
        if self.branch not in preds:
            return guided(base, step, kind) if "uncond" in preds else passthrough(preds, step)
        weight = self._step[1].to(c.dtype).reshape(-1, *([1] * (c.ndim - 1)))
        lam = resolve(self.gfcg_scale, step) * weight
        return guided(base + lam * (c - preds[self.branch].to(kind)), step, kind)
