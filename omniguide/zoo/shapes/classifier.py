"""A small attribute classifier for the shapes images, and the scorer built on it.

``ShapesClassifier`` reads colour, shape and position from a 32x32 image in ``[-1, 1]`` with three
heads over one small CNN (position needs the spatial layout, so the features are flattened, not
pooled). It is trained on noisy and blurred renders (:mod:`.classifier_training`,
``configs/train/shapes_classifier.yaml``) because scorer guidance applies it to the sampler's
denoised estimate ``x0(x_t)``, which is blurry early on.

``shapes-classifier`` (registered scorer): ``sum over the prompt's attributes of log p(attribute |
x0)`` -- one differentiable score per sample, the plugin of ``scorer-guidance``::

    ScorerGuidance(scale=2.0, scorer={"name": "shapes-classifier", "prompt": "a red ring on the left"},
                   guider=CFG(scale=3.0))
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from ...core.errors import ConfigError
from ...core.scorers import register_scorer
from .data import COLOURS, POSITIONS, SHAPES, parse_caption

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "shapes_classifier.safetensors"
HEADS = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS)}


class ShapesClassifier(nn.Module):
    """Conv 32 -> 16 -> 8 pixels, flattened, one hidden layer, one linear head per attribute."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(width * 8 * 8, hidden), nn.SiLU())
        self.heads = nn.ModuleDict({key: nn.Linear(hidden, len(values)) for key, values in HEADS.items()})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute for ``images [B, 3, 32, 32]`` in ``[-1, 1]``."""
        h = self.features(images)
        return {key: head(h) for key, head in self.heads.items()}


def load_classifier(path: str | Path | None = None) -> ShapesClassifier:
    """The trained classifier (default: the committed weights), float32, eval mode, frozen."""
    from safetensors.torch import load_file

    file = Path(path) if path is not None else WEIGHTS
    if not file.is_file():
        raise ConfigError("weights", f"no classifier weights at {file}")
    model = ShapesClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()})
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _cached(path: str | None) -> ShapesClassifier:
    return load_classifier(path)


@register_scorer("shapes-classifier")
@dataclass
class ShapesClassifierScorer:
    """``log p(colour | x0) + log p(shape | x0) + log p(position | x0)`` for the attributes a caption
    of the shapes model names, under the trained classifier. ``prompt`` is one caption for every
    sample, or one caption per sample (a batch of different prompts, in the batch's order)."""

    prompt: str | list[str] = ""
    weights: str | None = None   # a classifier .safetensors file; None: the committed one

    def __post_init__(self):
        captions = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        self.targets = []
        for caption in captions:
            wanted = {k: HEADS[k].index(v) for k, v in parse_caption(caption).items() if v is not None}
            if not wanted:
                raise ConfigError("prompt", f"'{caption}' names no colour, shape or position of the shapes data")
            self.targets.append(wanted)

    def __call__(self, x0: Tensor) -> Tensor:
        if len(self.targets) not in (1, x0.shape[0]):
            raise ConfigError("prompt", f"{len(self.targets)} captions for a batch of {x0.shape[0]} samples")
        model = _cached(self.weights).to(x0.device)
        log_p = {k: v.log_softmax(-1) for k, v in model(x0.float()).items()}
        rows = self.targets * x0.shape[0] if len(self.targets) == 1 else self.targets
        score = torch.stack([sum(log_p[k][i, c] for k, c in wanted.items()) for i, wanted in enumerate(rows)])
        return score.to(x0.dtype)
