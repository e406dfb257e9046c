"""Audio continuation past one window: the zoo's text-to-audio model rolled out with history guidance.

The small audio model (:mod:`.toy_audio`) makes one window of 64 latent frames (1.008 s). Its
denoiser takes a noise level per frame (``timestep [B, F]``), so it is a full-sequence denoiser in
the sense of :mod:`omniguide.modalities.video.protocol`, and the video rollout runs on it unchanged
along the time axis of its latent ``[B, 129 bins, frames]``:

* each window keeps the newest ``context`` frames as history -- ``GIVEN`` (a real clip's latent) or
  ``GENERATED`` (fed back from earlier windows, optionally at a small stabilization level) -- and
  generates ``chunk`` new frames; only the history is kept, so memory is flat in length;
* the guider is any guider of the rollout's branches (``cond`` = prompt + clean history,
  ``uncond`` = empty prompt + clean history): plain CFG, or history guidance
  (:class:`~omniguide.modalities.video.history.HistoryGuidance`: vanilla, temporal, fractional,
  stabilized, custom tables) with text CFG composed in the same table (``text_scale``):
  ``p(x|∅) + w [p(x|h, c) - p(x|∅)] + (w_t - 1) [p(x|h, c) - p(x|h, ∅_c)]`` for vanilla;
* the whole latent is decoded once at the end (Griffin-Lim over all frames), so decoding adds no
  seams between windows.

:class:`AudioRollout` is what the ``rollout`` recipe (``model: {name: toy-audio}``) and the
``bench-audio-continuation`` benchmark need from the model, like
:class:`~omniguide.zoo.sprite_rollout.SpriteRollout` for video: the protocol model call, noise path
and sampler, the prompt's conditions, a known start signal synthesized from the prompt's attributes
(:func:`known_signal`), the writer (:class:`AudioStream`: WAV + log-mel PNG) and the score against
the known signal (:func:`continuation_metrics`: pitch, timbre and level per window, seams).
:func:`continue_audio` is the library entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.guider import Guider
from ..core.model_call import ModelCall
from ..core.noise import NoiseSchedule
from ..core.schedulers import noise_schedule, swap_scheduler
from ..modalities.video.protocol import HistoryDenoiser
from ..modalities.video.rollout import Rollout, RolloutPlan, RolloutResult, check_frame_multiple
from . import toy_audio_data as data
from .toy_audio import SpectrogramCodec, ToyAudioPipeline, load_pretrained

MARGIN = 8            # frames synthesized past the end of a known signal, so its fade-out is cut off
PITCH_KEPT = 0.5      # semitones: the scorer's own pitch-class tolerance


@dataclass
class AudioRollout:
    """The zoo's text-to-audio model seen by a rollout (see the module docstring)."""

    pipe: ToyAudioPipeline
    layout: str = "BCT"
    axis: int = 2
    frame_multiple: int = 4            # the UNet halves the frames twice
    sampler: str = "dpm++"             # the pipeline's own solver, on its training schedule
    output_defaults: tuple = ()

    @staticmethod
    def load(path: str | Path | None = None) -> AudioRollout:
        """The committed model (or a folder written by ``configs/train/toy_audio.yaml``), loaded quietly
        (no progress bars: a rollout's stderr is its log)."""
        from diffusers.utils import logging

        shown = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()
        try:
            pipe = load_pretrained(path)
        finally:
            if shown:
                logging.enable_progress_bar()
        pipe.set_progress_bar_config(disable=True)
        return AudioRollout(pipe)

    @property
    def rate(self) -> int:
        return self.pipe.sample_rate

    @property
    def window(self) -> int:
        """Frames per model call: the training clip (64 frames)."""
        return data.FRAMES

    @property
    def model(self) -> ModelCall:
        denoiser = self.pipe.denoiser
        return ModelCall(HistoryDenoiser(denoiser, axis=self.axis, max_window=self.window), module=denoiser,
                         fixed={"return_dict": False})

    @property
    def schedule(self) -> NoiseSchedule:
        return noise_schedule(self.pipe.scheduler)

    def scheduler(self, name: str | None = None, path: str = "scheduler", **overrides: Any):
        """A fresh sampler by short name on the model's training schedule (cosine VP, v-prediction)."""
        return swap_scheduler(self.pipe.scheduler, name or self.sampler, path, **overrides)

    # -- prompts ------------------------------------------------------------------------------------------
    def check_prompt(self, prompt: str, path: str = "prompt") -> data.Attributes:
        """The attributes a prompt names; one-line errors for a prompt the text encoder refuses or that
        names no sound kind (the known start signal needs one)."""
        try:
            self.pipe.text_encoder.tokenize([prompt])
        except ValueError as err:
            raise ConfigError(path, str(err)) from None
        named = data.parse(prompt)
        if named.kind is None:
            raise ConfigError(path, f"'{prompt}' names no kind of sound; say tone (or a pitch), rising chirp, "
                              "falling chirp or noise burst")
        return named

    def conditions(self, prompt: str, n: int) -> dict[str, Tensor]:
        """The denoiser's text inputs for ``n`` clips of ``prompt`` (the empty prompt is the null condition)."""
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt, self.pipe.device, n, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def null(self, n: int) -> dict[str, Tensor]:
        return self.conditions("", n)

    def keyframe_inputs(self, stride: int) -> dict:
        """Keyframes need a frame-stride condition, which this model does not have: always an error."""
        raise ConfigError("keyframe_stride", f"{stride}: the toy-audio model was not trained with a frame stride, so "
                          "it cannot generate keyframes apart; use keyframe_stride: 1")

    # -- the known signal -----------------------------------------------------------------------------------
    def attributes(self, prompt: str, n: int, seed: int) -> list[data.Attributes]:
        """``n`` complete attribute sets: those ``prompt`` names, the rest drawn from ``seed``."""
        named, gen = self.check_prompt(prompt), torch.Generator().manual_seed(seed)
        return [complete(named, gen) for _ in range(n)]

    def start(self, prompt: str, n: int, frames: int, seed: int) -> tuple[Tensor, list[data.Attributes]]:
        """``n`` real starts for ``prompt``: the first ``frames`` latent frames of its known signal, and
        the attributes they were synthesized with."""
        attributes = self.attributes(prompt, n, seed)
        return known_signal(self.pipe.codec, attributes, frames, seed), attributes

    def decode(self, latent: Tensor) -> Tensor:
        """Waveforms ``[B, hop (F - 1)]`` of a whole latent ``[B, bins, F]`` (one Griffin-Lim: no seams)."""
        return self.pipe.codec.decode(latent.detach().float().cpu())

    # -- outputs and scores ------------------------------------------------------------------------------------
    def check_output(self, options: Mapping[str, Any]) -> None:
        from ..modalities.audio.io import check_options

        check_options({**dict(self.output_defaults), **options})

    def stream(self, folder: Path, n: int, options: Mapping[str, Any]) -> AudioStream:
        return AudioStream(Path(folder), "audio", n, {**dict(self.output_defaults), **options}, self.decode, self.rate)

    def score(self, attributes: list[data.Attributes]) -> ContinuationScore:
        """A rollout sink that scores the continuation against the known signal of ``attributes``."""
        return ContinuationScore(self, attributes)


