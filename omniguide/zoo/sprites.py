"""Synthetic sprite videos with known physics: coloured squares that move at constant speed,
bounce off the walls and occlude each other, with captions naming each sprite's colour and motion.

Everything is a pure function of its arguments, so training batches, benchmark references and
rollout starts are reproducible:

* :class:`SpriteState` -- positions ``[N, K, 2]`` (x, y of the top-left corner, in pixels),
  velocities ``[N, K, 2]`` (pixels per frame; ``slow`` / ``fast`` are 1 / 2 px per frame on a
  32-pixel canvas, scaled with the canvas) and attributes ``[N, K, 3]`` (colour, axis, speed;
  ``-1`` marks an absent sprite).
* :func:`trajectory` -- positions at frames ``0, s, 2s, ...`` (stride ``s``) under elastic
  reflection at the walls: a sprite spans ``[p, p + size]`` and ``p`` stays in ``[0, L - size]``.
* :func:`render` -- anti-aliased frames ``[N, 3, F, H, W]`` in [0, 1] (box coverage of each
  pixel), sprite 0 drawn first, so later sprites occlude earlier ones.
* :func:`caption_text` / :func:`parse_caption` -- ``"a red square moving horizontally fast and a
  blue square moving vertically slow"`` <-> attribute ids.
* :func:`locate` -- each sprite's position estimated from frames by its colour (the benchmark's
  position error against the known physics), and the share of its pixels that are visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import ConfigError

COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1)}
COLOUR_NAMES = tuple(COLOURS)
AXES = ("horizontally", "vertically", "diagonally")
SPEEDS = {"slow": 1.0, "fast": 2.0}
SPEED_NAMES = tuple(SPEEDS)
BACKGROUND = 0.08
ABSENT = -1


@dataclass(frozen=True)
class SpriteWorld:
    """The canvas and sprites: ``size`` x ``size`` pixel frames, square sprites of side ``sprite``,
    up to ``max_sprites`` per video."""

    size: int = 16
    sprite: float = 4.0
    max_sprites: int = 2

    @property
    def span(self) -> float:
        """The largest top-left coordinate: ``size - sprite``."""
        return self.size - self.sprite

    @property
    def speed_unit(self) -> float:
        """Pixels per frame of speed 1 (``SPEEDS``): 1 on a 32-pixel canvas, scaled with the size."""
        return self.size / 32


@dataclass
class SpriteState:
    """Positions and velocities at frame 0, and each sprite's attributes (colour, axis, speed ids)."""

    position: Tensor   # [N, K, 2] float (x, y)
    velocity: Tensor   # [N, K, 2] float
    attributes: Tensor  # [N, K, 3] long; -1 rows are absent sprites

    @property
    def present(self) -> Tensor:
        return self.attributes[..., 0] >= 0


def random_state(world: SpriteWorld, n: int, generator: torch.Generator, min_sprites: int = 1) -> SpriteState:
    """``n`` random videos with ``min_sprites``..``max_sprites`` sprites of distinct colours."""
    k = world.max_sprites
    counts = torch.randint(min_sprites, k + 1, (n,), generator=generator)
    colours = torch.stack([torch.randperm(len(COLOURS), generator=generator)[:k] for _ in range(n)])
    axis = torch.randint(0, len(AXES), (n, k), generator=generator)
    speed = torch.randint(0, len(SPEEDS), (n, k), generator=generator)
    present = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)
    attributes = torch.stack([colours, axis, speed], dim=-1)
    attributes[~present] = ABSENT
    position = torch.rand(n, k, 2, generator=generator) * world.span
    signs = torch.where(torch.rand(n, k, 2, generator=generator) < 0.5, -1.0, 1.0)
    magnitude = torch.tensor([SPEEDS[s] for s in SPEED_NAMES])[speed.clamp_min(0)] * world.speed_unit
    direction = torch.stack([(axis != 1).float(), (axis != 0).float()], dim=-1)   # h: (1,0) v: (0,1) d: (1,1)
    velocity = signs * direction * magnitude.unsqueeze(-1)
    velocity[~present] = 0.0
    return SpriteState(position, velocity, attributes)


