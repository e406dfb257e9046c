"""Synthetic captioned images: one coloured 2-D shape on a plain dark background.

Every image is a pure function of a ``torch.Generator``: a shape (circle, square, triangle, ring,
cross, diamond), a named colour and a named position, with a random size and a small position
jitter so a model must generalise rather than memorise 240 pictures. Images are 32x32 RGB in
``[-1, 1]``, anti-aliased by supersampling (each pixel is the mean of ``supersample**2``
sub-pixel inside tests). Captions follow one template, ``"a(n) {colour} {shape} {where}"``, e.g.
``"a red circle on the left"``; the attribute dict ``{"colour", "shape", "position"}`` comes with it.

Shapes are defined in normalised coordinates ``(u, v) = ((x - cx) / s, (y - cy) / s)`` inside the
square ``[-1, 1]^2`` (``y`` grows downwards), so the scorer can redraw any of them from a centre
and a half-extent ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IMAGE_SIZE = 32
BACKGROUND = (0.1, 0.1, 0.1)  # RGB in [0, 1]: a fixed dark grey
# Named colours in [0, 1], kept inside [0.05, 0.95] so the ground truth has no clipped pixels
# (|x| > 0.98 in [-1, 1]): over-saturation from strong guidance then shows up as clipping.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.15), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.15, 0.9), "cyan": (0.1, 0.85, 0.9), "white": (0.95, 0.95, 0.95), "orange": (0.95, 0.5, 0.05),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
# Half-extent multiplier per shape, so that the shapes cover comparable areas.
SHAPE_SCALE = {"circle": 1.0, "square": 0.85, "triangle": 1.0, "ring": 1.0, "cross": 1.0, "diamond": 1.05}
# Anchor (x, y) in pixels of a 32x32 image, and the caption phrase of each position.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (8.0, 16.0), "right": (24.0, 16.0), "top": (16.0, 8.0), "bottom": (16.0, 24.0), "center": (16.0, 16.0),
}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
RING_INNER = 0.55     # inner radius of the ring, as a fraction of the outer one
CROSS_ARM = 0.34      # half-width of the cross's arms


def caption(colour: str, shape: str, position: str) -> str:
    """The one caption template: ``caption("red", "circle", "left") == "a red circle on the left"``."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} {PHRASES[position]}"


def parse_caption(text: str) -> dict[str, str | None]:
    """The attributes a caption names (None for an attribute it does not name)."""
    words = text.lower().replace(",", " ").split()
    pick = lambda names: next((w for w in words if w in names), None)  # noqa: E731
    return {"colour": pick(COLOURS), "shape": pick(SHAPES), "position": pick(POSITIONS)}


def vocabulary() -> list[str]:
    """Every word a caption can contain (the tokenizer is built from these)."""
    words = {w for p in PHRASES.values() for w in p.split()} | {"a", "an"}
    return sorted(words | set(COLOURS) | set(SHAPES) | set(POSITIONS))


