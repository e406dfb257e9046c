"""Cameras on a sphere around the object, a random camera sampler, and view-dependent prompts.

World frame: the object sits at the origin inside ``[-radius, radius]^3``, ``+z`` is up. A camera at
elevation ``e``, azimuth ``a`` (degrees) and distance ``d`` sits at
``d (cos e cos a, cos e sin a, sin e)`` and looks at the origin (threestudio's convention), with a
vertical field of view ``fov``. Azimuth 0 is the *front* of the object.

View-dependent prompting (DreamFusion, threestudio's prompt processor) is the first defence
against multi-face ("Janus") results: each camera gets a view name -- ``overhead`` above
``overhead_threshold`` degrees of elevation, else ``front`` within ``front_threshold`` degrees of
azimuth 0, ``back`` within ``back_threshold`` of 180, ``side`` otherwise -- and the prompt a suffix
for it (``"a red cube, side view"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ....core.errors import ConfigError

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of look-at cameras (angles in degrees, one value per camera)."""

    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    fov: Tensor

    def __len__(self) -> int:
        return self.elevation.shape[0]

    @property
    def positions(self) -> Tensor:
        """Camera centres ``[B, 3]``."""
        e, a = torch.deg2rad(self.elevation), torch.deg2rad(self.azimuth)
        return self.distance.unsqueeze(1) * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], 1)

    def index(self, rows) -> Cameras:
        return Cameras(self.elevation[rows], self.azimuth[rows], self.distance[rows], self.fov[rows])

    def to(self, device) -> Cameras:
        return Cameras(*(v.to(device) for v in (self.elevation, self.azimuth, self.distance, self.fov)))

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions ``[B, H, W, 3]`` through pixel centres (pinhole)."""
        origin = self.positions
        forward = -origin / origin.norm(dim=1, keepdim=True)
        up = torch.tensor([0.0, 0.0, 1.0], dtype=origin.dtype, device=origin.device).expand_as(forward)
        right = torch.linalg.cross(forward, up)
        # looking straight down: pick the azimuth's own tangent as "right"
        a = torch.deg2rad(self.azimuth)
        fallback = torch.stack([-a.sin(), a.cos(), torch.zeros_like(a)], 1)
        degenerate = right.norm(dim=1, keepdim=True) < 1e-6
        right = torch.where(degenerate, fallback, right)
        right = right / right.norm(dim=1, keepdim=True)
        true_up = torch.linalg.cross(right, forward)
        half = torch.tan(torch.deg2rad(self.fov) / 2)                       # [B]
        ys = (1 - (torch.arange(height, dtype=origin.dtype, device=origin.device) + 0.5) / height * 2)
        xs = ((torch.arange(width, dtype=origin.dtype, device=origin.device) + 0.5) / width * 2 - 1)
        py = ys.view(1, height, 1, 1) * half.view(-1, 1, 1, 1)
        px = xs.view(1, 1, width, 1) * half.view(-1, 1, 1, 1) * (width / height)
        dirs = (px * right.view(-1, 1, 1, 3) + py * true_up.view(-1, 1, 1, 3) + forward.view(-1, 1, 1, 3))
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return origin.view(-1, 1, 1, 3).expand_as(dirs), dirs


@dataclass
class ViewPrompts:
    """View names by camera angle and the prompt suffix for each (see the module docstring)."""

    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    suffix: str = ", {view} view"
    enabled: bool = True

    def views(self, cameras: Cameras) -> Tensor:
        """The index into :data:`VIEWS` of each camera, ``[B]`` (long)."""
        a = torch.remainder(cameras.azimuth + 180.0, 360.0) - 180.0      # (-180, 180]
        out = torch.full_like(a, VIEWS.index("side"), dtype=torch.long)
        out[a.abs() <= self.front_threshold] = VIEWS.index("front")
        out[a.abs() >= 180.0 - self.back_threshold] = VIEWS.index("back")
        out[cameras.elevation > self.overhead_threshold] = VIEWS.index("overhead")
        return out

    def prompt(self, prompt: str, view: str) -> str:
        """``prompt`` with the suffix of ``view`` (``prompt`` itself when view prompts are off)."""
        return prompt + self.suffix.format(view=view) if self.enabled else prompt

    def prompts(self, prompt: str) -> list[str]:
        """One prompt per view, in :data:`VIEWS` order."""
        return [self.prompt(prompt, v) for v in VIEWS]


def _range(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"expected a number or [low, high], got {value!r}") from None
    if lo > hi:
        raise ConfigError(name, f"range [{lo}, {hi}] is reversed")
    return lo, hi


@dataclass
class CameraSampler:
    """Random cameras: elevation, azimuth, distance and field of view drawn uniformly in their
    ranges (degrees; a number is a fixed value). Azimuths are stratified over the batch (each
    camera of a batch of ``B`` gets its own ``360/B`` sector, as threestudio's batch sampling
    does), which spreads every batch around the object."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (2.6, 3.0)
    fov: tuple[float, float] = (38.0, 45.0)
    stratified: bool = True
    views: ViewPrompts = field(default_factory=ViewPrompts)

    def __post_init__(self):
        for name in ("elevation", "azimuth", "distance", "fov"):
            setattr(self, name, _range(getattr(self, name), f"cameras.{name}"))
        if not -90 <= self.elevation[0] <= self.elevation[1] <= 90:
            raise ConfigError("cameras.elevation", f"must lie in [-90, 90] degrees, got {list(self.elevation)}")
        if not 0 < self.fov[0] <= self.fov[1] < 180:
            raise ConfigError("cameras.fov", f"field of view must be in (0, 180) degrees, got {self.fov}")
        if self.distance[0] <= 0:
            raise ConfigError("cameras.distance", f"must be > 0, got {self.distance}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Cameras:
        """``n`` cameras drawn with ``generator`` (CPU float32)."""
        def uniform(lo_hi):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        azimuth = uniform(self.azimuth)
        if self.stratified and n > 1:
            lo, hi = self.azimuth
            azimuth = lo + (hi - lo) * (torch.arange(n) + torch.rand(n, generator=generator)) / n
        return Cameras(uniform(self.elevation), azimuth, uniform(self.distance), uniform(self.fov))


def turntable(n: int, elevation: float = 20.0, distance: float = 2.8, fov: float = 40.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth, starting at the front."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = torch.ones(n)
    return Cameras(full * elevation, az, full * distance, full * fov)


def orbit(n: int, elevations: tuple[float, ...] = (0.0, 30.0), distance: float = 2.8, fov: float = 40.0) -> Cameras:
    """``n`` azimuths at each elevation: the evaluation views of the metrics."""
    cams = [turntable(n, e, distance, fov) for e in elevations]
    return Cameras(*(torch.cat([getattr(c, k) for c in cams]) for k in ("elevation", "azimuth", "distance", "fov")))

