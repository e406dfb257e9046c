"""AudioLDM (``AudioLDMPipeline``): a UNet on mel-VAE latents ``[B, C, T, F]`` (time frames x mel
bins), epsilon prediction on a DDIM schedule, conditioned only through its class embedding: the
L2-normalised CLAP text embedding is passed as ``class_labels`` (no cross-attention).

``_encode_prompt(prompt, device, num_waveforms_per_prompt, do_classifier_free_guidance,
negative_prompt, ...)`` returns one tensor, ``[negative, positive]`` with CFG; the negative
defaults to CLAP's embedding of ``""``. Unconditional input: that negative embedding.

The UNet's ``attn2`` modules are called without a context (``encoder_hidden_states=None``): they
attend to the latent only, so the attention-space negatives (NAG, VSF, PLADIS) refuse this family in
one line; ICG replaces the class labels by noise.

Axes: layout ``BCTW`` -- T the latent's time frames, W its mel bins (the latent is an image over
time x mel): norms and std over channels, time and mel (dims 1, 2, 3); FDG over time and mel.

The spec is MusicLDM's too (``musicldm.py`` replaces its name, class and encoder).
"""

from __future__ import annotations

from ..base import Family, register_family
from .common import check_mel_call, read_vocoder_output


def encode(original, arguments: dict, negatives: dict):
    negative, positive = original(**{**arguments, **negatives, "do_classifier_free_guidance": True}).chunk(2)
    return positive, {"prompt_embeds": positive}, {"prompt_embeds": negative}


def check_call(pipe, arguments: dict) -> None:
    check_mel_call(pipe, arguments, [pipe.tokenizer], f"guide({type(pipe).__name__})")


AUDIOLDM = register_family(Family(
    name="audioldm",
    pipelines=("AudioLDMPipeline",),
    denoiser="unet",
    sample="sample",
    encode=encode,
    encoder="_encode_prompt",
    conditions={"class_labels": "prompt_embeds"},
    layout="BCTW",
    check_call=check_call,
    modality="audio",
    samples_kwarg="num_waveforms_per_prompt",
    output_kwargs={"output_type": "pt"},
    read_output=read_vocoder_output,
    embeddings=("class_labels",),
))
