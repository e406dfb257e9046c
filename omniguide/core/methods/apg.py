"""Adaptive projected guidance (Sadat, Hilliges & Weber 2024, "Eliminating Oversaturation and Artifacts
of High Guidance Scales in Diffusion Models", arXiv:2410.02416, Algorithm 1).

With ``c``, ``u`` the conditional and unconditional predictions in ``space`` (the paper: the denoised
prediction ``x0``) and norms / inner products over the declared axes, per sample:

    d    = c - u
    d    = d + beta * buf;   buf = d            momentum (beta < 0 recommended; state, reset per run)
    d    = d * min(1, r / ||d||)                 norm threshold (r = 0: off)
    d_par = <d, c_hat> c_hat,  d_orth = d - d_par,  c_hat = c / ||c||     (in float64)
    upd  = d_orth + eta * d_par
    pred = c + (w - 1) upd     form "c+(w-1)*upd"  (the paper, ACE-Step v1; alias "paper")
    pred = u + w upd           form "u+w*upd"      (diffusers' AdaptiveProjectedGuidance default; alias "diffusers")
    pred = c + w upd           form "c+w*upd"      (ComfyUI APG, diffusers' original form; alias "comfyui")

Forms are named by formula, as CFG's are; the library names are accepted as aliases. The three agree
with CFG only when ``upd == d`` (eta = 1, no threshold, no momentum); ``u + w upd`` equals
``c + (w' - 1) upd`` for no ``w'`` once ``upd != d``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..axes import Axes, as_axes
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, Guider, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import cfg_branches, check_space, clip_norm, guided_in, in_space, project

APG_FORMS = {"c+(w-1)*upd": 1.0, "u+w*upd": 1.0, "c+w*upd": 0.0}  # form -> neutral scale
APG_ALIASES = {"paper": "c+(w-1)*upd", "diffusers": "u+w*upd", "comfyui": "c+w*upd"}   # the older names


@register_guider("apg")
@dataclass
class APG(Guider):
    """Adaptive projected guidance: ``c + (w - 1)(d_orth + eta d_par)`` with momentum and a norm
    threshold on ``d = c - u`` (Sadat et al. 2024, arXiv:2410.02416); see the module docstring.

    ``space``: where the update is computed, ``"x0"`` (the paper) by default; ``None`` uses the
    model's own output as diffusers does. ``momentum != 0`` keeps state and refuses distillation
    queries (no step index)."""

    scale: Scale = 7.5
    eta: float = 0.0
    norm_threshold: float = 0.0
    momentum: float = 0.0
    form: str = "c+(w-1)*upd"
    space: str | None = "x0"
    axes: Axes | str | tuple | None = None
    _buffer: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.form = APG_ALIASES.get(self.form, self.form)
        if self.form not in APG_FORMS:
            raise ConfigError("form", f"unknown form '{self.form}'; valid: {', '.join([*APG_FORMS, *APG_ALIASES])}")
        if float(self.norm_threshold) < 0:
            raise ConfigError("norm_threshold", f"must be >= 0 (0 turns it off), got {self.norm_threshold}")
        self.space = check_space(self.space)
        self.axes = as_axes(self.axes)

    @property
    def stateful(self) -> bool:
        return self.momentum != 0

    @property
    def neutral(self) -> float:
        return APG_FORMS[self.form]

    def reset(self) -> None:
        self._buffer = None

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            return passthrough(preds, step)
        axes = step.require_axes("apg", self.axes)
        kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
        d = self._momentum(c - u, step)
        par, orth = project(clip_norm(d, float(self.norm_threshold), axes), c, axes)
        upd = orth + self.eta * par
        w = resolve(self.scale, step)
        if self.form == "c+(w-1)*upd":
            out = c + (w - 1) * upd
        else:
            out = (u if self.form == "u+w*upd" else c) + w * upd
        return guided_in(out, step, kind, "apg")

    def _momentum(self, d: Tensor, step: GuidanceStep) -> Tensor:
        """``buf = d + beta buf``; the running average replaces ``d`` (diffusers' MomentumBuffer order)."""
        if self.momentum == 0:
            return d
        if step.index is None:
            raise GuidanceError(f"apg: momentum={self.momentum} needs a sampler step index, but this is {step.where} "
                                "(set momentum=0 for score distillation)")
        if step.index == 0 or self._buffer is None or self._buffer.shape != d.shape:
            self._buffer = torch.zeros_like(d)
        self._buffer = d + self.momentum * self._buffer
        return self._buffer
