"""Exports: a turntable video (MP4 or GIF, with imageio) and a mesh (marching cubes with
scikit-image, written with trimesh as OBJ or GLB, vertex colours from the field).

The functions write to the path they are given; recipes hand them a temporary path from
``RunContext.atomic`` so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ....core.errors import ConfigError
from .cameras import turntable
from .render import render
from .representation import Representation

DEFAULT_THRESHOLD = 5.0   # density at which a 0.14-unit stretch is half opaque (ln 2 / 0.14)


@torch.no_grad()
def turntable_frames(scene: Representation, frames: int = 36, size: int = 64, samples: int = 96,
                     background=None, elevation: float = 20.0, distance: float = 2.8, fov: float = 40.0) -> np.ndarray:
    """``[frames, size, size, 3]`` uint8 renders going once around the object."""
    out = []
    cams = turntable(frames, elevation, distance, fov)
    for i in range(frames):
        img = render(scene, cams.index(slice(i, i + 1)), size, size, samples, background).rgb[0]
        out.append((img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.stack(out)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 12) -> Path:
    """Write frames as MP4 (ffmpeg plugin, libx264) or GIF, chosen by the suffix."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
    elif suffix == ".mp4":
        size = frames.shape[1] - frames.shape[1] % 16, frames.shape[2] - frames.shape[2] % 16
        iio.imwrite(path, frames[:, : size[0] or None, : size[1] or None], extension=".mp4", plugin="FFMPEG",
                    fps=fps, codec="libx264", macro_block_size=1)
    else:
        raise ConfigError("export", f"unknown video format '{suffix}'; valid: .mp4, .gif")
    return path


@torch.no_grad()
def extract_mesh(scene: Representation, resolution: int = 64, threshold: float = DEFAULT_THRESHOLD):
    """A ``trimesh.Trimesh`` of the ``density = threshold`` isosurface, with vertex colours.

    Raises a one-line error when the field never crosses the threshold (an empty or a full box),
    which is the usual "broken mesh on export" threestudio users hit."""
    import trimesh
    from skimage.measure import marching_cubes

    density, _ = scene.density_grid(resolution)
    grid = density.double().cpu().numpy()
    if not (grid.min() < threshold < grid.max()):
        raise ConfigError("export.threshold", f"the density field ({grid.min():.3g} .. {grid.max():.3g}) never "
                          f"crosses the isosurface threshold {threshold}; nothing to mesh")
    padded = np.pad(grid, 1, constant_values=0.0)                # close the surface at the box walls
    verts, faces, _, _ = marching_cubes(padded, level=threshold)
    r = scene.radius
    cell = 2 * r / resolution
    verts = (verts - 1 + 0.5) * cell - r                         # lattice index -> world (cell centres)
    device = next(scene.parameters(), torch.empty(0)).device
    _, colors = scene.query(torch.as_tensor(verts, dtype=torch.float32, device=device))
    rgba = np.concatenate([colors.cpu().numpy(), np.ones((len(verts), 1))], axis=1)
    return trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], vertex_colors=(rgba * 255).round().astype(np.uint8),
                           process=False)


def write_mesh(mesh, path: str | Path) -> Path:
    """Write ``mesh`` as OBJ or GLB (by suffix) with trimesh."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".obj", ".glb"):
        raise ConfigError("export", f"unknown mesh format '{suffix}'; valid: .obj, .glb")
    mesh.export(path, file_type=suffix[1:])
    return path
