"""Sliding-mode-control CFG (SMC-CFG; "CFG-Ctrl: Control-Based Classifier-Free Diffusion Guidance",
arXiv:2603.03281; reference: pamparamm/sd-perturbed-attention ``smc_nodes.py``).

The guidance direction is driven towards a sliding surface by a bounded correction, per sample over
the declared axes, in ``space``:

    e      = c - u
    s      = (e - e_prev) + lambda e_prev             the sliding surface (e_prev starts at e)
    e_upd  = e - k s / ||s||                           unit_2(s) in place of sign(s)
    pred   = u + w e_upd                               form "u+w(c-u)" (c + w e_upd: "c+w(c-u)")
    e_prev <- e_upd

``lambda = 6``, ``k = 0.1`` and ``space="x0"`` are the reference node's (its note: the paper's Table 4
states sign(s) == unit_2(s), and sign does not work there). State: reset per run, refused for
score distillation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..axes import Axes, norm
from ..errors import GuidanceError
from ..guider import GuidanceStep, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve
from .common import CFGFamily, guided_in, in_space


@register_guider("smc-cfg")
@dataclass
class SMCCFG(CFGFamily):
    """CFG whose direction ``e = c - u`` is corrected by ``-k s / ||s||`` on the sliding surface
    ``s = (e - e_prev) + lambda e_prev`` (arXiv:2603.03281); see the module docstring."""

    scale: Scale = 5.0
    surface: float = 6.0
    force: float = 0.1
    form: str = "u+w(c-u)"
    space: str | None = "x0"
    axes: Axes | str | tuple | None = None
    _previous: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    stateful = True

    def reset(self) -> None:
        self._previous = None

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if step.index is None:
            raise GuidanceError(f"smc-cfg: needs a sampler step index, but this is {step.where}")
        if "uncond" not in preds:
            return passthrough(preds, step)
        axes = step.require_axes("smc-cfg", self.axes)
        kind, (c, u) = in_space(preds, self.space, "cond", "uncond")
        e = c - u
        if step.index == 0 or self._previous is None or self._previous.shape != e.shape:
            self._previous = e
        s = (e - self._previous) + float(self.surface) * self._previous
        e = e - float(self.force) * s / norm(s, axes).clamp_min(1e-12).to(s.dtype)
        self._previous = e
        base = u if self.form == "u+w(c-u)" else c
        return guided_in(base + resolve(self.scale, step) * e, step, kind, "smc-cfg")
