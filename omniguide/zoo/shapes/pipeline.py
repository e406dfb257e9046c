"""``ShapesPipeline``: the shapes model's name for the zoo's one pixel-space pipeline class
(:class:`~omniguide.zoo.pixel_pipeline.PixelDiffusionPipeline`, shaped like ``StableDiffusionPipeline``)."""

from __future__ import annotations

import dataclasses

from ...distillation.pipelines import register_pipeline
from ...modalities.base import register_family
from ..pixel_pipeline import PIXEL, PixelDiffusionPipeline


@register_pipeline
class ShapesPipeline(PixelDiffusionPipeline):
    """Generate 32x32 images of coloured shapes from captions such as ``"a red circle on the left"``.

    Only a name: the committed ``weights/shapes/model_index.json`` and the recipes'
    ``pipeline_class`` name ``ShapesPipeline``, and ``save_pretrained`` writes the class's name, so a
    retrained folder stays the committed one."""


# guide(pipe, ..., family="shapes") keeps working: the pixel family's spec under its former name
FAMILY = register_family(dataclasses.replace(PIXEL, name="shapes", pipelines=()))