def complete(named: data.Attributes, gen: torch.Generator) -> data.Attributes:
    """``named`` with its unnamed attributes drawn uniformly (a pitch for tones, a timbre unless noise,
    an envelope), as the training captions that leave them out mean."""
    def choice(options):
        options = tuple(options)
        return options[int(torch.randint(len(options), (), generator=gen))]
    kind = named.kind
    pitch = named.pitch or (choice(data.PITCHES) if kind == "tone" else None)
    timbre = named.timbre or (choice(data.TIMBRES) if kind != "noise" else None)
    return data.Attributes(kind, pitch if kind == "tone" else None, timbre if kind != "noise" else None,
                           named.envelope or choice(data.ENVELOPES))


def known_signal(codec: SpectrogramCodec, attributes: list[data.Attributes], frames: int, seed: int) -> Tensor:
    """The latent ``[n, bins, frames]`` of clips synthesized with ``attributes`` (:func:`toy_audio_data.synthesize`,
    random phase and level from ``seed``), ``MARGIN`` frames longer than asked so that the synthesizer's
    10 ms fade-out lies past the end: the signal continues through its last frame."""
    samples = codec.config.hop_length * (frames + MARGIN - 1)
    wave = data.synthesize(attributes, torch.Generator().manual_seed(seed), n=samples)
    return codec.encode(wave)[:, :, :frames]


def check_given(latent: Tensor, bins: int) -> None:
    """A given history is a latent ``[clips, bins, frames]`` (one-line error naming ``given``)."""
    if latent.ndim != 3 or latent.shape[1] != bins:
        raise ConfigError("given", f"expected a latent [clips, {bins} bins, frames], got {tuple(latent.shape)}")


