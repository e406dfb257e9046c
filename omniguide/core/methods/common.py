"""Small pure helpers the guidance methods share: the CFG formula and its two named forms, the
two-branch plan, prediction spaces, projection and norm clipping over declared axes."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..axes import Axes, as_axes, dot, norm
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep, Guider, guided, passthrough
from ..prediction import DIFFUSERS_PREDICTION_TYPES, PARAMETERIZATIONS, Guided, Prediction
from ..scale import Scale, is_neutral, resolve

FORMS = ("u+w(c-u)", "c+w(c-u)")


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ConfigError("form", f"unknown form '{form}'; valid: {', '.join(FORMS)}")


def cfg(cond: Tensor, uncond: Tensor, scale, form: str = "u+w(c-u)") -> Tensor:
    """``u + w (c - u)`` or ``c + w (c - u)``."""
    base = uncond if form == "u+w(c-u)" else cond
    return base + scale * (cond - uncond)


def cfg_against(preds: Mapping[str, Prediction], step: GuidanceStep, other: str, scale: Scale,
                form: str = "u+w(c-u)", cond: str = "cond") -> Guided:
    """CFG of branch ``cond`` against branch ``other`` in ``cond``'s parameterization (``other`` may come
    from another model); ``cond`` alone where ``other`` did not run."""
    if other not in preds:
        return passthrough(preds, step, cond)
    kind = preds[cond].kind
    return guided(cfg(preds[cond].value, preds[other].to(kind), resolve(scale, step), form), step, kind)


def form_neutral(form: str) -> float:
    return 1.0 if form == "u+w(c-u)" else 0.0


def cfg_branches(guider: Guider, step: GuidanceStep, other: str = "uncond") -> tuple[str, ...]:
    """``("cond",)`` at the guider's neutral scale (one pass), else ``("cond", other)``."""
    return ("cond",) if is_neutral(resolve(guider.scale, step), guider.neutral) else ("cond", other)


def check_space(space: str | None, allow_none: bool = True) -> str | None:
    """``None`` (the model's own parameterization, when allowed) or one of eps, x0, v, flow; diffusers'
    names (``epsilon``, ``sample``, ``v_prediction``, ``flow_prediction``) are accepted and normalised."""
    if space is None and allow_none:
        return None
    kind = DIFFUSERS_PREDICTION_TYPES.get(space, space)
    if kind not in PARAMETERIZATIONS:
        valid = ", ".join((*(("None",) if allow_none else ()), *PARAMETERIZATIONS, *DIFFUSERS_PREDICTION_TYPES))
        raise ConfigError("space", f"unknown space '{space}'; valid: {valid}")
    return kind


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


class Wrapper(Guider):
    """A guider around another, ``self.guider``: its neutral scale, fallback branch, state and branch
    plan are the wrapped guider's unless the wrapper says otherwise."""

    @property
    def neutral(self) -> float:
        return self.guider.neutral

    @property
    def fallback(self) -> str:
        return self.guider.fallback

    @property
    def stateful(self) -> bool:
        return self.guider.stateful

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return self.guider.branches(step)


class CFGFamily(Guider):
    """What every method of the form ``base + w * update(c, u)`` shares: the neutral scale of its
    named ``form`` (1 for ``u+w(c-u)``, 0 for ``c+w(c-u)``), the two-branch plan (one pass at the
    neutral scale) and the checks of ``form`` and, where declared, ``space`` and ``axes``. Subclasses
    are dataclasses with ``scale`` and ``form`` fields; one with checks of its own calls ``super()``.
    A method whose rule is a function of ``c`` and ``u`` in its ``space`` gives it as :meth:`guide`."""

    def __post_init__(self):
        check_form(self.form)
        if hasattr(self, "space"):
            self.space = check_space(self.space)
        if hasattr(self, "axes"):
            self.axes = as_axes(self.axes)

    @property
    def neutral(self) -> float:
        return form_neutral(self.form)

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if "uncond" not in preds:
            return passthrough(preds, step)
        kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
        return guided_in(self.guide(c, u, step), step, kind, self.name)

    def guide(self, c: Tensor, u: Tensor, step: GuidanceStep) -> Tensor:
        """The guided prediction from the conditional ``c`` and unconditional ``u``, both in ``space``."""
        raise NotImplementedError
