"""Coloured primitives: the ground truth of the 3D prior's training data and of distillation metrics.

Each shape is a signed distance function inside the unit box (centred, about 1 unit across); a
:class:`PrimitiveField` turns one into a radiance field the scene renderer draws: density
``density_max * sigmoid(-sdf / softness)``, colour ``albedo * (ambient + diffuse * max(0, n.l))``
with a fixed world light, so views differ in shading. ``parse_prompt("a red cube, side view")``
recovers ``("red", "cube")``: the true primitive a distillation run is measured against.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ...core.errors import ConfigError
from ...distillation.score.scene.representation import Representation

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10), "green": (0.10, 0.65, 0.20), "blue": (0.15, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10), "orange": (1.00, 0.50, 0.05), "purple": (0.55, 0.15, 0.75),
    "cyan": (0.10, 0.80, 0.85), "pink": (0.95, 0.45, 0.70),
}
LIGHT = (0.6, 0.3, 0.75)             # world direction towards the light (front, slightly right, above)
AMBIENT, DIFFUSE = 0.45, 0.55


def _box(p: Tensor, half: Tensor) -> Tensor:
    q = p.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)


def sdf_sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.55


def sdf_cube(p: Tensor) -> Tensor:
    return _box(p, torch.tensor([0.42, 0.42, 0.42], dtype=p.dtype, device=p.device))


def sdf_cylinder(p: Tensor) -> Tensor:
    d = torch.stack([p[..., :2].norm(dim=-1) - 0.38, p[..., 2].abs() - 0.5], -1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0)


def sdf_cone(p: Tensor) -> Tensor:
    """Base radius 0.5 at z = -0.45, apex at z = 0.5 (an intersection of half-spaces, exact enough inside)."""
    h, r = 0.95, 0.5
    z = p[..., 2] + 0.45
    radial = p[..., :2].norm(dim=-1)
    side = (radial * h + (z - h) * r) / (h * h + r * r) ** 0.5      # signed distance to the slanted side
    return torch.maximum(torch.maximum(side, -z), z - h)


def sdf_torus(p: Tensor) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - 0.42, p[..., 2]], -1)
    return q.norm(dim=-1) - 0.2


SHAPES = {"sphere": sdf_sphere, "cube": sdf_cube, "cylinder": sdf_cylinder, "cone": sdf_cone, "torus": sdf_torus}


def caption(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def parse_prompt(prompt: str, path: str = "prompt") -> tuple[str, str]:
    """``(color, shape)`` named in ``prompt``; a one-line error when it names no known pair."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colors = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in SHAPES]
    if len(colors) != 1 or len(shapes) != 1:
        raise ConfigError(path, f"{prompt!r} does not name one colour ({', '.join(COLORS)}) and one shape "
                          f"({', '.join(SHAPES)}), so there is no true primitive to measure against")
    return colors[0], shapes[0]


class PrimitiveField(Representation):
    """A radiance field of one shaded primitive (see the module docstring); no parameters."""

    def __init__(self, shape: str, color: str | tuple[float, float, float] = (1.0, 1.0, 1.0),
                 density_max: float = 60.0, softness: float = 0.015, radius: float = 1.0):
        super().__init__()
        if shape not in SHAPES:
            raise ConfigError("shape", f"unknown shape '{shape}'; valid: {', '.join(SHAPES)}")
        self.sdf = SHAPES[shape]
        albedo = COLORS[color] if isinstance(color, str) else color
        self.register_buffer("albedo", torch.tensor(albedo, dtype=torch.float32), persistent=False)
        self.density_max, self.softness, self.radius = density_max, softness, radius

    def normals(self, points: Tensor, h: float = 1e-3) -> Tensor:
        eye = torch.eye(3, dtype=points.dtype, device=points.device) * h
        grad = torch.stack([self.sdf(points + e) - self.sdf(points - e) for e in eye], -1)
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-9)

    def shading(self, points: Tensor) -> Tensor:
        """``ambient + diffuse * max(0, n.l)`` per point, ``[N]``."""
        light = torch.tensor(LIGHT, dtype=points.dtype, device=points.device)
        return AMBIENT + DIFFUSE * (self.normals(points) @ (light / light.norm())).clamp_min(0)

    def occupancy(self, points: Tensor) -> Tensor:
        """True inside the primitive."""
        return self.sdf(points) < 0

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        density = self.density_max * torch.sigmoid(-self.sdf(points) / self.softness)
        return density, self.shading(points).unsqueeze(-1) * self.albedo.to(points.dtype)