def reflect(p: Tensor, span: float) -> Tensor:
    """Elastic reflection of free positions ``p`` into ``[0, span]`` (a triangle wave of period 2 span)."""
    q = torch.remainder(p, 2 * span)
    return torch.where(q > span, 2 * span - q, q)


def trajectory(world: SpriteWorld, state: SpriteState, frames: int, start: int = 0, stride: int = 1) -> Tensor:
    """Positions ``[N, K, F, 2]`` at frames ``start, start + stride, ...`` (``frames`` of them)."""
    times = start + stride * torch.arange(frames, dtype=state.position.dtype)
    free = state.position.unsqueeze(2) + state.velocity.unsqueeze(2) * times.view(1, 1, -1, 1)
    return reflect(free, world.span)


def _coverage(p: Tensor, size: int, extent: float) -> Tensor:
    """Share of each pixel ``[x, x + 1)`` covered by ``[p, p + extent)``: ``[..., size]``."""
    x = torch.arange(size, dtype=p.dtype)
    return (torch.minimum(x + 1, p.unsqueeze(-1) + extent) - torch.maximum(x, p.unsqueeze(-1))).clamp(0, 1)


def coverage(world: SpriteWorld, positions: Tensor) -> Tensor:
    """Per-sprite pixel coverage ``[N, K, F, H, W]`` of positions ``[N, K, F, 2]``."""
    cx = _coverage(positions[..., 0], world.size, world.sprite)   # [N, K, F, W]
    cy = _coverage(positions[..., 1], world.size, world.sprite)   # [N, K, F, H]
    return cy.unsqueeze(-1) * cx.unsqueeze(-2)


def render(world: SpriteWorld, state: SpriteState, positions: Tensor) -> Tensor:
    """Frames ``[N, 3, F, H, W]`` in [0, 1]: background, then each present sprite in order
    (later sprites occlude earlier ones), anti-aliased by pixel coverage."""
    n, k, f = positions.shape[:3]
    cover = coverage(world, positions)
    frames = torch.full((n, 3, f, world.size, world.size), BACKGROUND, dtype=positions.dtype)
    palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=positions.dtype)
    for j in range(k):
        present = state.present[:, j].to(positions.dtype).view(n, 1, 1, 1, 1)
        alpha = cover[:, j].unsqueeze(1) * present                                # [N, 1, F, H, W]
        colour = palette[state.attributes[:, j, 0].clamp_min(0)].view(n, 3, 1, 1, 1)
        frames = frames * (1 - alpha) + colour * alpha
    return frames


def visible_share(world: SpriteWorld, state: SpriteState, positions: Tensor) -> Tensor:
    """``[N, K, F]``: the share of each sprite's area not hidden by a later sprite."""
    cover = coverage(world, positions)
    k = positions.shape[1]
    out = []
    for j in range(k):
        own = cover[:, j]
        hidden = torch.zeros_like(own)
        for later in range(j + 1, k):
            hidden = torch.maximum(hidden, cover[:, later] * state.present[:, later].float().view(-1, 1, 1, 1))
        area = own.sum(dim=(-1, -2)).clamp_min(1e-6)
        out.append((own * (1 - hidden)).sum(dim=(-1, -2)) / area)
    return torch.stack(out, dim=1)


