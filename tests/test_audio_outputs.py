"""Audio outputs (WAV at the model's rate, mono and stereo, PCM16 or float; a log-mel PNG per clip),
their refusals (non-finite samples, a sample-rate mismatch) with nothing already written lost, and
the guider presets of the audio reference implementations."""

from __future__ import annotations

import math

import pytest
import soundfile
import torch

import omniguide
from omniguide import APG, CFG, CFGRescale, ConfigError, GuidanceError, Interval
from omniguide.core.guider import GuidanceStep
from omniguide.core.noise import NoiseLevel
from omniguide.core.prediction import Prediction
from omniguide.core.registry import PRESETS, build_guider
from omniguide.modalities.audio import io as audio_io


def tone(n=2, channels=1, rate=8000, seconds=0.25, amp=0.5):
    t = torch.arange(int(rate * seconds)) / rate
    wave = amp * torch.sin(2 * math.pi * 440 * t)
    return wave.expand(n, channels, -1).clone()


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt,subtype", [("pcm16", "PCM_16"), ("float", "FLOAT")])
def test_wav_and_spectrogram_per_clip(tmp_path, channels, fmt, subtype):
    data = tone(2, channels)
    data[1] *= 3.0                                           # clip 1 exceeds full scale
    names = audio_io.write_outputs(tmp_path, "000007", data, 8000, {"format": fmt})
    assert names == ["000007_0.wav", "000007_0.png", "000007_1.wav", "000007_1.png"]
    info = soundfile.info(str(tmp_path / "000007_1.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (8000, channels, subtype, 2000)
    wave, rate = audio_io.read_wav(tmp_path / "000007_0.wav")
    tol = 1 / 32767 if fmt == "pcm16" else 1e-7
    torch.testing.assert_close(wave, data[0], rtol=0, atol=tol)
    loud, _ = audio_io.read_wav(tmp_path / "000007_1.wav")
    assert loud.abs().max() <= 1.0 if fmt == "pcm16" else loud.abs().max() > 1.4
    import imageio.v3 as iio

    image = iio.imread(tmp_path / "000007_0.png")
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] == channels * 64
    # the 440 Hz tone is the brightest row band of the mel image (low frequencies at the bottom)
    rows = image.astype(float).mean(axis=(1, 2))[:64]
    assert 32 < rows.argmax() < 64


def test_tiny_rates_and_lengths_still_write(tmp_path):
    """Tiny test models make 4 Hz, 7-sample clips: the WAV and the PNG are still written."""
    names = audio_io.write_outputs(tmp_path, "x", torch.randn(1, 2, 7) * 0.1, 4, {})
    assert (tmp_path / names[0]).stat().st_size > 0 and (tmp_path / names[1]).stat().st_size > 0


def test_non_finite_clip_is_refused_before_anything_is_written(tmp_path):
    audio_io.write_outputs(tmp_path, "000000", tone(), 8000, {})
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = tone(3)
    bad[2, 0, 5] = float("nan")
    with pytest.raises(GuidanceError, match="item 000001: clip 2 has non-finite samples") as err:
        audio_io.write_outputs(tmp_path, "000001", bad, 8000, {})
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # nothing lost, nothing new


def test_sample_rate_mismatch_and_resampling(tmp_path):
    with pytest.raises(ConfigError, match=r"output.sample_rate: item 000000: the model produces 8000 Hz audio but "
                                          r"the writer is set to 16000 Hz"):
        audio_io.write_outputs(tmp_path, "000000", tone(), 8000, {"sample_rate": 16000})
    assert not list(tmp_path.iterdir())
    names = audio_io.write_outputs(tmp_path, "000000", tone(), 8000, {"sample_rate": 16000, "resample": True,
                                                                      "spectrogram": False})
    assert names == ["000000_0.wav", "000000_1.wav"]
    assert soundfile.info(str(tmp_path / names[0])).samplerate == 16000
    with pytest.raises(ConfigError, match="output.fromat: unknown audio output option; did you mean 'format'"):
        audio_io.check_options({"fromat": "pcm16"})
    with pytest.raises(ConfigError, match="output.format: 'mp3' is not a WAV format"):
        audio_io.check_options({"format": "mp3"})


def test_summary_counts_seconds_of_audio(tmp_path):
    folder = tmp_path / "items"
    names = audio_io.write_outputs(folder, "000000", tone(2, seconds=0.5), 8000, {})
    metas = [{"files": names, "seconds": 0.25}]
    out = audio_io.summarize(tmp_path, metas, {})
    assert out["clips"] == 2 and out["audio_seconds"] == pytest.approx(1.0)
    assert out["audio_seconds_per_second"] == pytest.approx(4.0) and out["sample_rate"] == 8000
    assert out["wav_peak"] == pytest.approx(0.5, abs=1e-3) and out["wav_clipped"] == 0.0


# -- presets --------------------------------------------------------------------------------------------
def test_presets_are_selectable_in_code_and_recipes():
    assert {"stable-audio-tools", "ace-step", "audioldm2", "tango", "mmaudio", "ezaudio", "musicgen"} <= set(
        PRESETS.names())
    for name in PRESETS.names():
        item = PRESETS.get(name)
        assert item.source and item.summary, name
        guider = omniguide.preset(name)
        assert guider.config() == build_guider({"preset": name}).config()
    assert build_guider({"preset": "audioldm2"}) == CFG(scale=3.5)
    assert build_guider({"preset": "tango"}) == CFG(scale=3.0)
    assert build_guider({"preset": "mmaudio", "scale": 6}) == CFG(scale=6)
    with pytest.raises(ConfigError, match="guider.scael: unknown key for preset 'ace-step'; did you mean 'scale'"):
        build_guider({"preset": "ace-step", "scael": 3})
    with pytest.raises(ConfigError, match="guider.preset: unknown guider preset 'ace-stp'; did you mean 'ace-step'"):
        build_guider({"preset": "ace-stp"})
    with pytest.raises(ConfigError, match="guider.name: give either 'name'"):
        build_guider({"preset": "tango", "name": "cfg"})
    with pytest.raises(ConfigError, match=r"guider: preset 'stable-audio-tools': cfg_interval bounds"):
        build_guider({"preset": "stable-audio-tools", "cfg_interval": [0.1, 1.5]})


def test_stable_audio_tools_preset():
    """CFG 7, std rescale over channels (per frame) on v, the interval on sin(t pi/2) mapped to sigma/alpha."""
    assert omniguide.preset("stable-audio-tools") == CFGRescale(scale=7.0, rescale=0.0, space="v", axes=(1,))
    guider = omniguide.preset("stable-audio-tools", rescale=0.4, cfg_interval=(0.6, 0.8))
    assert isinstance(guider, Interval) and guider.guider.rescale == 0.4
    low, high = guider.bounds
    assert low == pytest.approx(0.75) and high == pytest.approx(4 / 3)    # 0.6/0.8 and 0.8/0.6
    for vp_sigma, inside in ((0.59, False), (0.61, True), (0.79, True), (0.81, False)):
        alpha = math.sqrt(1 - vp_sigma ** 2)
        noise = NoiseLevel(torch.tensor(alpha), torch.tensor(vp_sigma))
        step = GuidanceStep(torch.zeros(1, 2, 3), noise, index=0, num_steps=10)
        assert bool(guider.inside(step)) is inside, vp_sigma


def _ace_step_reference(conds, unconds, steps, scale=15.0, momentum=-0.75, threshold=2.5, interval=0.5):
    """ACE-Step v1's loop re-derived (acestep/apg_guidance.py apg_forward, MomentumBuffer; the guidance
    interval of pipeline_ace_step.py), on [B, C, T] outputs normalised over dims [-1] (time)."""
    start, end = int(steps * ((1 - interval) / 2)), int(steps * (interval / 2 + 0.5))
    running, out = 0.0, []
    for i, (c, u) in enumerate(zip(conds, unconds)):
        if not start <= i < end:
            out.append(c)
            continue
        diff = c - u
        running = diff + momentum * running
        diff = running
        norm = diff.norm(p=2, dim=[-1], keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), threshold / norm)
        unit = torch.nn.functional.normalize(c.double(), dim=[-1])
        par = (diff.double() * unit).sum(dim=[-1], keepdim=True) * unit
        orth = diff.double() - par
        out.append(c + (scale - 1) * orth.to(c.dtype))
    return out


