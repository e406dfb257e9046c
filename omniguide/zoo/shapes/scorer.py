"""An analytic scorer: reads colour, shape and position back from an image alone.

* **Colour**: the foreground is every pixel far from the (known) background colour; its colour is
  the mean of the strongest half of those pixels, matched to the nearest named colour.
* **Coverage**: each pixel's share of that colour, ``alpha = <p - bg, c - bg> / |c - bg|^2`` clipped
  to [0, 1], which undoes the renderer's anti-aliasing on ground-truth images; shares below
  ``ALPHA_FLOOR`` are zeroed so that faint speckle in generated images does not move the moments.
* **Shape**: template matching by moments. For every candidate shape the area (sum of ``alpha``)
  fixes its half-extent and the centroid fixes its centre; the candidate is redrawn there and the
  one with the largest soft IoU ``sum(min) / sum(max)`` wins. A ring's hole, a triangle's low
  centroid and a cross's arms all decide this without special cases.
* **Position**: the centre of the winning template, matched to the nearest named anchor.

Saturation statistics (for measuring over-saturation under strong guidance) are in
:func:`pixel_stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from ...core.scorers import register_output_scorer
from .data import BACKGROUND, COLOURS, POSITIONS, SHAPES, coverage, parse_caption, prompts

ATTRIBUTES = ("colour", "shape", "position")
MIN_FOREGROUND = 0.35     # distance in [-1, 1] RGB units from the background that counts as foreground
MIN_AREA = 2.0            # pixels of coverage below which an image is called empty
ALPHA_FLOOR = 0.35        # coverage below this is set to 0: stray pixels must not move the moments


@lru_cache(maxsize=1)
def _unit_moments() -> tuple[Tensor, Tensor]:
    """Per shape, the area and the centroid's vertical offset of the shape drawn with ``s = 1``
    (measured on a finely sampled drawing, in units of ``s``)."""
    n, s = len(SHAPES), 100.0
    big = coverage(torch.arange(n), torch.full((n,), 128.0), torch.full((n,), 128.0), torch.full((n,), s),
                   size=256, supersample=2)
    ys = torch.arange(256, dtype=torch.float32) + 0.5
    area = big.sum(dim=(1, 2))
    cy = (big.sum(dim=2) * ys).sum(dim=1) / area
    return area / s**2, (cy - 128.0) / s


def foreground(images: Tensor) -> tuple[Tensor, Tensor]:
    """``(rgb [N, 3] in [-1, 1], alpha [N, H, W])``: the estimated shape colour and coverage."""
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1) * 2 - 1
    diff = images.float() - bg
    dist = diff.norm(dim=1)                                             # [N, H, W]
    flat = dist.flatten(1)
    strong = flat >= torch.maximum(0.5 * flat.amax(dim=1, keepdim=True), torch.tensor(MIN_FOREGROUND))
    weights = strong.float()
    rgb = (diff.flatten(2) * weights.unsqueeze(1)).sum(2) / weights.sum(1, keepdim=True).clamp(min=1)
    direction = rgb.view(-1, 3, 1, 1)
    alpha = (diff * direction).sum(1) / direction.pow(2).sum(1).clamp(min=1e-6)
    alpha = alpha.clamp(0, 1)
    return rgb + bg.view(1, 3), torch.where(alpha < ALPHA_FLOOR, torch.zeros_like(alpha), alpha)


def _soft_iou(alpha: Tensor, templates: Tensor) -> Tensor:
    """Soft IoU of ``alpha [N, H, W]`` with ``templates [N, K, H, W]``: ``[N, K]``."""
    a = alpha.unsqueeze(1)
    return torch.minimum(a, templates).sum((2, 3)) / torch.maximum(a, templates).sum((2, 3)).clamp(min=1e-6)


def read_attributes(images: Tensor, chunk: int = 256) -> list[dict[str, str | None]]:
    """Per image ``{"colour", "shape", "position"}`` (None for all three when the image is empty).

    ``images``: ``[N, 3, H, W]`` in [-1, 1] (square, H = the training size)."""
    out: list[dict[str, str | None]] = []
    for start in range(0, images.shape[0], chunk):
        out += _read_chunk(images[start:start + chunk])
    return out


def _read_chunk(images: Tensor) -> list[dict[str, str | None]]:
    n, size = images.shape[0], images.shape[-1]
    rgb, alpha = foreground(images)
    named = (torch.tensor(list(COLOURS.values())) * 2 - 1)              # [C, 3] in [-1, 1]
    colour = torch.cdist(rgb, named).argmin(dim=1)
    area = alpha.sum(dim=(1, 2))
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    cx = (alpha.sum(1) * grid).sum(1) / area.clamp(min=1e-6)
    cy = (alpha.sum(2) * grid).sum(1) / area.clamp(min=1e-6)
    unit_area, unit_cy = _unit_moments()
    k = len(SHAPES)
    half = (area.view(-1, 1) / unit_area.view(1, -1)).sqrt().clamp(min=0.5)   # [N, K]
    centre_y = cy.view(-1, 1) - unit_cy.view(1, -1) * half
    templates = coverage(torch.arange(k).repeat(n), cx.repeat_interleave(k), centre_y.flatten(), half.flatten(),
                         size=size, supersample=2).view(n, k, size, size)
    shape = _soft_iou(alpha, templates).argmax(dim=1)
    centre_y = centre_y.gather(1, shape.view(-1, 1)).squeeze(1)
    anchors = torch.tensor(list(POSITIONS.values())) * (size / 32)
    position = torch.cdist(torch.stack([cx, centre_y], dim=1), anchors).argmin(dim=1)
    names_c, names_p = list(COLOURS), list(POSITIONS)
    out = []
    for i in range(n):
        if area[i] < MIN_AREA:
            out.append(dict.fromkeys(ATTRIBUTES))
        else:
            out.append({"colour": names_c[colour[i]], "shape": SHAPES[shape[i]], "position": names_p[position[i]]})
    return out


def accuracy(images: Tensor, targets: Sequence[str | dict]) -> dict[str, float]:
    """Per-attribute accuracy and joint prompt accuracy (all three right) of ``images`` against
    ``targets`` (captions or attribute dicts, one per image). An attribute a caption does not name
    is left out of that attribute's accuracy and counts as right in the joint one."""
    if len(targets) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
    wanted = [parse_caption(t) if isinstance(t, str) else t for t in targets]
    found = read_attributes(images)
    result: dict[str, float] = {}
    joint = torch.ones(len(wanted), dtype=torch.bool)
    for key in ATTRIBUTES:
        named = [(w[key], f[key]) for w, f in zip(wanted, found) if w.get(key) is not None]
        hits = torch.tensor([w.get(key) is None or w[key] == f[key] for w, f in zip(wanted, found)])
        joint &= hits
        result[key] = sum(a == b for a, b in named) / len(named) if named else float("nan")
    result["joint"] = joint.float().mean().item()
    return result


