"""Spatiotemporal guidance scales: maps over the video's frame and space axes, and decay over steps.

Each is a :class:`~omniguide.core.scale.DynamicScale`: at every step it returns a tensor that
broadcasts against the sample, shaped from the step's declared layout (``Axes.layout``, e.g.
``BCFHW`` or ``BFCHW``), so the same scale works on every video latent layout. A guider uses it
wherever it takes a scale, e.g. ``CFG(scale=FrameRamp(1, 3))``:

* :class:`FrameRamp` -- ``w_f = start + (end - start) f / (F - 1)``: Stable Video Diffusion's
  ``linspace(min_guidance_scale, max_guidance_scale, num_frames)``;
* :class:`FrameScales` -- one scale per frame;
* :class:`RegionScale` -- ``outside + (inside - outside) m(y, x)`` with ``m`` a mask, a box, or a
  Gaussian ``exp(-d^2 / 2 s^2)`` around a point or a box (OmniSync's spatial map, arXiv:2505.21448;
  S-CFG-style region maps); coordinates are fractions of the height and width;
* :class:`Decay` -- ``neutral + (w - neutral) (1 - (1 - end) g(p))``, ``p`` the progress over steps
  (or ``1 - t``), ``g`` linear or cosine: guidance strong early and weaker late (OmniSync's
  temporal factor), applied to a number or to another map.

Per-frequency-band scales over height and width are the core's FDG (``fdg``) with the video's
axes: ``Axes.from_layout("BCFHW")`` makes its bands 2-D over ``H, W`` per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...core.errors import ConfigError, GuidanceError
from ...core.registry import register_scale
from ...core.scale import DynamicScale, Scale, resolve


def _layout(step, who: str, letters: str) -> str:
    axes = step.axes
    layout = axes.layout if axes is not None else ""
    missing = [c for c in letters if c not in layout]
    if missing:
        raise GuidanceError(f"{who}: needs the sample's layout with axes {', '.join(letters)} (declared: "
                            f"'{layout or 'none'}'); pass axes='BCFHW' (or the family's layout)")
    if len(layout) != step.x.ndim:
        raise GuidanceError(f"{who}: layout '{layout}' does not match a {step.x.ndim}-D sample {tuple(step.x.shape)}")
    return layout


def _along(values: Tensor, layout: str, letter: str, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[layout.index(letter)] = values.shape[0]
    return values.reshape(shape)


@register_scale("frame-ramp")
@dataclass(frozen=True)
class FrameRamp(DynamicScale):
    """``w_f = start + (end - start) f / (F - 1)`` over the frame axis (SVD's per-frame guidance)."""

    start: float = 1.0
    end: float = 3.0

    def __call__(self, step) -> Tensor:
        layout = _layout(step, "frame-ramp", "F")
        frames = step.x.shape[layout.index("F")]
        values = torch.linspace(float(self.start), float(self.end), frames, dtype=torch.float64)
        return _along(values, layout, "F", step.x.ndim)


@register_scale("frame-scales")
@dataclass(frozen=True)
class FrameScales(DynamicScale):
    """One scale per frame; a list whose length is not the frame count is a one-line error."""

    values: tuple[float, ...]

    def __call__(self, step) -> Tensor:
        layout = _layout(step, "frame-scales", "F")
        frames = step.x.shape[layout.index("F")]
        if len(self.values) != frames:
            raise GuidanceError(f"frame-scales: {len(self.values)} scales do not broadcast to a video of "
                                f"{frames} frames")
        return _along(torch.tensor(self.values, dtype=torch.float64), layout, "F", step.x.ndim)


@register_scale("region")
@dataclass(frozen=True)
class RegionScale(DynamicScale):
    """``outside + (inside - outside) m(y, x)`` (see the module docstring). Give one of ``mask``
    (``[H, W]`` or ``[F, H, W]`` values in [0, 1], at the latent resolution), ``box``
    (``[x0, y0, x1, y1]`` fractions) or ``point`` (``[x, y]`` fractions); ``sigma`` (a fraction of the
    larger side) turns a box or point into a Gaussian falloff. ``inside`` may itself be a scale."""

    inside: Scale = 3.0
    outside: float = 1.0
    mask: Tensor | None = None
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    sigma: float | None = None

    def __post_init__(self):
        given = [n for n in ("mask", "box", "point") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("", f"give exactly one of mask, box, point (got {given or 'none'})")
        if self.point is not None and self.sigma is None:
            raise ConfigError("sigma", "a point region needs a Gaussian width sigma")
        if self.mask is not None and not isinstance(self.mask, Tensor):
            object.__setattr__(self, "mask", torch.as_tensor(self.mask, dtype=torch.float64))
        for name in ("box", "point"):
            value = getattr(self, name)
            if value is not None and any(not 0.0 <= float(v) <= 1.0 for v in value):
                raise ConfigError(name, f"coordinates are fractions in [0, 1], got {list(value)}")

    def weights(self, height: int, width: int) -> Tensor:
        """``m`` on an ``[H, W]`` grid (pixel centres), or the mask as given. Distances are in pixels over
        the larger side, so the Gaussian is round on a non-square latent (as OmniSync's is)."""
        if self.mask is not None:
            return self.mask.double()
        side = max(height, width)
        y = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        x = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        if self.point is not None:
            dx, dy = x.view(1, -1) - float(self.point[0]), y.view(-1, 1) - float(self.point[1])
        else:
            x0, y0, x1, y1 = (float(v) for v in self.box)
            dx = (x.view(1, -1) - x.clamp(x0, x1).view(1, -1))
            dy = (y.view(-1, 1) - y.clamp(y0, y1).view(-1, 1))
        d2 = (dx * width / side) ** 2 + (dy * height / side) ** 2   # fractions of the larger side
        if self.sigma is None:
            return (d2 == 0).double()
        return torch.exp(-d2 / (2 * float(self.sigma) ** 2))

    def __call__(self, step) -> Tensor:
        layout = _layout(step, "region", "HW")
        h, w = step.x.shape[layout.index("H")], step.x.shape[layout.index("W")]
        m = self.weights(h, w)
        if m.shape[-2:] != (h, w) or m.ndim not in (2, 3):
            raise GuidanceError(f"region: a mask of shape {tuple(m.shape)} does not broadcast to the video's "
                                f"{h} x {w} latent grid (give [H, W] or [F, H, W] at the latent resolution)")
        shape = [1] * step.x.ndim
        shape[layout.index("H")], shape[layout.index("W")] = h, w
        if m.ndim == 3:
            if "F" not in layout or m.shape[0] != step.x.shape[layout.index("F")]:
                raise GuidanceError(f"region: a mask of {m.shape[0]} frames does not broadcast to the video "
                                    f"{tuple(step.x.shape)} ({layout})")
            shape[layout.index("F")] = m.shape[0]   # F comes before H and W in every video layout
        inside = resolve(self.inside, step)
        return self.outside + (inside - self.outside) * m.reshape(shape).to(step.x.dtype).to(step.x.device)


@register_scale("decay")
@dataclass(frozen=True)
class Decay(DynamicScale):
    """``neutral + (w - neutral) (1 - (1 - end) g(p))``: the scale ``w`` (a number or another scale)
    at full strength at the first step, ``end`` times it at the last. ``p`` is the progress,
    ``step`` (index / (N - 1)) or ``1 - t``; ``shape`` ``linear`` (``g = p``) or ``cosine``
    (``g = (1 - cos(pi p)) / 2``); ``neutral`` is the guider's neutral scale (1 for CFG)."""

    scale: Scale = 3.0
    end: float = 0.5
    shape: str = "cosine"
    coordinate: str = "step"
    neutral: float = 1.0

    def __post_init__(self):
        if self.shape not in ("linear", "cosine"):
            raise ConfigError("shape", f"decay shape is linear or cosine, got '{self.shape}'")
        if self.coordinate not in ("step", "t"):
            raise ConfigError("coordinate", f"decay runs over step or t, got '{self.coordinate}'")

    @property
    def reads_step(self) -> bool:
        return self.coordinate == "step" or getattr(self.scale, "reads_step", False)

    def factor(self, step) -> float | Tensor:
        p = step.coordinate("step") if self.coordinate == "step" else 1 - step.coordinate("t")
        g = p if self.shape == "linear" else (1 - torch.cos(math.pi * torch.as_tensor(p))) / 2
        return 1 - (1 - float(self.end)) * g

    def __call__(self, step):
        w = resolve(self.scale, step)
        factor = self.factor(step)
        if isinstance(factor, Tensor) and factor.ndim == 0:
            factor = float(factor)
        return self.neutral + (w - self.neutral) * factor
