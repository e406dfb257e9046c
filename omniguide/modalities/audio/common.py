"""What the audio families share: reading a pipeline's waveforms, and one-line refusals of a call's
arguments (prompt lists, prompt lengths, durations) before any work is done."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ...core.errors import GuidanceError


def check_prompt_list(prompt: Any) -> None:
    """A prompt is a string or a non-empty list of strings (ValueError otherwise)."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt: the prompt list is empty")
        bad = [i for i, p in enumerate(prompt) if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompt {bad[0]}: expected a string, got {type(prompt[bad[0]]).__name__}")
        return
    if prompt is not None:
        raise ValueError(f"prompt: expected a string or a list of strings, got {type(prompt).__name__}")


def check_prompt_lengths(prompt: Any, tokenizers: Iterable[Any], who: str) -> None:
    """Refuse a prompt longer than a tokenizer's ``model_max_length`` (the pipeline would silently
    truncate it): one line naming the prompt, its length and the limit."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    for tokenizer in tokenizers:
        if tokenizer is None:
            continue
        limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
        if limit <= 0 or limit > 1_000_000:
            continue
        for i, text in enumerate(prompts):
            n = len(tokenizer(text, truncation=False).input_ids)
            if n > limit:
                raise GuidanceError(f"{who}: prompt {i} ({text[:40]!r}...) is {n} tokens long; "
                                    f"{type(tokenizer).__name__} takes at most {limit}")


def check_call_common(arguments: dict, tokenizers: Iterable[Any], who: str) -> None:
    """Prompt list, prompt lengths and ``num_waveforms_per_prompt`` of one call."""
    prompt = arguments.get("prompt")
    try:
        check_prompt_list(prompt)
        negative = arguments.get("negative_prompt")
        if negative is not None:
            check_prompt_list(negative)
    except ValueError as err:
        raise GuidanceError(f"{who}: {err}") from None
    n = arguments.get("num_waveforms_per_prompt", 1)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise GuidanceError(f"{who}: num_waveforms_per_prompt must be an int >= 1, got {n!r}")
    if prompt is not None:
        check_prompt_lengths(prompt, tokenizers, who)
        if arguments.get("negative_prompt") is not None:
            check_prompt_lengths(arguments["negative_prompt"], tokenizers, f"{who} (negative_prompt)")


def check_length(value: Any, name: str, low: float, high: float | None, who: str) -> None:
    """``low <= value <= high`` for a duration argument in seconds (``None`` is the model's default)."""
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise GuidanceError(f"{who}: {name} must be a number of seconds, got {value!r}")
    if value < low - 1e-9 or (high is not None and value > high + 1e-9):
        span = f"between {low:.4g} and {high:.4g} s" if high is not None else f"at least {low:.4g} s"
        raise GuidanceError(f"{who}: {name}={value} s cannot be produced by this model ({span})")


def as_waveforms(audios: Any) -> Tensor:
    """A pipeline's ``audios`` (numpy or torch; ``[N, T]`` or ``[N, C, T]``) as float ``[N, C, T]``."""
    x = torch.as_tensor(audios)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim == 2:
        x = x.unsqueeze(1)
    if x.ndim != 3:
        raise GuidanceError(f"audio output of shape {tuple(x.shape)}: expected [N, T] or [N, C, T]")
    return x.float()


def check_mel_call(pipe, arguments: dict, tokenizers: Iterable[Any], who: str) -> None:
    """The AudioLDM family's limits: ``audio_length_in_s`` of at least one latent row
    (``vae_scale_factor`` mel frames of ``prod(vocoder upsample rates) / sampling_rate`` seconds)."""
    import numpy as np

    check_call_common(arguments, tokenizers, who)
    frame = float(np.prod(pipe.vocoder.config.upsample_rates)) / pipe.vocoder.config.sampling_rate
    check_length(arguments.get("audio_length_in_s"), "audio_length_in_s", frame * pipe.vae_scale_factor, None, who)


def read_vocoder_output(pipe, result) -> tuple[Tensor, int]:
    """``[N, 1, T]`` waveforms at the vocoder's sampling rate (AudioLDM, AudioLDM2, MusicLDM)."""
    return as_waveforms(result.audios), int(pipe.vocoder.config.sampling_rate)