def inside(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean inside-test of ``shape`` at normalised coordinates ``(u, v)``."""
    au, av = u.abs(), v.abs()
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "square":
        return torch.maximum(au, av) <= 1
    if shape == "triangle":   # apex up at (0, -1), base along v = 1
        return (v <= 1) & (2 * au <= v + 1)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= RING_INNER**2)
    if shape == "cross":
        return ((au <= CROSS_ARM) & (av <= 1)) | ((av <= CROSS_ARM) & (au <= 1))
    if shape == "diamond":
        return au + av <= 1
    raise ValueError(f"unknown shape '{shape}'; valid: {', '.join(SHAPES)}")


def coverage(shape_idx: Tensor, cx: Tensor, cy: Tensor, s: Tensor, size: int = IMAGE_SIZE,
             supersample: int = 4) -> Tensor:
    """Anti-aliased coverage ``[N, size, size]`` in [0, 1] of shapes with index ``shape_idx`` (into
    SHAPES), centre ``(cx, cy)`` and half-extent ``s`` in pixels (``s`` already includes SHAPE_SCALE)."""
    n, k = shape_idx.shape[0], supersample
    sub = (torch.arange(size * k, dtype=torch.float32) + 0.5) / k       # sub-pixel centres
    mask = torch.zeros(n, size * k, size * k, dtype=torch.bool)
    for i, name in enumerate(SHAPES):
        rows = (shape_idx == i).nonzero().flatten()
        if len(rows):
            u = (sub.view(1, 1, -1) - cx[rows].view(-1, 1, 1)) / s[rows].view(-1, 1, 1)
            v = (sub.view(1, -1, 1) - cy[rows].view(-1, 1, 1)) / s[rows].view(-1, 1, 1)
            mask[rows] = inside(name, u, v)
    return mask.float().view(n, size, k, size, k).mean(dim=(2, 4))


def composite(alpha: Tensor, rgb: Tensor, background: tuple[float, float, float] = BACKGROUND) -> Tensor:
    """Images ``[N, 3, H, W]`` in [-1, 1]: colour ``rgb [N, 3]`` (in [0, 1]) over the background."""
    bg = torch.tensor(background).view(1, 3, 1, 1)
    img = bg + alpha.unsqueeze(1) * (rgb.view(-1, 3, 1, 1) - bg)
    return img * 2 - 1


@dataclass
class ShapesData:
    """How images are drawn (the ``data:`` section of the train recipe)."""

    size_min: float = 4.5        # half-extent range in pixels (before SHAPE_SCALE)
    size_max: float = 6.5
    jitter: float = 1.5          # uniform position jitter, +- pixels on each axis
    supersample: int = 4         # anti-aliasing: sub-pixels per pixel and axis

    def draw(self, n: int, generator: torch.Generator | int | None = None
             ) -> tuple[Tensor, list[str], list[dict[str, str]]]:
        """``(images [n, 3, 32, 32] in [-1, 1], captions, attribute dicts)``, deterministic in the
        generator's state (or seed)."""
        gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        shape = torch.randint(len(SHAPES), (n,), generator=gen)
        colour = torch.randint(len(COLOURS), (n,), generator=gen)
        position = torch.randint(len(POSITIONS), (n,), generator=gen)
        size = self.size_min + (self.size_max - self.size_min) * torch.rand(n, generator=gen)
        offset = (torch.rand(n, 2, generator=gen) * 2 - 1) * self.jitter
        anchors = torch.tensor(list(POSITIONS.values()))[position]
        scale = torch.tensor([SHAPE_SCALE[name] for name in SHAPES])[shape]
        alpha = coverage(shape, anchors[:, 0] + offset[:, 0], anchors[:, 1] + offset[:, 1], size * scale,
                         supersample=self.supersample)
        rgb = torch.tensor(list(COLOURS.values()))[colour]
        names_c, names_p = list(COLOURS), list(POSITIONS)
        attrs = [{"colour": names_c[c], "shape": SHAPES[s], "position": names_p[p]}
                 for c, s, p in zip(colour.tolist(), shape.tolist(), position.tolist())]
        return composite(alpha, rgb), [caption(**a) for a in attrs], attrs


def draw_batch(n: int, generator: torch.Generator | int | None = None, spec: ShapesData | None = None
               ) -> tuple[Tensor, list[str], list[dict[str, str]]]:
    """``n`` images with their captions and attributes (default drawing settings)."""
    return (spec or ShapesData()).draw(n, generator)


def prompt_set(n: int = 64, seed: int = 0) -> tuple[list[str], list[dict[str, str]]]:
    """``n`` distinct attribute combinations with their captions: the fixed evaluation prompts.

    Balanced greedily: each next prompt is the unused combination whose colour, shape and position
    have been used least so far (ties broken by a seeded order), so any prefix covers every value
    about equally often."""
    combos = [(c, s, p) for s in SHAPES for c in COLOURS for p in POSITIONS]
    if not 1 <= n <= len(combos):
        raise ValueError(f"n must be in 1..{len(combos)}, got {n}")
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(seed)).tolist()
    remaining = [combos[i] for i in order]
    counts: dict[str, int] = {}
    picked = []
    for _ in range(n):
        best = min(remaining, key=lambda combo: sorted((counts.get(v, 0) for v in combo), reverse=True))
        remaining.remove(best)
        for v in best:
            counts[v] = counts.get(v, 0) + 1
        picked.append({"colour": best[0], "shape": best[1], "position": best[2]})
    return [caption(**a) for a in picked], picked


def prompts(n: int = 64, seed: int = 0) -> list[str]:
    """The captions of :func:`prompt_set` (the image benchmark's default prompts)."""
    return prompt_set(n, seed)[0]
