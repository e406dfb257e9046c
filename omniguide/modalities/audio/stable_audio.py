"""Stable Audio (``StableAudioPipeline``): a DiT on 1-D VAE latents ``[B, C, T]`` (Oobleck, 64
channels x 1024 frames for Stable Audio Open), v-prediction on an EDM schedule (cosine DPM-Solver).

Conditioning, as the pipeline builds it: ``encode_prompt`` returns the projected T5 states (one
tensor; with CFG and a negative prompt, ``[negative, positive]``); ``encode_duration`` gives the
start / end second embeddings; the transformer's ``encoder_hidden_states`` are
``[text, start, end]`` and its ``global_hidden_states`` ``[start ‖ end]``.

Unconditional input, exactly the pipeline's: **without a negative prompt, zeros for the whole
``[text, start, end]`` sequence** (not an encoded empty prompt); with one, the negative text
followed by the same duration states. The global duration states are the same in both branches
(stable-audio-tools keeps the global conditioning unguided too).

Parts: the DiT's time-step embedding is ``timestep_proj`` (after the Fourier features ``time_proj``;
its output is added to the global duration states and prepended as a token), declared for TSG.
Its ``attn2`` modules are the text cross-attention (NAG, VSF, PLADIS act there; ``attn1`` is the
self-attention over the latent frames).

Axes: layout ``BCT`` -- norms and std over channels and time (reduce dims 1, 2), frequency methods
(FDG) over time. ``axes=(1,)`` gives stable-audio-tools' rescale (std over channels, per frame);
``axes=(2,)`` statistics over time per channel (ACE-Step's APG normalisation).
"""

from __future__ import annotations

import torch

from ...core.errors import GuidanceError
from ..base import Family, register_family
from .common import as_waveforms, check_call_common, check_length


def encode(original, arguments: dict, negatives: dict):
    """The text states with CFG on (so a negative is encoded exactly as the pipeline does)."""
    encoded = original(**{**arguments, **negatives, "do_classifier_free_guidance": True})
    if negatives.get("negative_prompt") is None and negatives.get("negative_prompt_embeds") is None:
        return encoded, {"prompt_embeds": encoded}, {}
    negative, positive = encoded.chunk(2)
    return positive, {"prompt_embeds": positive}, {"prompt_embeds": negative}


def uncond(inputs: dict, positive: dict, negative: dict) -> dict:
    """Zeros for ``[text, start, end]``, or the negative text before the same duration states."""
    states = inputs["encoder_hidden_states"]
    text = negative.get("prompt_embeds")
    if text is None:
        return {**inputs, "encoder_hidden_states": torch.zeros_like(states)}
    per_prompt = states.shape[0] // text.shape[0]
    text = text.to(states).repeat_interleave(per_prompt, dim=0)
    return {**inputs, "encoder_hidden_states": torch.cat([text, states[:, text.shape[1]:]], dim=1)}


def max_seconds(pipe) -> float:
    """The longest audio the transformer's latent length covers."""
    return pipe.transformer.config.sample_size * pipe.vae.hop_length / pipe.vae.config.sampling_rate


def check_call(pipe, arguments: dict) -> None:
    who = "guide(StableAudioPipeline)"
    check_call_common(arguments, [pipe.tokenizer], who)
    start = arguments.get("audio_start_in_s") or 0.0
    end = arguments.get("audio_end_in_s")
    longest = max_seconds(pipe)
    check_length(start, "audio_start_in_s", 0.0, longest, who)
    if end is not None:
        check_length(end, "audio_end_in_s", 0.0, None, who)
        if end <= start or end - start > longest + 1e-9:
            raise GuidanceError(f"{who}: audio_end_in_s - audio_start_in_s = {end - start:.4g} s cannot be produced "
                                f"by this model (0 < duration <= {longest:.4g} s)")


def read_output(pipe, result):
    return as_waveforms(result.audios), int(pipe.vae.config.sampling_rate)


STABLE_AUDIO = register_family(Family(
    name="stable-audio",
    pipelines=("StableAudioPipeline",),
    denoiser="transformer",
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds"},
    uncond=uncond,
    layout="BCT",
    negatives=("negative_prompt", "negative_prompt_embeds", "negative_attention_mask"),
    shared=frozenset({"rotary_embedding"}),
    check_call=check_call,
    modality="audio",
    samples_kwarg="num_waveforms_per_prompt",
    output_kwargs={"output_type": "pt"},
    read_output=read_output,
    parts={"time_embedding": ("timestep_proj",)},
))
