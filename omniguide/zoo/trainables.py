"""The zoo's trainable models, by the name a ``train`` recipe's ``model.name`` uses.

Each entry is an import path ``"module:function"``; the function is
``build(model: dict, recipe, path: str) -> lightning.LightningModule`` and is imported only when a
recipe trains that model, so listing the names stays cheap. A zoo model adds one line here and
keeps everything else (architecture, data, LightningModule) in its own file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..core.errors import ConfigError, did_you_mean

TRAINABLES: dict[str, str] = {
    "small-denoiser": "omniguide.zoo.small_denoiser:build_trainable",
    "primitives-prior": "omniguide.zoo.primitives3d.train:build_trainable",
    "shapes": "omniguide.zoo.shapes.training:build_trainable",
    "shapes-classifier": "omniguide.zoo.shapes.classifier_training:build_trainable",
    "toy-audio": "omniguide.zoo.toy_audio_train:build_trainable",
    "video-denoiser": "omniguide.zoo.video_denoiser:build_trainable",
}


def trainable(name: str, path: str = "model.name") -> Callable:
    """The build function of the trainable model ``name`` (a ConfigError naming ``path`` otherwise)."""
    if name not in TRAINABLES:
        raise ConfigError(path, f"unknown trainable model '{name}'{did_you_mean(name, TRAINABLES)}")
    module, _, attr = TRAINABLES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
