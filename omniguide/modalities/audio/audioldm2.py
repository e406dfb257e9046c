"""AudioLDM2 (``AudioLDM2Pipeline``): a UNet with two cross-attentions on mel-VAE latents
``[B, C, T, F]``. ``encode_prompt`` runs CLAP and Flan-T5, projects them, and lets GPT-2 generate
``max_new_tokens`` hidden states (the "language of audio"); it returns ``(prompt_embeds,
attention_mask, generated_prompt_embeds)``, each ``[negative, positive]`` with CFG.

Conditions: ``encoder_hidden_states`` <- the GPT-2 states, ``encoder_hidden_states_1`` <- the T5
states, ``encoder_attention_mask_1`` <- their mask. **The negative prompt (default ``""``) goes
through the same GPT-2 generation**, exactly as the pipeline does, so the unconditional branch is
the pipeline's. (The TTS checkpoints' VITS path gives zeros for the negative, also as the pipeline.)

ICG replaces both cross-attention contexts (GPT-2 and T5 states) by noise.
Axes: layout ``BCTW`` as AudioLDM (T time frames, W mel bins).
"""

from __future__ import annotations

from ..base import Family, register_family
from .common import check_mel_call, read_vocoder_output

_NAMES = ("prompt_embeds", "attention_mask", "generated_prompt_embeds")


def encode(original, arguments: dict, negatives: dict):
    encoded = original(**{**arguments, **negatives, "do_classifier_free_guidance": True})
    halves = [value.chunk(2) for value in encoded]
    positive = {name: pos for name, (_, pos) in zip(_NAMES, halves)}
    negative = {name: neg for name, (neg, _) in zip(_NAMES, halves)}
    return tuple(positive[n] for n in _NAMES), positive, negative


def check_call(pipe, arguments: dict) -> None:
    check_mel_call(pipe, arguments, [pipe.tokenizer, pipe.tokenizer_2], "guide(AudioLDM2Pipeline)")


AUDIOLDM2 = register_family(Family(
    name="audioldm2",
    pipelines=("AudioLDM2Pipeline",),
    denoiser="unet",
    sample="sample",
    encode=encode,
    conditions={"encoder_hidden_states": "generated_prompt_embeds", "encoder_hidden_states_1": "prompt_embeds",
                "encoder_attention_mask_1": "attention_mask"},
    layout="BCTW",
    negatives=("negative_prompt", "negative_prompt_embeds", "negative_generated_prompt_embeds",
               "negative_attention_mask"),
    check_call=check_call,
    modality="audio",
    samples_kwarg="num_waveforms_per_prompt",
    output_kwargs={"output_type": "pt"},
    read_output=read_vocoder_output,
    embeddings=("encoder_hidden_states", "encoder_hidden_states_1"),
))