# -- the writer ----------------------------------------------------------------------------------------------
class AudioStream:
    """The recipe's rollout sink for audio: latent frames kept in order (one frame is 129 floats, so an
    8 s clip holds 260 kB; the rollout itself keeps only its context), decoded once by
    :meth:`finish` -- over the whole latent, so no seams -- and written as ``<name>_<k>.wav`` and
    ``<name>_<k>.png`` (log-mel) with :func:`omniguide.modalities.audio.io.write_outputs`. The runner
    calls :meth:`finish` after an error too, so the audio generated so far is written."""

    def __init__(self, folder: Path, name: str, count: int, options: Mapping[str, Any],
                 decode: Callable[[Tensor], Tensor], rate: int):
        from ..modalities.audio.io import check_options

        self.folder, self.name, self.count, self.decode, self.rate = folder, name, count, decode, rate
        self.options = check_options(options)
        self.pieces: list[Tensor] = []
        self.frames = 0

    def __call__(self, frames: Tensor, start: int) -> None:
        if start != self.frames:
            raise ConfigError("frames", f"frames arrive out of order: got frame {start}, expected {self.frames}")
        if frames.shape[0] != self.count:
            raise ConfigError("samples", f"frames of {frames.shape[0]} clips for a writer of {self.count}")
        self.pieces.append(frames.detach().float().cpu())
        self.frames += frames.shape[-1]

    @property
    def latent(self) -> Tensor:
        return torch.cat(self.pieces, dim=-1)

    def finish(self) -> list[str]:
        """The WAV and PNG of every clip from the frames received so far; returns the file names."""
        from ..modalities.audio.io import write_outputs

        if not self.pieces:
            return []
        waves = self.decode(self.latent).unsqueeze(1)
        return write_outputs(self.folder, self.name, waves, self.rate, self.options)


# -- the score against the known signal ---------------------------------------------------------------------
def window_bounds(frames: int, given: int, chunk: int) -> list[tuple[int, int]]:
    """Frame ranges ``[a, b)``: the given history, then each generated window of ``chunk`` frames (the
    last may be shorter), as the sliding rollout produces them."""
    bounds = [(0, given)]
    for a in range(given, frames, chunk):
        bounds.append((a, min(a + chunk, frames)))
    return bounds


def spectral_flux(magnitude: Tensor) -> Tensor:
    """Relative spectral flux ``[B, F - 1]`` of magnitudes ``[B, bins, F]``: entry ``j - 1`` is the change
    into frame ``j``, ``sum_b |M_j - M_{j-1}| / (sum_b (M_j + M_{j-1}) / 2)`` (0: steady, 2: disjoint)."""
    step = (magnitude[..., 1:] - magnitude[..., :-1]).abs().sum(1)
    level = 0.5 * (magnitude[..., 1:] + magnitude[..., :-1]).sum(1)
    return step / level.clamp_min(1e-8)


def seam_ratio(magnitude: Tensor, bounds: list[tuple[int, int]]) -> float:
    """Mean spectral flux into the first frame of each generated window (the seams, the first one joining
    the given history) over the mean flux between frames inside the generated windows (1: seams are as
    smooth as the rest; > 1: audible joins)."""
    flux = spectral_flux(magnitude)
    seams = [a for a, _ in bounds[1:]]
    inside = [j for a, b in bounds[1:] for j in range(a + 1, b)]
    if not seams or not inside:
        return float("nan")
    return float(flux[:, [j - 1 for j in seams]].mean() / flux[:, [j - 1 for j in inside]].mean().clamp_min(1e-12))


def rms(x: Tensor) -> Tensor:
    return x.double().pow(2).mean().sqrt()


def measure_window(audio: Tensor, reference: Tensor, attributes: data.Attributes) -> tuple[float, float, float]:
    """One clip's window ``audio [T]`` against its known signal: the pitch error in semitones
    ``12 |log2(f / f_prompt)|`` (the scorer's pitch; NaN unless a tone), whether the scorer still
    measures the signal's timbre (1 / 0; NaN for noise) and the level ``20 log10(RMS / RMS_reference)`` dB
    (``reference``: the given history's audio)."""
    f = data.features(audio.float())
    target = data.PITCHES.get(attributes.pitch) if attributes.kind == "tone" else None
    pitch = abs(12 * math.log2(f["pitch_hz"] / target)) if target else float("nan")
    timbre = float(data.classify(f).timbre == attributes.timbre) if attributes.timbre else float("nan")
    level = float(20 * torch.log10(rms(audio).clamp_min(1e-12) / rms(reference).clamp_min(1e-12)))
    return pitch, timbre, level


def nan_mean(x: Tensor) -> float:
    """The mean of the measured entries (NaN: not measured), NaN when there are none."""
    return float(x.nanmean()) if (~x.isnan()).any() else float("nan")