def test_ace_step_preset_matches_its_reference_loop():
    steps = 60
    g = torch.Generator().manual_seed(0)
    conds = [torch.randn(2, 4, 16, generator=g, dtype=torch.float64) for _ in range(steps)]
    unconds = [c + 0.5 * torch.randn(2, 4, 16, generator=g, dtype=torch.float64) for c in conds]
    reference = _ace_step_reference(conds, unconds, steps)
    guider = omniguide.preset("ace-step")
    guider.reset()
    x = torch.zeros(2, 4, 16, dtype=torch.float64)
    noise = NoiseLevel(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    guided = 0
    for i in range(steps):
        step = GuidanceStep(x, noise, index=i, num_steps=steps)
        names = guider.branches(step)
        guided += "uncond" in names
        preds = {n: Prediction({"cond": conds[i], "uncond": unconds[i]}[n], "flow", x, noise) for n in names}
        torch.testing.assert_close(guider.combine(preds, step).to("flow"), reference[i], rtol=1e-9, atol=1e-9)
    assert guided == 30                                                   # steps 15 ... 44: the middle half
    assert isinstance(guider, Interval) and isinstance(guider.guider, APG) and guider.guider.axes.reduce == (2,)


def test_recipes_select_presets_and_named_components_replace_the_default(tmp_path):
    """``guider: {preset: ...}`` in a recipe file, and a named guider whose fields differ from the default
    guider's (no ``scale`` leaks from the default ``{name: cfg, scale: 3}`` into an interval)."""
    from omniguide.recipes.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: sample\nmodel: {name: mixture}\nguider: {preset: ace-step, scale: 9}\nprompts: [0]\n")
    cfg = load_recipe(recipe).cfg
    assert cfg.guider == {"preset": "ace-step", "scale": 9}
    assert build_guider(cfg.guider).guider.scale == 9
    recipe.write_text("kind: sample\nmodel: {name: mixture}\nguider: {name: interval, guider: {name: cfg}, "
                      "t: [0.5, 1.0]}\nprompts: [0]\n")
    cfg = load_recipe(recipe).cfg
    assert cfg.guider == {"name": "interval", "guider": {"name": "cfg"}, "t": [0.5, 1.0]}
    assert isinstance(build_guider(cfg.guider), Interval)
