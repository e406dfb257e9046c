"""Residual classifier-free guidance (RCFG; Kodaira et al. 2023, "StreamDiffusion: A Pipeline-level
Solution for Real-time Interactive Generation", arXiv:2312.12491, Sec. 3.3; reference
cumulo-autumn/StreamDiffusion ``pipeline.py``, ``cfg_type`` "self" and "initialize").

One forward pass per step: the unconditional (negative) noise is not predicted but carried from earlier
steps as the *virtual residual noise* -- the noise that, added to the previous step's guided denoised
estimate, gives the current sample:

    eps_bar_i = (x_i - alpha_i x0_{i-1}) / sigma_i          x0_{i-1} = the previous step's guided x0
    u_i       = delta * eps_bar_i
    pred      = u_i + w (c_i - u_i)                         in eps space

For a deterministic DDIM step ``eps_bar_i`` is exactly the previous guided noise. ``mode="self"``
(self-negative RCFG) starts from ``x0_{-1} = 0`` (``eps_bar_0 = x_0 / sigma_0``, the initial noise)
and never evaluates the negative branch; ``mode="onetime"`` (onetime-negative RCFG, StreamDiffusion's
"initialize") evaluates it once, at step 0, and carries the residual from there. NFE: ``N`` for
``self``, ``N + 1`` for ``onetime``. StreamDiffusion's defaults: ``w = 1.2``, ``delta = 1``.
The carried estimate is state: reset per run, refused for score distillation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..errors import GuidanceError, check_choice
from ..guider import NOISE_LEVEL, SAMPLE, GuidanceStep, Guider, guided, passthrough
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale, resolve

MODES = ("self", "onetime")


@register_guider("residual-cfg")
@dataclass
class ResidualCFG(Guider):
    """CFG with the unconditional noise replaced by the residual carried from the previous step
    (arXiv:2312.12491); see the module docstring."""

    scale: Scale = 1.2
    delta: float = 1.0
    mode: str = "self"
    _previous: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    stateful = True

    def __post_init__(self):
        check_choice(self.mode, MODES, "mode")

    def reset(self) -> None:
        self._previous = None

    def requires(self) -> dict[str, str]:
        return {**super().requires(), SAMPLE: "residual-cfg rebuilds the unconditional noise from x_t",
                NOISE_LEVEL: "residual-cfg rebuilds the unconditional noise from x_t"}

    def _state(self, step: GuidanceStep) -> Tensor | None:
        if step.index is None:
            raise GuidanceError(f"residual-cfg: needs a sampler step index, but this is {step.where}")
        return None if step.index == 0 else self._previous

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        if self.mode == "onetime" and self._state(step) is None:
            return ("cond", "uncond")
        return ("cond",)

    def residual(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Tensor:
        """``eps_bar`` at this step (see the module docstring)."""
        previous = self._state(step)
        if previous is None:
            if self.mode == "onetime":
                return preds["uncond"].eps
            return step.x / step.noise.sigma
        return (step.x - step.noise.alpha * previous) / step.noise.sigma

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        if bool((step.noise.alpha == 0).any()):   # pure noise (flow at t = 1): eps says nothing, guide nothing
            result = passthrough(preds, step)
        else:
            c = preds["cond"].eps
            u = float(self.delta) * self.residual(preds, step)
            result = guided(u + resolve(self.scale, step) * (c - u), step, "eps")
        self._previous = result.x0
        return result
