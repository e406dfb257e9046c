"""``model: {name: musicgen, path: ...}`` -- transformers' MusicGen in a ``sample`` recipe, guided on its
logits by any guider that serves two branches (:mod:`omniguide.modalities.audio.musicgen`).

    kind: sample
    model: {name: musicgen, path: facebook/musicgen-small, call: {audio_length_in_s: 8, top_k: 250}}
    guider: {preset: musicgen}
    negative_prompt: low quality, noise
    prompts: ["80s pop track with bassy drums and synth"]

``call`` holds ``generate()`` arguments (``do_sample`` defaults to true, as MusicGen's generation
config); ``audio_length_in_s`` is turned into ``max_new_tokens`` with the codec's frame rate. The
recipe's ``steps`` does not apply (tokens are decoded one frame at a time); each item reseeds a
forked torch generator with its seed (transformers samples from torch's global generator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import build_guider
from ..io.config import option
from .registry import register_model
from .sample_models import DTYPES


@register_model("musicgen")
@dataclass
class MusicGenModel:
    """A ``MusicgenForConditionalGeneration`` folder (or cached model id) with its processor."""

    path: str = "???"
    dtype: str = option("float32", choices=("float32", "float16", "bfloat16"))
    device: str = "auto"
    scorer: Any = None
    rerank: int | None = option(None, ge=1)
    call: dict[str, Any] = field(default_factory=dict)

    def sampler(self, scheduler_cfg: dict, batch: bool = True, path: str = "model"):
        if scheduler_cfg:
            raise ConfigError("scheduler", "MusicGen decodes tokens; it has no scheduler to swap")
        return MusicGenSampler(self, path)


class MusicGenSampler:
    """Generates one item's waveforms with :func:`~omniguide.modalities.audio.musicgen.guide_musicgen`."""

    kind = "audio"
    default_samples = 1

    def __init__(self, cfg: MusicGenModel, path: str = "model"):
        from transformers import MusicgenConfig

        from ..modalities.audio.metrics import check_model_folder
        from .sample_models import _scorer, check_rerank

        self.cfg, self.path = cfg, path
        self.folder = check_model_folder(cfg.path, f"{path}.path")
        self.config = MusicgenConfig.from_pretrained(self.folder)
        self.tokens = self._tokens(dict(cfg.call))
        self.scorer = _scorer(cfg.scorer, f"{path}.scorer")
        check_rerank(self.scorer, cfg.rerank, f"{path}.rerank")
        self._model = None

    @property
    def frame_rate(self) -> float:
        audio = self.config.audio_encoder
        return float(getattr(audio, "frame_rate", None) or audio.sampling_rate / torch.tensor(
            audio.upsampling_ratios).prod().item())

    def _tokens(self, call: dict) -> int | None:
        """New tokens per clip from ``max_new_tokens`` or ``audio_length_in_s`` (one-line errors)."""
        where = f"{self.path}.call"
        if "audio_length_in_s" in call and "max_new_tokens" in call:
            raise ConfigError(where, "give audio_length_in_s or max_new_tokens, not both")
        if "guidance_scale" in call:
            raise ConfigError(f"{where}.guidance_scale", "MusicGen's own CFG scale; the recipe's guider owns guidance")
        limit = int(self.config.decoder.max_position_embeddings) - int(self.config.decoder.num_codebooks)
        if "audio_length_in_s" in call:
            seconds = call["audio_length_in_s"]
            if not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ConfigError(f"{where}.audio_length_in_s", f"expected seconds > 0, got {seconds!r}")
            tokens = int(round(seconds * self.frame_rate))
        elif "max_new_tokens" in call:
            tokens = call["max_new_tokens"]
        else:
            return None
        if not isinstance(tokens, int) or tokens < 1 or tokens > limit:
            raise ConfigError(f"{where}", f"{tokens} audio frames ({tokens / self.frame_rate:.3g} s) cannot be "
                              "produced "
                              f"by this model (at most {limit} frames, {limit / self.frame_rate:.3g} s)")
        return tokens

    def model(self, device: torch.device):
        if self._model is None:
            from transformers import AutoProcessor, MusicgenForConditionalGeneration

            target = device if self.cfg.device == "auto" else torch.device(self.cfg.device)
            model = MusicgenForConditionalGeneration.from_pretrained(self.folder, dtype=DTYPES[self.cfg.dtype])
            self._model = (model.to(target).eval(), AutoProcessor.from_pretrained(self.folder))
        return self._model

    def check_item(self, item) -> None:
        if not isinstance(item.prompt, str) or not item.prompt.strip():
            raise ConfigError(item.where, f"expected a text prompt, got {item.prompt!r}")

    def generate(self, item, settings, device: torch.device, progress: bool):
        from ..modalities.audio.common import as_waveforms
        from ..modalities.audio.musicgen import check_guider, guide_musicgen
        from .sample_models import Generated, score_outputs

        model, processor = self.model(device)
        guider = build_guider(settings.guider, f"{item.where}.guider")
        check_guider(guider)
        call = {k: v for k, v in self.cfg.call.items() if k != "audio_length_in_s"}
        call.setdefault("do_sample", True)
        if self.tokens is not None:
            call["max_new_tokens"] = self.tokens
        inputs = processor(text=[item.prompt] * settings.num_samples, padding=True, return_tensors="pt").to(
            model.device)
        negative = None
        if settings.negative_prompt:
            negative = processor(text=[settings.negative_prompt], return_tensors="pt").to(model.device)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), guide_musicgen(model, guider, negative) as handle:
            torch.manual_seed(item.seed)
            audio = model.generate(**inputs, **call)
        rate = int(self.config.audio_encoder.sampling_rate)
        meta = {"nfe": handle.nfe, "forward_passes": len(handle.nfe_per_step), "guided_steps": handle.guided_steps,
                "tokens": len(handle.nfe_per_step), "generate_seconds": time.perf_counter() - start}
        data, meta = score_outputs(self.scorer, self.cfg.rerank, as_waveforms(audio).float().cpu(), item.prompt,
                                   rate, meta)
        return Generated("audio", data, meta, rate)
