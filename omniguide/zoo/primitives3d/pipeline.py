"""The 3D prior's pipeline: the zoo's one pixel-space class (its committed ``model_index.json`` files
name ``PixelDiffusionPipeline``), importable from here as before."""

from ..pixel_pipeline import PIXEL, PixelDiffusionPipeline

__all__ = ["PIXEL", "PixelDiffusionPipeline"]