def continuation_metrics(latent: Tensor, wave: Tensor, attributes: list[data.Attributes], given: int, chunk: int,
                         codec: SpectrogramCodec) -> dict[str, Any]:
    """A continuation ``latent [n, bins, F]`` (decoded: ``wave [n, T]``) against the known signal of
    ``attributes`` whose first ``given`` frames it continues.

    Every generated window (``chunk`` frames, :func:`window_bounds`) of every clip is measured by
    :func:`measure_window`. Returned: the means over windows and clips (``pitch_err`` semitones,
    ``pitch_kept`` share within half a semitone, ``timbre_kept``, ``level_db`` signed,
    ``level_drift_db`` = mean |level|), the last window's (``*_last``), per-window means
    (``*_by_window``), the seam ratio (:func:`seam_ratio`) and ``latent_max`` (the largest generated
    latent value; the synthesized data stay below about 1.04)."""
    hop = codec.config.hop_length
    bounds = window_bounds(latent.shape[-1], given, chunk)
    wave = wave.detach().double().cpu()

    def audio(k: int, a: int, b: int) -> Tensor:
        return wave[k, a * hop: min(b * hop, wave.shape[-1])]
    measured = torch.tensor([[measure_window(audio(k, a, b), audio(k, *bounds[0]), attr)
                              for k, attr in enumerate(attributes)] for a, b in bounds[1:]], dtype=torch.float64)
    p, t, lv = measured.unbind(-1)                              # each [windows, clips]
    kept = torch.where(p.isnan(), p, (p < PITCH_KEPT).double())
    generated = latent[..., given:]
    return {
        "pitch_err": nan_mean(p), "pitch_err_last": nan_mean(p[-1]), "pitch_kept": nan_mean(kept),
        "timbre_kept": nan_mean(t), "timbre_kept_last": nan_mean(t[-1]),
        "level_db": nan_mean(lv), "level_db_last": nan_mean(lv[-1]), "level_drift_db": nan_mean(lv.abs()),
        "seam_ratio": seam_ratio(codec.magnitude(latent), bounds),
        "latent_max": float(generated.max()) if generated.numel() else float("nan"),
        "pitch_err_by_window": [nan_mean(row) for row in p], "level_db_by_window": [nan_mean(row) for row in lv],
        "timbre_kept_by_window": [nan_mean(row) for row in t],
    }


@dataclass
class ContinuationScore:
    """A rollout sink that keeps the latent (for scoring) and, at :meth:`summary`, decodes it whole and
    measures it against the known signal (:func:`continuation_metrics`)."""

    subject: AudioRollout
    attributes: list[data.Attributes]
    pieces: list = field(default_factory=list)

    def __call__(self, frames: Tensor, start: int) -> None:
        self.pieces.append(frames.detach().float().cpu())

    def summary(self, given: int, chunk: int) -> dict[str, Any]:
        latent = torch.cat(self.pieces, dim=-1)
        return continuation_metrics(latent, self.subject.decode(latent), self.attributes, given, chunk,
                                    self.subject.pipe.codec)


# -- the library entry point ---------------------------------------------------------------------------------
@dataclass
class Continuation:
    """A continued latent ``[n, bins, frames]`` (the given frames first, bit for bit) and what the rollout did."""

    latent: Tensor
    result: RolloutResult


def continue_audio(subject: AudioRollout, prompt: str, given: Tensor, frames: int, guider: Guider, *,
                   context: int = 32, chunk: int = 32, steps: int = 20, sampler: str | None = None,
                   stabilization: float | list = 0.02, generator: torch.Generator | None = None,
                   progress: bool = False, on_window: Callable[[dict], None] | None = None) -> Continuation:
    """Continue ``given`` (a latent ``[n, bins, F0]``: a real clip's, or the model's own window) to
    ``frames`` frames in all, ``chunk`` new frames per window from a history of the newest ``context``
    frames, with ``guider`` (e.g. ``HistoryGuidance(scheme="vanilla", scale=2, text_scale=3)``);
    frame counts must be multiples of 4 (one-line errors name the culprit). Decode the result with
    ``subject.decode(latent)``."""
    check_given(given, subject.pipe.codec.channels)
    check_frame_multiple(subject.frame_multiple, history=given.shape[-1], context=context, chunk=chunk,
                         frames=frames)
    plan = RolloutPlan(subject.window, context, chunk)
    roll = Rollout.of(subject, prompt, given.shape[0], subject.scheduler(sampler), guider, plan, steps=steps,
                      stabilization=stabilization, progress=progress, on_window=on_window)
    pieces: list[Tensor] = []
    with torch.no_grad():
        result = roll(given, frames, lambda x, start: pieces.append(x), generator)
    return Continuation(torch.cat(pieces, dim=-1), result)


def build(cfg: dict, path: str = "model") -> AudioRollout:
    """``model: {name: toy-audio, path: <pipeline folder>}`` (default: the committed weights)."""
    from ..io.config import find_file

    unknown = [k for k in cfg if k not in ("name", "path")]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}", "unknown key for 'toy-audio'; valid: path")
    folder = cfg.get("path")
    if folder is not None:
        folder = find_file(str(Path(str(folder)) / "model_index.json"), f"{path}.path").parent
    return AudioRollout.load(folder)
