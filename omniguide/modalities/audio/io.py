"""Audio outputs: a WAV per clip (soundfile) and a log-mel spectrogram PNG per clip (torchaudio),
written atomically; the run's summary (seconds of audio, per second of compute, signal statistics).

Writer options (a sample recipe's ``output:`` section):

* ``format``: ``pcm16`` (default; samples clipped to [-1, 1] first, as PCM cannot hold more) or
  ``float`` (32-bit float WAV, unclipped);
* ``sample_rate``: the rate the files must have; a model producing another rate is an error unless
  ``resample: true`` (torchaudio's band-limited resampling);
* ``spectrogram``: ``true`` (default) writes ``<stem>_<k>.png`` next to ``<stem>_<k>.wav``;
* ``n_mels``: mel bands of the PNG (default 64).

A non-finite sample anywhere in an item is refused before any file of the item is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...core.errors import ConfigError, GuidanceError
from ...io import atomic_path

FORMATS = {"pcm16": "PCM_16", "float": "FLOAT"}
OPTIONS = ("format", "sample_rate", "resample", "spectrogram", "n_mels")


def check_options(options: Mapping[str, Any], path: str = "output") -> dict:
    """The writer options with defaults; one-line errors for unknown keys and values."""
    from ...core.errors import did_you_mean

    for key in options:
        if key not in OPTIONS:
            raise ConfigError(f"{path}.{key}", f"unknown audio output option{did_you_mean(key, OPTIONS)}")
    out = {"format": "pcm16", "sample_rate": None, "resample": False, "spectrogram": True, "n_mels": 64,
           **dict(options)}
    if out["format"] not in FORMATS:
        raise ConfigError(f"{path}.format", f"'{out['format']}' is not a WAV format; valid: {', '.join(FORMATS)}")
    rate = out["sample_rate"]
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
        raise ConfigError(f"{path}.sample_rate", f"expected a positive integer (Hz), got {rate!r}")
    return out


def check_waveforms(data: Tensor, rate: int | None, where: str) -> None:
    """``[N, C, T]`` finite samples at a known rate (one-line errors naming the clip)."""
    if rate is None or rate < 1:
        raise GuidanceError(f"{where}: the model gave no sample rate for its audio")
    if data.ndim != 3 or data.shape[-1] < 1:
        raise GuidanceError(f"{where}: expected waveforms [N, channels, samples], got {tuple(data.shape)}")
    bad = (~torch.isfinite(data)).flatten(1).any(1)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise GuidanceError(f"{where}: clip {k} has non-finite samples (NaN or inf); nothing of this item was written")


def conform_rate(data: Tensor, rate: int, options: Mapping[str, Any], where: str) -> tuple[Tensor, int]:
    """The waveforms at the writer's ``sample_rate`` (resampled only with ``resample: true``)."""
    wanted = options.get("sample_rate")
    if wanted is None or wanted == rate:
        return data, rate
    if not options.get("resample"):
        raise ConfigError("output.sample_rate", f"{where}: the model produces {rate} Hz audio but the writer is set "
                          f"to {wanted} Hz; remove output.sample_rate or set output.resample: true")
    import torchaudio

    return torchaudio.functional.resample(data.float(), rate, wanted), wanted


def mel_image(clip: Tensor, rate: int, n_mels: int = 64) -> np.ndarray:
    """A log-mel spectrogram of one clip ``[C, T]`` as an RGB image (channels stacked, low frequencies
    at the bottom, 80 dB range, viridis)."""
    import torchaudio
    from matplotlib import colormaps

    n_fft = max(16, 2 ** round(math.log2(max(rate, 16) * 0.032)))
    x = clip.detach().float().cpu()
    if x.shape[-1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    mels = max(1, min(n_mels, n_fft // 4))
    transform = torchaudio.transforms.MelSpectrogram(sample_rate=rate, n_fft=n_fft, hop_length=n_fft // 4,
                                                     n_mels=mels, power=2.0, pad_mode="constant")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # empty mel filters at very low rates (tiny test models)
        power = transform(x)
    db = 10 * torch.log10(power.clamp_min(1e-10))
    db = (db - db.amax()).clamp_min(-80.0) / 80.0 + 1.0                     # [0, 1]
    image = torch.cat([channel.flip(0) for channel in db], dim=0).numpy()   # [C * mels, frames]
    return (colormaps["viridis"](image)[..., :3] * 255).round().astype(np.uint8)


def write_outputs(folder: Path, stem: str, data: Tensor, rate: int | None, options: Mapping[str, Any]) -> list[str]:
    """``<stem>_<k>.wav`` (and ``<stem>_<k>.png``) for each clip of ``data [N, C, T]``; returns the names.
    Everything is checked before the first file is written."""
    import imageio.v3 as iio
    import soundfile

    opts = check_options(options)
    where = f"item {stem}"
    data = data.detach().float().cpu()
    check_waveforms(data, rate, where)
    data, rate = conform_rate(data, int(rate), opts, where)
    names = []
    for k, clip in enumerate(data):
        samples = clip.T.numpy()                                     # [T, C]
        if opts["format"] == "pcm16":
            samples = np.clip(samples, -1.0, 1.0)
        name = f"{stem}_{k}.wav"
        with atomic_path(Path(folder) / name) as tmp:
            soundfile.write(tmp, samples, rate, subtype=FORMATS[opts["format"]], format="WAV")
        names.append(name)
        if opts["spectrogram"]:
            png = f"{stem}_{k}.png"
            with atomic_path(Path(folder) / png) as tmp:
                iio.imwrite(tmp, mel_image(clip, rate, int(opts["n_mels"])))
            names.append(png)
    return names


def read_wav(path: Path) -> tuple[Tensor, int]:
    """A WAV file as ``[C, T]`` float32 and its rate."""
    import soundfile

    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), int(rate)


def summarize(run_dir: Path, metas: Sequence[dict], options: Mapping[str, Any]) -> dict:
    """Totals over the run's WAV files: clips, seconds of audio, seconds of audio per second of
    generation, the sample rate, and signal statistics of the written files (peak, RMS, spectral
    flatness, share of samples at full scale)."""
    from .metrics import signal_stats

    folder = Path(run_dir) / "items"
    seconds, clips, rates, stats = 0.0, 0, set(), []
    for meta in metas:
        for name in meta.get("files", []):
            if not name.endswith(".wav"):
                continue
            wave, rate = read_wav(folder / name)
            seconds += wave.shape[-1] / rate
            clips += 1
            rates.add(rate)
            stats.append(signal_stats(wave.unsqueeze(0)))
    compute = sum(m.get("seconds", 0.0) for m in metas)
    out = {"clips": clips, "audio_seconds": seconds,
           "audio_seconds_per_second": seconds / compute if compute else None,
           "sample_rate": rates.pop() if len(rates) == 1 else sorted(rates)}
    for key in ("peak", "rms", "flatness", "clipped"):
        if stats:
            out[f"wav_{key}"] = sum(s[key] for s in stats) / len(stats)
    return out
