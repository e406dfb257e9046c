"""What a scene is to the trainer: a field of density and colour inside a box, behind one small
interface so hash grids or Gaussians can follow.

``Representation.query(points [N, 3]) -> (density [N], rgb [N, 3])`` is all the volume renderer
needs; ``density_grid`` / ``color_grid`` sample the field on a lattice for exports and metrics.
:class:`RadianceGrid` is a dense voxel grid queried by trilinear interpolation (pure PyTorch,
CPU and GPU): density through ``softplus`` with Magic3D's "blob" bias at initialisation, colour
through a sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....core.errors import ConfigError


class Representation(nn.Module):
    """A radiance field inside ``[-radius, radius]^3`` (see the module docstring)."""

    radius: float = 1.0

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``(density [N], rgb [N, 3])`` at world ``points [N, 3]``."""
        raise NotImplementedError

    def lattice(self, resolution: int, device=None) -> Tensor:
        """Cell-centre points of a ``resolution^3`` lattice over the box, ``[R, R, R, 3]`` indexed (x, y, z)."""
        r = self.radius
        axis = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 * r - r
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)

    @torch.no_grad()
    def density_grid(self, resolution: int, chunk: int = 1 << 16) -> tuple[Tensor, Tensor]:
        """``(density [R, R, R], rgb [R, R, R, 3])`` sampled at :meth:`lattice` points."""
        device = next(self.parameters(), torch.empty(0)).device
        points = self.lattice(resolution, device).reshape(-1, 3)
        dens, cols = [], []
        for part in points.split(chunk):
            d, c = self.query(part)
            dens.append(d)
            cols.append(c)
        shape = (resolution,) * 3
        return torch.cat(dens).reshape(shape), torch.cat(cols).reshape(*shape, 3)


class RadianceGrid(Representation):
    """A dense ``resolution^3`` grid of raw density and colour, trilinearly interpolated.

    ``density = softplus(raw + bias(p))`` with the blob bias ``blob_density (1 - |p| / blob_radius)``
    added (Magic3D), so training starts from a soft ball instead of empty space."""

    def __init__(self, resolution: int = 32, radius: float = 1.0, blob_density: float = 5.0,
                 blob_radius: float = 0.5, init_color: float = 0.0):
        super().__init__()
        if resolution < 2:
            raise ConfigError("scene.resolution", f"a grid needs at least 2 cells per side, got {resolution}")
        if radius <= 0:
            raise ConfigError("scene.radius", f"must be > 0, got {radius}")
        self.resolution, self.radius = int(resolution), float(radius)
        self.blob_density, self.blob_radius = float(blob_density), float(blob_radius)
        self.density = nn.Parameter(torch.zeros(1, 1, *(self.resolution,) * 3))
        self.color = nn.Parameter(torch.full((1, 3, *(self.resolution,) * 3), float(init_color)))

    def bias(self, points: Tensor) -> Tensor:
        return self.blob_density * (1 - points.norm(dim=-1) / self.blob_radius)

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        # grid_sample reads (x, y, z) as (W, H, D); the parameters are stored [D=x, H=y, W=z]
        coords = (points / self.radius).flip(-1).view(1, -1, 1, 1, 3)
        raw = torch.cat([self.density, self.color], dim=1)
        values = F.grid_sample(raw, coords.to(raw.dtype), mode="bilinear", padding_mode="border",
                               align_corners=False).view(4, -1)
        density = F.softplus(values[0] + self.bias(points).to(values.dtype))
        inside = (points.abs() <= self.radius).all(dim=-1)
        return density * inside, torch.sigmoid(values[1:].t())


REPRESENTATIONS = {"grid": RadianceGrid}