def pixel_stats(images: Tensor) -> dict[str, float]:
    """Saturation statistics of ``images [N, 3, H, W]`` in [-1, 1] (values outside are allowed):

    * ``mean_abs``: mean ``|x|``; pushes towards 1 as images saturate;
    * ``clipped``: fraction of values with ``|x| > 0.98`` (the ground truth has none);
    * ``chroma``: mean per-pixel ``max(rgb) - min(rgb)`` in [0, 1] units;
    * ``colourfulness``: Hasler & Suesstrunk's ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 + mu_yb^2)``
      per image (in [0, 1] units), averaged.
    """
    x = images.float()
    rgb = ((x + 1) / 2).clamp(0, 1)
    r, g, b = rgb.unbind(1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    colourful = (rg.std(1).pow(2) + yb.std(1).pow(2)).sqrt() + 0.3 * (rg.mean(1).pow(2) + yb.mean(1).pow(2)).sqrt()
    return {
        "mean_abs": x.abs().mean().item(),
        "clipped": (x.abs() > 0.98).float().mean().item(),
        "chroma": (rgb.amax(1) - rgb.amin(1)).mean().item(),
        "colourfulness": colourful.mean().item(),
    }



def score_images(images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """The image benchmarks' scorer: ``images [N, 3, H, W]`` in [0, 1] (the adapter's output) against
    their prompts; ``accuracy`` is the joint accuracy, next to the per-attribute ones."""
    result = accuracy(images.float() * 2 - 1, list(prompts))
    return {"accuracy": result.pop("joint"), **result}


@register_output_scorer("shapes")
class PromptScorer:
    """``kind: sample``'s per-item scorer (``model: {scorer: shapes}``): the images of one prompt
    (``[N, 3, H, W]`` in [0, 1]) scored against it. The image bench scores a batch with a prompt per
    image (``score_images``) and draws its default prompts from ``prompts(n, seed)``."""

    score_images = staticmethod(score_images)
    prompts = staticmethod(prompts)

    def __call__(self, images: Tensor, prompt: str) -> dict[str, float]:
        return score_images(images, [prompt] * images.shape[0])
