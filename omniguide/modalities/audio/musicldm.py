"""MusicLDM (``MusicLDMPipeline``): AudioLDM's design (mel-VAE latents ``[B, C, T, F]``, CLAP
text features as the UNet's ``class_labels``) trained on music; ``_encode_prompt`` returns
``[negative, positive]`` with CFG, the negative defaulting to CLAP's embedding of ``""``.

On transformers 5, ``ClapModel.get_text_features`` returns an output object where the deprecated
pipeline expects a tensor; inside ``guide()`` the encoder call takes its ``pooler_output`` (the
projected text features), scoped to that call. Outside ``guide()`` the pipeline's own call fails
unless the user patches it (``fix_text_features(pipe)``), as does its CLAP re-ranking
(``score_waveforms``, which also needs librosa).

As in AudioLDM, the UNet's cross-attention gets no context (NAG, VSF, PLADIS refuse in one line) and
ICG replaces the class labels by noise.
Axes: layout ``BCTW`` as AudioLDM (T time frames, W mel bins).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

from torch import Tensor

from ..base import register_family
from . import audioldm


def text_features(original):
    """``get_text_features`` returning a tensor (the ``pooler_output`` of transformers 5's output)."""
    def call(*args, **kwargs) -> Tensor:
        out = original(*args, **kwargs)
        return out if isinstance(out, Tensor) else out.pooler_output
    return call


def fix_text_features(pipe) -> None:
    """Make ``pipe.text_encoder.get_text_features`` return a tensor, permanently (for the pipeline's
    own calls outside ``guide()``)."""
    encoder = pipe.text_encoder
    if "get_text_features" not in encoder.__dict__:
        encoder.get_text_features = text_features(encoder.get_text_features)


@contextmanager
def _tensor_text_features(encoder):
    own = encoder.__dict__.get("get_text_features")
    encoder.get_text_features = text_features(encoder.get_text_features)
    try:
        yield
    finally:
        if own is None:
            encoder.__dict__.pop("get_text_features", None)
        else:
            encoder.get_text_features = own


def encode(original, arguments: dict, negatives: dict):
    """AudioLDM's encoding, with the text features as a tensor for the call."""
    with _tensor_text_features(original.__self__.text_encoder):
        return audioldm.encode(original, arguments, negatives)


# AudioLDM's spec (the same UNet call, condition, axes, checks and outputs) for MusicLDM's class
MUSICLDM = register_family(dataclasses.replace(audioldm.AUDIOLDM, name="musicldm", pipelines=("MusicLDMPipeline",),
                                               encode=encode))
