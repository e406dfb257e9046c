"""Measured quality of a distilled scene against a known true object (the zoo's primitives).

* ``iou`` -- 3D IoU of occupancy on a ``resolution^3`` lattice over the box: the scene is
  occupied where its density exceeds ``threshold`` (the mesh export's isosurface), the truth
  where its ``occupancy(points)`` says so;
* ``silhouette_iou`` -- mean over evaluation views of the 2D IoU of the opacity masks (> 0.5);
* ``view_consistency`` -- worst view over mean view of that silhouette IoU (1: every view as good
  as the average; a one-sided or multi-faced object scores low);
* ``color_error`` -- mean over views of the L1 distance (RGB in [0, 1], averaged over channels)
  between the mean colours of the rendered and the true object where both masks overlap
  (1 when they never overlap).
"""

from __future__ import annotations

import torch

from .scene import Cameras, Representation, orbit, render


@torch.no_grad()
def occupancy_iou(scene: Representation, truth: Representation, resolution: int = 48, threshold: float = 5.0) -> float:
    density, _ = scene.density_grid(resolution)
    points = scene.lattice(resolution, density.device).reshape(-1, 3)
    occupied = (density.reshape(-1) > threshold)
    true = truth.occupancy(points.to(next(truth.buffers(), points).device)).to(occupied.device)
    union = (occupied | true).sum()
    return float((occupied & true).sum() / union) if union > 0 else 1.0


@torch.no_grad()
def view_metrics(scene: Representation, truth: Representation, cameras: Cameras | None = None, size: int = 32,
                 samples: int = 64, background=None) -> dict[str, float]:
    cameras = cameras if cameras is not None else orbit(8)
    ious, errors = [], []
    for i in range(len(cameras)):
        cam = cameras.index(slice(i, i + 1))
        a = render(scene, cam, size, size, samples, background)
        b = render(truth, cam, size, size, samples, background)
        ma, mb = a.opacity[0, 0] > 0.5, b.opacity[0, 0].to(a.opacity.device) > 0.5
        union = (ma | mb).sum()
        ious.append(float((ma & mb).sum() / union) if union > 0 else 1.0)
        both = ma & mb
        if both.any():
            ca = a.rgb[0][:, both].mean(1)
            cb = b.rgb[0].to(a.rgb.device)[:, both].mean(1)
            errors.append(float((ca - cb).abs().mean()))
        else:
            errors.append(1.0)
    mean_iou = sum(ious) / len(ious)
    return {"silhouette_iou": mean_iou, "view_consistency": (min(ious) / mean_iou) if mean_iou > 0 else 0.0,
            "color_error": sum(errors) / len(errors), "silhouette_iou_per_view": ious}
