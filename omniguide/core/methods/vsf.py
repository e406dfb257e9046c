"""Value sign flip (VSF; "VSF: Simple, Efficient, and Effective Negative Guidance in Few-Step Image
Generation Models By Value Sign Flip"; reference weathon/VSF ``src/processor.py`` and the SD3.5
pipeline: scale 3.5, offset 0.1).

Negative prompting in one forward pass: in every selected context-attention module the positive image
queries also attend to the negative prompt's tokens, whose values are multiplied by ``-scale`` (their
attention logits lowered by ``offset``), so attending to the unwanted concept subtracts it
(:class:`~omniguide.core.perturbations.FlippedValues`). In joint text-image models the negative tokens
form their own stream that sees the image and itself, and the positive text does not see them (the
reference's attention mask); in cross-attention models the negative keys are appended to the positive
ones. The negative prompt's rows share the pass with the positive rows: NFE 2, one pass.

Differences from the reference: it concatenates the negative prompt into the positive one's sequence
(one row, the negative tokens duplicated); here the two are rows of one batch -- the same attention
pattern, without changing the denoiser's inputs. The reference encodes the negative without padding;
here its padding keys are masked (``guide()`` passes the tokenizer's mask), so only real tokens flip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..needs import CROSS_ATTENTION
from ..perturbations import FlippedValues
from ..registry import register_guider
from .nag import AttentionNegative


@register_guider("vsf")
@dataclass
class VSF(AttentionNegative):
    """Value sign flip in one forward pass; see the module docstring."""

    needs: ClassVar[Mapping[str, str]] = {CROSS_ATTENTION: "flips the attention values of the negative tokens"}

    vsf_scale: float = 3.5
    offset: float = 0.1
    branch: str = "vsf"

    def make_perturbation(self):
        return FlippedValues(self.layers, positive=self.branch, negative=self.negative_branch,
                             scale=float(self.vsf_scale), offset=float(self.offset))

    def strength(self) -> float:
        return float(self.vsf_scale)
