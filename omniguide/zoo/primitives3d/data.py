"""Multi-view renders of coloured primitives with captions that name the view, made with the
scene's own volume renderer (``omniguide.distillation.score.scene``).

Rendering is separated from colouring: the shading ``S = sum_i w_i L_i`` and the opacity
``A = sum_i w_i`` of each (shape, camera) are rendered once with a white albedo, and an image of
any colour is ``albedo * S + (1 - A) * background`` -- exact, because a primitive's albedo is
constant. So a few hundred renders per shape give every colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...distillation.score.scene import VIEWS, CameraSampler, ViewPrompts, render
from .primitives import COLORS, SHAPES, PrimitiveField, caption


@dataclass
class ViewsSpec:
    """The training data of the 3D prior: shapes x colours x random cameras."""

    resolution: int = 32
    views_per_shape: int = 256
    samples: int = 64
    elevation: tuple[float, float] = (-10.0, 75.0)
    distance: tuple[float, float] = (2.6, 3.0)
    fov: tuple[float, float] = (38.0, 45.0)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    seed: int = 0


@dataclass
class ViewRenders:
    """Shading ``[S, V, 1, H, W]``, opacity ``[S, V, 1, H, W]`` and view index ``[S, V]`` per shape and camera."""

    shading: Tensor
    opacity: Tensor
    views: Tensor
    spec: ViewsSpec

    def images(self, shape: Tensor, view: Tensor, color: Tensor) -> Tensor:
        """RGB in [0, 1], ``[B, 3, H, W]``, for index tensors into shapes, cameras and colours."""
        albedo = torch.tensor([COLORS[c] for c in self.spec.colors])[color].view(-1, 3, 1, 1)
        bg = torch.tensor(self.spec.background).view(1, 3, 1, 1)
        s, a = self.shading[shape, view], self.opacity[shape, view]
        return albedo * s + (1 - a) * bg

    def captions(self, shape: Tensor, view: Tensor, color: Tensor, views: ViewPrompts) -> list[str]:
        names = self.views[shape, view]
        return [views.prompt(caption(self.spec.colors[int(c)], self.spec.shapes[int(s)]), VIEWS[int(v)])
                for s, c, v in zip(shape, color, names)]


@torch.no_grad()
def render_views(spec: ViewsSpec) -> ViewRenders:
    """Render every shape from ``views_per_shape`` random cameras (a pure function of ``spec``)."""
    sampler = CameraSampler(elevation=spec.elevation, distance=spec.distance, fov=spec.fov, stratified=False)
    gen = torch.Generator().manual_seed(spec.seed)
    shading, opacity, views = [], [], []
    labeler = ViewPrompts()
    for shape in spec.shapes:
        field_ = PrimitiveField(shape, (1.0, 1.0, 1.0))
        cams = sampler.sample(spec.views_per_shape, gen)
        s, a = [], []
        for rows in torch.arange(len(cams)).split(16):
            out = render(field_, cams.index(rows), spec.resolution, spec.resolution, spec.samples)
            s.append(out.rgb[:, :1])
            a.append(out.opacity)
        shading.append(torch.cat(s))
        opacity.append(torch.cat(a))
        views.append(labeler.views(cams))
    return ViewRenders(torch.stack(shading), torch.stack(opacity), torch.stack(views), spec)


def vocabulary(spec: ViewsSpec) -> list[str]:
    """Every word the captions use (for the tokenizer)."""
    words = ["a", "view", ","] + list(VIEWS) + list(spec.shapes) + list(spec.colors)
    return [w for w in words if w != ","]
