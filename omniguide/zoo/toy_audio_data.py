"""Captioned synthetic sounds for the small text-to-audio model, and an analytic scorer of them.

Every clip is mono, ``SAMPLE_RATE`` = 8 kHz, ``CLIP_SAMPLES`` = 8064 samples (1.008 s = 64 STFT
frames of hop 128). A caption names up to four attributes:

* **kind** -- ``tone`` (a steady pitch), ``rising chirp`` / ``falling chirp`` (an exponential
  sweep between about 250 Hz and 1.1 kHz), ``noise burst`` (white noise);
* **pitch** (tones) -- one of :data:`PITCHES` (C4 ... A5, 262 - 880 Hz);
* **timbre** (tones and chirps) -- ``pure`` (sine), ``bright`` (sawtooth: harmonics ``1/k``),
  ``hollow`` (square: odd harmonics ``1/k``), band-limited below 3.8 kHz;
* **envelope** -- ``sustained`` (flat), ``decaying`` (exponential decay), ``swelling`` (rising).

Captions read ``"a bright A4 tone, decaying"``, ``"a pure rising chirp, swelling"``, ``"a noise
burst, sustained"``; the timbre and the envelope are each left out of a quarter of the training
captions (the sound then has a random one), so partial prompts work.

:class:`ToyAudioScorer` measures the same attributes from a waveform with plain signal analysis
(no model): spectral flatness (tone vs noise), the pitch of the whole-clip spectrum's peak (FFT),
the slope of the per-frame peak frequency (chirp direction), the even/odd harmonic ratios (timbre)
and the RMS of the first vs the last third (envelope). A prompt is *correct* for a clip when every
attribute the prompt names is measured as named. On the generator's own clips it is 100 % correct
(tested).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.scorers import register_output_scorer

SAMPLE_RATE = 8000
HOP = 128
N_FFT = 256
FRAMES = 64
CLIP_SAMPLES = HOP * (FRAMES - 1)      # 8064: centred STFT frames 0 ... 63

PITCHES = {"c4": 261.63, "e4": 329.63, "g4": 392.00, "a4": 440.00,
           "c5": 523.25, "e5": 659.26, "g5": 783.99, "a5": 880.00}
KINDS = ("tone", "rising", "falling", "noise")
TIMBRES = ("pure", "bright", "hollow")
ENVELOPES = ("sustained", "decaying", "swelling")
KIND_WORDS = {"tone": "tone", "rising": "rising chirp", "falling": "falling chirp", "noise": "noise burst"}
# every word a caption can contain (the small text encoder's vocabulary)
VOCABULARY = ("a", "an", "tone", "chirp", "rising", "falling", "noise", "burst", *TIMBRES, *ENVELOPES, *PITCHES)
MAX_HARMONIC_HZ = 3800.0


@dataclass(frozen=True)
class Attributes:
    """What a caption says (``None``: not said)."""

    kind: str | None = None
    pitch: str | None = None
    timbre: str | None = None
    envelope: str | None = None


def caption(a: Attributes) -> str:
    """The caption of some attributes, e.g. ``"a bright A4 tone, decaying"``."""
    words = []
    if a.timbre:
        words.append(a.timbre)
    if a.kind == "tone" and a.pitch:
        words.append(a.pitch.upper())
    words.append(KIND_WORDS[a.kind])
    article = "an" if words[0][0].lower() in "aeiou" else "a"
    text = f"{article} {' '.join(words)}"
    return f"{text}, {a.envelope}" if a.envelope else text


def words(text: str) -> list[str]:
    """Lower-cased words of a caption (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def parse(text: str) -> Attributes:
    """The attributes a prompt names (unknown words are ignored)."""
    ws = words(text)
    kind = "rising" if "rising" in ws else "falling" if "falling" in ws else "noise" if "noise" in ws else (
        "tone" if "tone" in ws or any(w in PITCHES for w in ws) else None)
    pick = lambda options: next((w for w in ws if w in options), None)  # noqa: E731
    return Attributes(kind, pick(PITCHES), pick(TIMBRES), pick(ENVELOPES))


# -- synthesis ------------------------------------------------------------------------------------------
def envelope_curve(name: str, n: int, tau: float = 0.2) -> Tensor:
    """An amplitude envelope of ``n`` samples with 10 ms fades: flat, ``exp(-t / tau)`` or
    ``exp((t - end) / tau)``."""
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    length = n / SAMPLE_RATE
    if name == "sustained":
        env = torch.ones(n, dtype=torch.float64)
    elif name == "decaying":
        env = torch.exp(-t / tau)
    elif name == "swelling":
        env = torch.exp((t - length) / tau)
    else:
        raise ValueError(f"unknown envelope '{name}'; valid: {', '.join(ENVELOPES)}")
    fade = torch.clamp(torch.minimum(t, length - t) / 0.01, max=1.0)
    return env * fade


def harmonics(timbre: str) -> list[tuple[int, float]]:
    """``(k, amplitude)`` of the partials of a timbre (before band-limiting)."""
    if timbre == "pure":
        return [(1, 1.0)]
    if timbre == "bright":
        return [(k, 1.0 / k) for k in range(1, 16)]
    if timbre == "hollow":
        return [(k, 1.0 / k) for k in range(1, 16, 2)]
    raise ValueError(f"unknown timbre '{timbre}'; valid: {', '.join(TIMBRES)}")


def synthesize(attributes: list[Attributes], gen: torch.Generator, n: int = CLIP_SAMPLES) -> Tensor:
    """Clips ``[len(attributes), n]`` (float32) with the given attributes (all four set), made in one
    vectorised pass: band-limited additive partials on an exponential frequency path, or noise,
    times the envelope, scaled to a random peak in [0.35, 0.65]."""
    b = len(attributes)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    u = torch.rand(b, 5, generator=gen, dtype=torch.float64)          # chirp ends, phase, peak, envelope
    start = torch.tensor([PITCHES[a.pitch] if a.kind == "tone" else 0.0 for a in attributes], dtype=torch.float64)
    low, high = 230.0 + 60.0 * u[:, 0], 950.0 + 250.0 * u[:, 1]
    rising = torch.tensor([a.kind == "rising" for a in attributes])
    falling = torch.tensor([a.kind == "falling" for a in attributes])
    f0 = torch.where(rising, low, torch.where(falling, high, start))
    f1 = torch.where(rising, high, torch.where(falling, low, start))
    f0 = f0.clamp_min(1.0)
    freq = f0[:, None] * (f1.clamp_min(1.0) / f0)[:, None] ** (t / t[-1])[None]         # [b, n]
    cycles = torch.cumsum(freq, 1) / SAMPLE_RATE + u[:, 2:3]                           # [b, n]
    ks = torch.arange(1, 16, dtype=torch.float64)
    amps = torch.stack([_partials(a.timbre if a.kind != "noise" else "pure") for a in attributes])   # [b, 15]
    audible = (ks[None, :, None] * freq[:, None, :]) < MAX_HARMONIC_HZ                   # [b, 15, n]
    # partial k's phase, reduced mod one cycle in float64 so the float32 sine stays exact
    phase = (2 * math.pi * torch.frac(ks[None, :, None] * cycles[:, None, :])).float()
    wave = ((amps[:, :, None] * audible).float() * torch.sin(phase)).sum(1).double()
    noise = torch.randn(b, n, generator=gen, dtype=torch.float64)
    is_noise = torch.tensor([a.kind == "noise" for a in attributes])
    wave = torch.where(is_noise[:, None], noise, wave)
    env = torch.stack([envelope_curve(a.envelope, n, 0.12 + 0.15 * float(u[i, 4])) for i, a in enumerate(attributes)])
    wave = wave * env
    peak = 0.35 + 0.3 * u[:, 3:4]
    return (peak * wave / wave.abs().amax(1, keepdim=True).clamp_min(1e-12)).float()


def _partials(timbre: str) -> Tensor:
    """Amplitudes of partials 1 ... 15 of a timbre (before band-limiting)."""
    amps = torch.zeros(15, dtype=torch.float64)
    for k, a in harmonics(timbre):
        amps[k - 1] = a
    return amps


def random_attributes(gen: torch.Generator) -> Attributes:
    """Uniformly random attributes (all four set; pitch only for tones)."""
    def choice(options):
        return options[int(torch.randint(len(options), (), generator=gen))]
    kind = choice(KINDS)
    return Attributes(kind, choice(tuple(PITCHES)) if kind == "tone" else None,
                      choice(TIMBRES) if kind != "noise" else None, choice(ENVELOPES))


def training_batch(n: int, gen: torch.Generator, drop: float = 0.25) -> tuple[Tensor, list[str]]:
    """``n`` random clips ``[n, CLIP_SAMPLES]`` and their captions; the timbre and the envelope are
    each left out of a caption with probability ``drop``."""
    attributes = [random_attributes(gen) for _ in range(n)]
    keep = torch.rand(n, 2, generator=gen) >= drop
    captions = [caption(Attributes(a.kind, a.pitch, a.timbre if keep[i, 0] else None,
                                   a.envelope if keep[i, 1] else None)) for i, a in enumerate(attributes)]
    return synthesize(attributes, gen), captions


# -- the analytic scorer -----------------------------------------------------------------------------
def _frames(wave: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame magnitude spectra ``[frames, bins]`` (hann 256, hop 64) and frame RMS."""
    window = torch.hann_window(N_FFT, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, hop_length=64, window=window, center=True, return_complex=True).abs().T
    rms = spec.pow(2).mean(1).sqrt()
    return spec, rms


def features(wave: Tensor, rate: int = SAMPLE_RATE) -> dict[str, float]:
    """The scorer's measurements of one mono clip ``[T]``: ``flatness`` (spectral flatness, 0 pure
    tone ... 1 white noise), ``pitch_hz`` (peak of the whole-clip spectrum), ``slope`` (octaves per
    second of the per-frame peak frequency), ``h2`` / ``h3`` (2nd / 3rd harmonic over the
    fundamental), ``envelope`` (log2 RMS of the last third over the first third of the active part)."""
    if rate != SAMPLE_RATE:
        raise ValueError(f"the toy-audio scorer measures {SAMPLE_RATE} Hz clips, got {rate} Hz")
    x = wave.double()
    spec, rms = _frames(x)
    active = rms > 0.05 * rms.max().clamp_min(1e-12)
    power = spec[active].pow(2).mean(0).clamp_min(1e-20)
    flatness = float(power.log().mean().exp() / power.mean())
    # pitch: the whole clip's spectrum, 4x zero-padded, with parabolic interpolation of the peak
    n = 4 * x.numel()
    mag = torch.fft.rfft(x * torch.hann_window(x.numel(), dtype=x.dtype), n=n).abs()
    hz = lambda b: b * rate / n  # noqa: E731
    low = int(150 / hz(1))
    k = int(mag[low:].argmax()) + low
    pitch = hz(k + _parabola(mag, k))
    # chirp direction: the per-frame peak frequency over the active frames
    bins = spec[active][:, 4:].argmax(1).double() + 4
    times = torch.nonzero(active).reshape(-1).double() * 64 / rate
    f = (bins * rate / N_FFT).log2()
    centred = times - times.mean()
    slope = float((centred * (f - f.mean())).sum() / centred.pow(2).sum().clamp_min(1e-12))
    # timbre: the harmonics of the frame-wise fundamental, summed over active frames
    fundamental = spec[active].gather(1, bins.long().unsqueeze(1)).pow(2).sum()
    harm = []
    for m in (2, 3):
        idx = (bins * m).round().long().clamp(max=spec.shape[1] - 2)
        around = torch.stack([spec[active].gather(1, (idx + d).unsqueeze(1)) for d in (-1, 0, 1)]).amax(0)
        harm.append(float((around.pow(2).sum() / fundamental.clamp_min(1e-20)).sqrt()))
    # envelope: RMS of the last third over the first third of the active span
    idx = torch.nonzero(active).reshape(-1)
    span = rms[int(idx[0]): int(idx[-1]) + 1]
    third = max(1, span.numel() // 3)
    envelope = float(torch.log2(span[-third:].mean().clamp_min(1e-12) / span[:third].mean().clamp_min(1e-12)))
    return {"flatness": flatness, "pitch_hz": pitch, "slope": slope, "h2": harm[0], "h3": harm[1],
            "envelope": envelope}


def _parabola(mag: Tensor, k: int) -> float:
    if k <= 0 or k >= mag.numel() - 1:
        return 0.0
    a, b, c = (float(v) for v in mag[k - 1: k + 2].log().clamp_min(-50))
    denom = a - 2 * b + c
    return 0.5 * (a - c) / denom if denom != 0 else 0.0


def classify(f: dict[str, float]) -> Attributes:
    """Attributes from :func:`features` (thresholds halfway between the classes' typical values)."""
    if f["flatness"] > 0.3:
        kind = "noise"
    elif f["slope"] > 0.6:
        kind = "rising"
    elif f["slope"] < -0.6:
        kind = "falling"
    else:
        kind = "tone"
    pitch = None
    if kind == "tone":
        semis = {name: abs(12 * math.log2(f["pitch_hz"] / hz)) for name, hz in PITCHES.items()}
        name = min(semis, key=semis.get)
        pitch = name if semis[name] < 0.5 else None
    timbre = None
    if kind != "noise":
        timbre = "pure" if max(f["h2"], f["h3"]) < 0.12 else "hollow" if f["h2"] < 0.5 * f["h3"] else "bright"
    envelope = "decaying" if f["envelope"] < -1.0 else "swelling" if f["envelope"] > 1.0 else "sustained"
    return Attributes(kind, pitch, timbre, envelope)


def prompt_correct(target: Attributes, measured: Attributes) -> dict[str, bool]:
    """Per named attribute of ``target``: was it measured as named?"""
    out = {}
    for name in ("kind", "pitch", "timbre", "envelope"):
        want = getattr(target, name)
        if want is not None:
            out[name] = getattr(measured, name) == want
    return out


class ToyAudioScorer:
    """``scorer(data [N, C, T], prompt, rate=8000) -> metrics``: prompt accuracy (share of clips whose
    every named attribute is measured as named), accuracy per attribute, the features' mean and their
    spread across the clips (diversity), and signal statistics (peak, RMS, spectral flatness, share
    of clipped samples). ``clip_scores`` gives one score per clip for re-ranking (named attributes met)."""

    FEATURES = ("pitch_hz", "slope", "flatness", "h2", "h3", "envelope")

    def clip_results(self, data: Tensor, prompt: str, rate: int = SAMPLE_RATE) -> list[dict]:
        target = parse(prompt)
        out = []
        for clip in data.detach().float().cpu().mean(1):   # mono: the mean over channels
            f = features(clip, rate)
            out.append({"features": f, "correct": prompt_correct(target, classify(f))})
        return out

    def clip_scores(self, data: Tensor, prompt: str, rate: int = SAMPLE_RATE) -> Tensor:
        results = self.clip_results(data, prompt, rate)
        return torch.tensor([sum(r["correct"].values()) / max(1, len(r["correct"])) for r in results])

    def __call__(self, data: Tensor, prompt: str, rate: int = SAMPLE_RATE) -> dict:
        from ..modalities.audio.metrics import signal_stats

        results = self.clip_results(data, prompt, rate)
        out = {"accuracy": sum(all(r["correct"].values()) for r in results) / len(results)}
        for name in ("kind", "pitch", "timbre", "envelope"):
            said = [r["correct"][name] for r in results if name in r["correct"]]
            if said:
                out[f"accuracy_{name}"] = sum(said) / len(said)
        feats = torch.tensor([[r["features"][k] for k in self.FEATURES] for r in results], dtype=torch.float64)
        spread = feats.std(0, unbiased=False) if len(results) > 1 else torch.zeros(len(self.FEATURES))
        for k, name in enumerate(self.FEATURES):
            out[f"spread_{name}"] = float(spread[k])
        out["diversity"] = _diversity(feats)
        out.update(signal_stats(data))
        return out


def _diversity(feats: Tensor) -> float:
    """Mean std across clips of the scorer's features, each scaled to a common unit (semitones of
    pitch, octaves/s of slope, log2 of the harmonic ratios and the envelope, flatness x 10)."""
    if feats.shape[0] < 2:
        return 0.0
    pitch = 12 * feats[:, 0].clamp_min(1).log2()
    scaled = torch.stack([pitch, feats[:, 1], 10 * feats[:, 2], feats[:, 3].clamp_min(1e-3).log2(),
                          feats[:, 4].clamp_min(1e-3).log2(), feats[:, 5]], 1)
    return float(scaled.std(0, unbiased=False).mean())


@register_output_scorer("toy-audio")
def build_scorer() -> ToyAudioScorer:
    """The ``toy-audio`` scorer (``model: {scorer: toy-audio}`` in a sample recipe)."""
    return ToyAudioScorer()
