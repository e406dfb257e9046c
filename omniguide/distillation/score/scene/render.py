"""Volume rendering of a :class:`~.representation.Representation` from a batch of cameras, in pure
PyTorch (batched rays, no custom CUDA, CPU and GPU alike).

Each ray is clipped to the scene box (slab test), sampled at ``samples`` evenly spaced midpoints
between its entry and exit, and composited front to back (Max 1995; NeRF, arXiv:2003.08934):

    alpha_i = 1 - exp(-density_i * delta_i),  T_i = prod_{j<i} (1 - alpha_j),  w_i = T_i alpha_i
    rgb = sum_i w_i c_i + (1 - sum_i w_i) * background,   opacity = sum_i w_i

Midpoints (no jitter) keep every render a pure function of the scene and the cameras, so DDP
ranks and resumed runs reproduce each other exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .cameras import Cameras
from .representation import Representation


class SolidBackground(nn.Module):
    """A constant colour behind the object; ``learnable`` makes it a parameter (through a sigmoid)."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0), learnable: bool = False):
        super().__init__()
        value = torch.tensor(color, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        if learnable:
            self.raw = nn.Parameter(torch.logit(value))
        else:
            self.register_buffer("raw", torch.logit(value), persistent=False)

    def forward(self, dirs: Tensor) -> Tensor:
        """The colour seen along ``dirs [..., 3]``: ``[..., 3]``."""
        return torch.sigmoid(self.raw).to(dirs.dtype).expand(*dirs.shape[:-1], 3)


@dataclass
class RenderOutput:
    """Images ``[B, 3, H, W]`` in [0, 1], opacity and depth ``[B, 1, H, W]``."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor


def box_interval(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through ``[-radius, radius]^3``; ``near >= far`` misses."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) / safe, (radius - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def render(scene: Representation, cameras: Cameras, height: int, width: int, samples: int = 64,
           background: nn.Module | None = None) -> RenderOutput:
    """Render ``scene`` from ``cameras`` at ``height x width`` with ``samples`` points per ray."""
    device = next(scene.parameters(), torch.empty(0)).device
    origins, dirs = cameras.to(device).rays(height, width)                       # [B, H, W, 3]
    near, far = box_interval(origins, dirs, scene.radius)
    hit = far > near
    far = torch.where(hit, far, near)
    steps = (torch.arange(samples, device=device, dtype=dirs.dtype) + 0.5) / samples
    depths = near.unsqueeze(-1) + (far - near).unsqueeze(-1) * steps                   # [B, H, W, S]
    delta = ((far - near) / samples).unsqueeze(-1).expand_as(depths)
    points = origins.unsqueeze(-2) + dirs.unsqueeze(-2) * depths.unsqueeze(-1)       # [B, H, W, S, 3]
    density, color = scene.query(points.reshape(-1, 3))
    density = density.view(depths.shape)
    color = color.view(*depths.shape, 3)
    alpha = 1 - torch.exp(-density * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], dim=-1), dim=-1)[..., :-1]
    weights = alpha * trans                                                            # [B, H, W, S]
    opacity = weights.sum(-1, keepdim=True)
    rgb = (weights.unsqueeze(-1) * color).sum(-2)
    depth = (weights * depths).sum(-1, keepdim=True)
    if background is not None:
        rgb = rgb + (1 - opacity) * background(dirs)
    return RenderOutput(rgb.permute(0, 3, 1, 2), opacity.permute(0, 3, 1, 2), depth.permute(0, 3, 1, 2))