def locate(world: SpriteWorld, frames: Tensor, colours: Tensor, tolerance: float = 0.3) -> tuple[Tensor, Tensor]:
    """Estimated top-left positions ``[N, K, F, 2]`` of sprites of colour ids ``colours [N, K]`` in
    ``frames [N, 3, F, H, W]`` (in [0, 1]), and the pixel mass found ``[N, K, F]`` in sprite areas.

    A pixel belongs to a colour with weight ``clamp(1 - d / tolerance, 0, 1)``, ``d`` the RGB
    distance to the colour; the position is the weighted centroid minus half the sprite side."""
    palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=frames.dtype)
    n, _, f, h, w = frames.shape
    ys = torch.arange(h, dtype=frames.dtype).view(1, 1, h, 1) + 0.5
    xs = torch.arange(w, dtype=frames.dtype).view(1, 1, 1, w) + 0.5
    positions, masses = [], []
    for j in range(colours.shape[1]):
        colour = palette[colours[:, j].clamp_min(0)].view(n, 3, 1, 1, 1)
        d = (frames - colour).pow(2).sum(dim=1).sqrt()                 # [N, F, H, W]
        weight = (1 - d / tolerance).clamp(0, 1)
        mass = weight.sum(dim=(-1, -2))
        safe = mass.clamp_min(1e-6)
        cx = (weight * xs).sum(dim=(-1, -2)) / safe - world.sprite / 2
        cy = (weight * ys).sum(dim=(-1, -2)) / safe - world.sprite / 2
        positions.append(torch.stack([cx, cy], dim=-1))
        masses.append(mass / world.sprite ** 2)
    return torch.stack(positions, dim=1), torch.stack(masses, dim=1)


# -- captions ---------------------------------------------------------------------------------------
def caption_text(attributes: Tensor) -> str:
    """``"a red square moving horizontally fast and a blue square moving vertically slow"``
    for one video's attributes ``[K, 3]``."""
    parts = [f"a {COLOUR_NAMES[int(c)]} square moving {AXES[int(a)]} {SPEED_NAMES[int(s)]}"
             for c, a, s in attributes.tolist() if c >= 0]
    return " and ".join(parts)


def parse_caption(text: str, max_sprites: int = 2, where: str = "prompt") -> Tensor:
    """The attribute ids ``[K, 3]`` of a caption written like :func:`caption_text`; a one-line
    error naming the unknown word otherwise."""
    out = torch.full((max_sprites, 3), ABSENT, dtype=torch.long)
    clauses = [c.strip() for c in str(text).lower().split(" and ") if c.strip()]
    if not clauses or len(clauses) > max_sprites:
        raise ConfigError(where, f"expected 1 to {max_sprites} clauses like 'a red square moving horizontally "
                          f"fast', joined by 'and'; got {text!r}")
    for j, clause in enumerate(clauses):
        words = clause.replace(",", " ").split()
        colour = [w for w in words if w in COLOURS]
        axis = [w for w in words if w in AXES]
        speed = [w for w in words if w in SPEEDS]
        if len(colour) != 1 or len(axis) != 1 or len(speed) != 1:
            raise ConfigError(where, f"clause {clause!r} must name one colour ({', '.join(COLOURS)}), one motion "
                              f"({', '.join(AXES)}) and one speed ({', '.join(SPEEDS)})")
        out[j] = torch.tensor([COLOUR_NAMES.index(colour[0]), AXES.index(axis[0]), SPEED_NAMES.index(speed[0])])
    if len(set(out[: len(clauses), 0].tolist())) != len(clauses):
        raise ConfigError(where, f"each sprite needs its own colour: {text!r}")
    return out


def state_from_caption(world: SpriteWorld, attributes: Tensor, generator: torch.Generator) -> SpriteState:
    """A random start (positions, direction signs) for sprites with the given attributes ``[N, K, 3]``."""
    n, k, _ = attributes.shape
    present = attributes[..., 0] >= 0
    position = torch.rand(n, k, 2, generator=generator) * world.span
    signs = torch.where(torch.rand(n, k, 2, generator=generator) < 0.5, -1.0, 1.0)
    axis, speed = attributes[..., 1].clamp_min(0), attributes[..., 2].clamp_min(0)
    magnitude = torch.tensor([SPEEDS[s] for s in SPEED_NAMES])[speed] * world.speed_unit
    direction = torch.stack([(axis != 1).float(), (axis != 0).float()], dim=-1)
    velocity = signs * direction * magnitude.unsqueeze(-1)
    velocity[~present] = 0.0
    return SpriteState(position, velocity, attributes.clone())
