"""The zoo's 3D prior: a small text-conditioned pixel-space diffusion model trained on multi-view
renders of coloured primitives, and the primitives themselves (the ground truth of metrics)."""

from .primitives import COLORS, SHAPES, PrimitiveField, caption, parse_prompt

__all__ = ["caption", "COLORS", "parse_prompt", "PrimitiveField", "SHAPES"]
