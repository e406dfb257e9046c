"""Adaptive projected guidance (Sadat, Hilliges & Weber 2024, "Eliminating Oversaturation and Artifacts
of High Guidance Scales in Diffusion Models", arXiv:2410.02416, Algorithm 1). This module also holds
the small helpers the other methods share (spaces, projection, two-branch plans, finite results).

With ``c``, ``u`` the conditional and unconditional predictions in ``space`` (the paper: the denoised
prediction ``x0``) and norms / inner products over the declared axes, per sample:

    d    = c - u
    d    = d + beta * buf;   buf = d            momentum (beta < 0 recommended; state, reset per run)
    d    = d * min(1, r / ||d||)                 norm threshold (r = 0: off)
    d_par = <d, c_hat> c_hat,  d_orth = d - d_par,  c_hat = c / ||c||     (in float64)
    upd  = d_orth + eta * d_par
    pred = c + (w - 1) upd                       form "paper"     (also ACE-Step v1)
    pred = u + w upd                             form "diffusers" (AdaptiveProjectedGuidance default)
    pred = c + w upd                             form "comfyui"   (ComfyUI APG; diffusers' original form)

The three forms agree with CFG only when ``upd == d`` (eta = 1, no threshold, no momentum); diffusers'
form ``u + w upd`` equals the paper's ``c + (w' - 1) upd`` for no ``w'`` once ``upd != d``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..axes import Axes, as_axes, dot, norm
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, Guider, guided, passthrough
from ..prediction import PARAMETERIZATIONS, Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, is_neutral, resolve

APG_FORMS = {"paper": 1.0, "diffusers": 1.0, "comfyui": 0.0}  # form -> neutral scale


def cfg_branches(guider: Guider, step: GuidanceStep, other: str = "uncond") -> tuple[str, ...]:
    """``("cond",)`` at the guider's neutral scale (one pass), else ``("cond", other)``."""
    return ("cond",) if is_neutral(resolve(guider.scale, step), guider.neutral) else ("cond", other)


def check_space(space: str | None) -> str | None:
    """``None`` (the model's own parameterization) or one of eps, x0, v, flow."""
    if space is not None and space not in PARAMETERIZATIONS:
        raise ConfigError("space", f"unknown space '{space}'; valid: None, {', '.join(PARAMETERIZATIONS)}")
    return space


def in_space(preds: Mapping[str, Prediction], space: str | None, *names: str) -> tuple[str, list[Tensor]]:
    """The named predictions as tensors in ``space`` (None: the first one's own parameterization)."""
    kind = space or preds[names[0]].kind
    return kind, [preds[n].to(kind) for n in names]


def guided_in(value: Tensor, step: GuidanceStep, kind: str, who: str) -> Guided:
    """:func:`guided`, refusing a non-finite result with the likely cause (eps space at ``alpha = 0``)."""
    result = guided(value, step, kind)
    if not (torch.isfinite(result.x0).all() and torch.isfinite(result.eps).all()):
        raise GuidanceError(
            f"{who}: the guided result in space '{kind}' is not finite at {step.where} (eps space has no x0 "
            "at pure noise, alpha = 0, as for flow models at t = 1); use space=None or 'x0'"
        )
    return result


def project(v: Tensor, onto: Tensor, axes: Axes) -> tuple[Tensor, Tensor]:
    """``(v_par, v_orth)`` with ``v_par = <v, o_hat> o_hat`` over ``axes.reduce``, in float64 (paper)."""
    v64, o64 = v.double(), onto.double()
    o_hat = o64 / norm(o64, axes).clamp_min(1e-12)
    par = dot(v64, o_hat, axes) * o_hat
    return par.to(v.dtype), (v64 - par).to(v.dtype)


def clip_norm(d: Tensor, threshold: float, axes: Axes) -> Tensor:
    """``d * min(1, r / ||d||)``; ``r <= 0`` leaves ``d`` unchanged."""
    if threshold <= 0:
        return d
    return d * torch.clamp(threshold / norm(d, axes), max=1.0)


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
    form: str = "paper"
    space: str | None = "x0"
    axes: Axes | str | tuple | None = None
    _buffer: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.form not in APG_FORMS:
            raise ConfigError("form", f"unknown form '{self.form}'; valid: {', '.join(APG_FORMS)}")
        if float(self.norm_threshold) < 0:
            raise ConfigError("norm_threshold", f"must be >= 0 (0 turns it off), got {self.norm_threshold}")
        check_space(self.space)
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
        if self.form == "paper":
            out = c + (w - 1) * upd
        else:
            out = (u if self.form == "diffusers" else c) + w * upd
        return guided_in(out, step, kind, "apg")

    def _momentum(self, d: Tensor, step: GuidanceStep) -> Tensor:
        """``buf = d + beta buf``; the running average replaces ``d`` (diffusers' MomentumBuffer order)."""
        if self.momentum == 0:
            return d
        if step.index is None:
            raise GuidanceError(
                f"apg: momentum={self.momentum} needs a sampler step index, but this is {step.where} "
                "(set momentum=0 for score distillation)"
            )
        if step.index == 0 or self._buffer is None or self._buffer.shape != d.shape:
            self._buffer = torch.zeros_like(d)
        self._buffer = d + self.momentum * self._buffer
        return self._buffer
