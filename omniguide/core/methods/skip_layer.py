"""Skip-layer guidance (Stability AI's SD3.5 recipe, diffusers ``pipeline_stable_diffusion_3``;
the video form is STG, Hyung et al. 2024, "Spatiotemporal Skip Guidance for Enhanced Video
Diffusion Sampling", arXiv:2411.18664).

The perturbed branch is the conditional branch with selected transformer blocks skipped (each
returns its input):

    pred = u + w (c - u) + s (c - p)          (SD3.5: blocks 7, 8, 9; s = 2.8; steps 1%-20%)
    pred = c + s (c - p)                       when CFG is off

SD3.5's pipeline and diffusers' ``SkipLayerGuidance`` only run the skip pass when CFG is on; here
it runs at every CFG scale. Use ``perturbed_interval=(0.01, 0.2)`` for SD3.5's step window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..branch import Perturbation
from ..needs import BLOCKS
from ..perturbations import SkipBlocks
from ..registry import register_guider
from ..scale import Scale
from .pag import PerturbedGuidance


@register_guider("skip-layer")
@dataclass
class SkipLayer(PerturbedGuidance):
    """Skip-layer guidance: ``u + w (c - u) + s (c - p)`` (``c + s (c - p)`` without CFG), ``p`` = the
    conditional branch with selected blocks returning their input. SD3.5 / STG (arXiv:2411.18664).
    Default layers: SD3.5's blocks 7-9 of 24 scaled to the model's depth; a UNet's mid block."""

    needs: ClassVar[Mapping[str, str]] = {BLOCKS: "skips transformer blocks"}

    perturbed_scale: Scale = 2.8

    def make_perturbation(self) -> Perturbation:
        return SkipBlocks(self.layers)
