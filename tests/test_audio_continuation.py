"""Audio continuation past one window on the zoo's text-to-audio model (issue 9): the video rollout on
the time axis of the spectrogram latent, with history guidance and text CFG in one table.

Machinery, checked exactly on the committed model's call convention (any weights with it pass): the
per-frame timesteps each window gives the denoiser for given, generated and to-generate frames,
history passed bit for bit, NFE per window, the window size independent of the length (flat
memory); the score's pure functions; the ``rollout`` recipe writing a WAV and a PNG; the bench;
one-line errors. Only ``test_the_committed_model_keeps_a_pure_tone_going`` depends on the quality
of the weights (loosely: it holds for any model that continues a tone near its pitch)."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

from omniguide import CFG
from omniguide.core.errors import ConfigError
from omniguide.modalities.audio.io import read_wav
from omniguide.modalities.video.history import HistoryGuidance
from omniguide.recipes.cli import main
from omniguide.zoo import toy_audio_data as D
from omniguide.zoo.audio_rollout import (
    AudioRollout,
    continuation_metrics,
    continue_audio,
    seam_ratio,
    spectral_flux,
    window_bounds,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "audio" / "continuation.yaml")
BENCH = str(ROOT / "configs" / "bench" / "audio_continuation.yaml")
PROMPT = "a pure A4 tone, sustained"
MASKED = 1000.0          # a fully masked history frame: level 1 x num_train_timesteps


@pytest.fixture(scope="module")
def subject() -> AudioRollout:
    return AudioRollout.load()


@pytest.fixture(autouse=True)
def one_thread():
    """The model is tiny: one thread is much faster than two on a busy CPU (as the recipes set it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def recorded(subject: AudioRollout):
    """Every call of the denoiser: ``(window [rows, bins, F], timestep [rows, F])``, copied."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].detach().clone(), torch.as_tensor(args[1]).detach().clone()))
    handle = subject.pipe.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def sampler_timesteps(subject: AudioRollout, steps: int) -> list[float]:
    scheduler = subject.scheduler()
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- machinery ---------------------------------------------------------------------------------------------
def test_given_generated_and_target_frames_reach_the_denoiser_at_their_levels(subject):
    """Context 48, chunk 16 from 64 given frames: window 1 holds 48 given frames, window 2 holds 32 given
    and 16 generated ones (tri-state). Clean branches (cond, uncond) feed given frames at t = 0 and
    generated ones at the stabilization level (0.02 -> t = 20); vanilla history guidance's ∅ branch
    masks both (t = 1000); the 16 new frames are at the sampler's timestep in every branch."""
    given, _ = subject.start(PROMPT, 1, 64, 0)
    steps = 2
    with recorded(subject) as calls:
        out = continue_audio(subject, PROMPT, given, 96, HistoryGuidance(scheme="vanilla", scale=2.0, text_scale=3.0),
                             context=48, chunk=16, steps=steps, stabilization=0.02,
                             generator=torch.Generator().manual_seed(0))
    assert out.latent.shape == (1, 129, 96) and torch.equal(out.latent[..., :64], given)
    assert len(calls) == 2 * steps                          # one batched forward pass per step and window
    ts = sampler_timesteps(subject, steps)
    for i, (window, t) in enumerate(calls):
        w, step = divmod(i, steps)
        assert window.shape == (3, 129, 64) and t.shape == (3, 64)        # cond, uncond, ∅ batched
        assert (t[:, 48:] == ts[step]).all()                               # the frames to generate
        clean = [0.0] * 48 if w == 0 else [0.0] * 32 + [20.0] * 16
        rows = sorted(tuple(r) for r in t[:, :48].tolist())
        assert rows == sorted([tuple(clean), tuple(clean), (MASKED,) * 48]), (w, rows)
        for row in range(3):                                               # given history: bit for bit
            if t[row, 0] == 0:
                assert torch.equal(window[row, :, :32], given[0, :, 16 + 16 * w:48 + 16 * w])
    # the ∅ branch drops the text too (history guidance's default), the uncond branch only the text:
    # both are in the batch, so the conditions differ row by row (checked through the NFE below)


def test_generated_history_is_fed_back_bit_for_bit_without_stabilization(subject):
    given, _ = subject.start(PROMPT, 2, 64, 1)
    with recorded(subject) as calls:
        out = continue_audio(subject, PROMPT, given, 128, CFG(scale=3.0), context=32, chunk=32, steps=1,
                             stabilization=0.0, generator=torch.Generator().manual_seed(0))
    (w1, t1), (w2, t2) = calls
    assert (t1[:, :32] == 0).all() and (t2[:, :32] == 0).all()
    assert torch.equal(w1[:2, :, :32], given[..., 32:]) and torch.equal(w1[2:, :, :32], given[..., 32:])
    assert torch.equal(w2[:2, :, :32], out.latent[..., 64:96])            # window 1's output, as emitted


@pytest.mark.parametrize("guider,branches", [
    (CFG(scale=3.0), 2),                                                          # no history guidance
    (HistoryGuidance(scheme="conditional", text_scale=3.0), 2),                   # the same, as a table
    (HistoryGuidance(scheme="vanilla", scale=2.0), 2),                            # no text CFG
    (HistoryGuidance(scheme="vanilla", scale=2.0, text_scale=3.0), 3),
    (HistoryGuidance(scheme="fractional", scale=2.0, k=0.5, text_scale=3.0), 4),
    (HistoryGuidance(scheme="temporal", subsets=[[-8, -7, -6, -5, -4, -3, -2, -1], "all"], weights=[1.0, 1.0],
                     text_scale=3.0), 4),
])
def test_nfe_per_window_is_branches_times_steps(subject, guider, branches):
    given, _ = subject.start(PROMPT, 1, 64, 0)
    out = continue_audio(subject, PROMPT, given, 128, guider, steps=2, generator=torch.Generator().manual_seed(0))
    assert [w["nfe"] for w in out.result.window_log] == [2 * branches] * 2
    assert [w["forward_passes"] for w in out.result.window_log] == [2, 2]


def test_the_window_stays_one_model_window_however_long_the_audio(subject):
    """Memory is flat in length: every window is at most 64 frames with the newest 32 as history, the
    rollout keeps only that history, and every frame goes to the sink once, in order."""
    given, _ = subject.start(PROMPT, 1, 64, 0)
    for frames in (128, 448):
        with recorded(subject) as calls:
            out = continue_audio(subject, PROMPT, given, frames, CFG(scale=3.0), steps=1)
        histories = [w["history"] for w in out.result.window_log]
        assert {w.shape[-1] for w, _ in calls} == {64} and histories == [32] * ((frames - 64) // 32)
        assert out.latent.shape[-1] == frames


def test_score_functions_measure_seams_flux_and_the_known_signal(subject):
    assert window_bounds(136, 64, 32) == [(0, 64), (64, 96), (96, 128), (128, 136)]
    steady = torch.ones(1, 4, 10)
    assert torch.equal(spectral_flux(steady), torch.zeros(1, 9))
    steps = torch.ones(1, 4, 12)
    steps[..., 4:8], steps[..., 8:] = 2.0, 3.0                        # a jump into each window's first frame
    steps = steps + 0.01 * torch.arange(12.0)                         # and a slow drift inside
    assert seam_ratio(steps, window_bounds(12, 4, 4)) > 10
    truth, attributes = subject.start(PROMPT, 2, 128, 0)
    m = continuation_metrics(truth, subject.decode(truth), attributes, 64, 32, subject.pipe.codec)
    assert m["pitch_err"] < 0.3 and m["pitch_kept"] == 1.0 and m["timbre_kept"] == 1.0
    assert abs(m["level_db"]) < 0.5 and m["latent_max"] < 1.1 and len(m["pitch_err_by_window"]) == 2
    louder = truth.clone()
    louder[..., 64:] += torch.log(torch.tensor(10.0)) / subject.pipe.codec.config.scale    # magnitudes x 10: +20 dB
    m = continuation_metrics(louder, subject.decode(louder), attributes, 64, 32, subject.pipe.codec)
    assert 17 < m["level_db"] < 23 and m["seam_ratio"] > 3


def test_the_known_signal_continues_through_its_last_frame(subject):
    latent, attributes = subject.start("a hollow tone", 3, 64, 5)
    assert latent.shape == (3, 129, 64) and all(a.kind == "tone" and a.timbre == "hollow" for a in attributes)
    assert all(a.pitch in D.PITCHES and a.envelope in D.ENVELOPES for a in attributes)
    sustained, _ = subject.start(PROMPT, 1, 64, 0)
    level = subject.pipe.codec.magnitude(sustained).sum(1)[0]
    assert float(level[-1] / level[32]) > 0.9                     # no fade-out at the end of the given window


# -- the recipe ----------------------------------------------------------------------------------------------
def test_continuation_recipe_writes_a_wav_a_png_and_metrics(capsys, tmp_path):
    code, out, err = run(capsys, "run", RECIPE, "frames=128", "steps=2", "samples=1", "progress=false",
                         f"run.root={tmp_path}")
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    wave, rate = read_wav(folder / "audio_0.wav")
    assert rate == 8000 and wave.shape == (1, 128 * 127)
    assert (folder / "audio_0.png").is_file()
    metrics = json.loads((folder / "metrics.json").read_text())
    # the recipe's default guider is conditional sampling with text CFG: 2 branches x 2 steps x 2 windows
    assert metrics["frames"] == 128 and metrics["windows"] == 2 and metrics["nfe"] == 2 * 2 * 2
    assert metrics["files"] == ["audio_0.wav", "audio_0.png"]
    assert {"pitch_err", "timbre_kept", "level_db", "seam_ratio", "latent_max"} <= set(metrics)
    assert "window 2 (window): 32 frames from a history of 32 (32 generated), nfe 4" in err


def test_audio_already_generated_is_written_when_a_window_fails(capsys, tmp_path):
    plugin = str(ROOT / "tests" / "data" / "plugins" / "failing_guider.py")
    folder = tmp_path / "failed"
    # 2 steps per window: the guider fails in the third window, after two windows of 32 frames
    code, _, err = run(capsys, "--plugin", plugin, "run", RECIPE, "frames=256", "steps=2", "samples=1",
                       "progress=false", "guider={name: fail-after, calls: 5}", f"run.dir={folder}")
    assert code == 2 and "fail-after: failing on purpose at call 5" in err.strip().splitlines()[-1]
    wave, _ = read_wav(folder / "audio_0.wav")
    assert wave.shape == (1, 128 * (64 + 2 * 32 - 1))                 # the given window + two windows


@pytest.mark.parametrize("override,message", [
    ("context=64", r"context: history of 64 frames is longer than the window allows \(at most 63"),
    ("window=128", r"window: 128 frames is more than the model's window of 64$"),
    ("chunk=30", r"chunk: 30 frames is not a multiple of 4; the model takes windows of a multiple of 4 frames$"),
    ("frames=130", r"frames: 130 frames is not a multiple of 4"),
    ("history=62", r"history: 62 frames is not a multiple of 4"),
    ("keyframe_stride=2", r"keyframe_stride: 2: the toy-audio model was not trained with a frame stride"),
    ("prompt=a loud sound", r"prompt: 'a loud sound' names no kind of sound"),
    ("output.scale=8", r"output.scale: unknown audio output option"),
    ("model.path=/nonexistent", r"model.path: file not found: /nonexistent/model_index.json$"),
])
def test_bad_input_is_a_one_line_error(capsys, override, message):
    code, _, err = run(capsys, "validate", RECIPE, override)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search("^error: " + message, err.strip()), err


def test_bad_library_input_is_a_one_line_error(subject):
    given, _ = subject.start(PROMPT, 1, 64, 0)
    with pytest.raises(ConfigError, match=r"^context: history of 64 frames is longer than the window allows"):
        continue_audio(subject, PROMPT, given, 128, CFG(scale=3.0), context=64)
    with pytest.raises(ConfigError, match=r"^given: expected a latent \[clips, 129 bins, frames\], got \(1, 64\)"):
        continue_audio(subject, PROMPT, given[:, 0], 128, CFG(scale=3.0))
    with pytest.raises(ConfigError, match=r"^history: 62 frames is not a multiple of 4"):
        continue_audio(subject, PROMPT, given[..., :62], 126, CFG(scale=3.0))


# -- the bench -----------------------------------------------------------------------------------------------
def test_the_bench_writes_its_table_with_reference_rows(capsys, tmp_path):
    code, out, err = run(capsys, "run", BENCH, "samples=1", "windows=2", "steps=1",
                         "prompts=['a pure A4 tone, sustained']", f"run.root={tmp_path}")
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    metrics = json.loads((folder / "metrics.json").read_text())["methods"]
    assert list(metrics)[:2] == ["known signal", "history looped (a copy)"] and len(metrics) == 2 + 9
    truth = metrics["known signal"]
    assert truth["pitch_err"] < 0.3 and abs(truth["level_db"]) < 0.5 and truth["timbre_kept"] == 1.0
    assert metrics["conditional (text CFG 3)"]["nfe_per_window"] == 2
    assert metrics["vanilla w=1.5"]["nfe_per_window"] == 3 and metrics["fractional w=3 k=0.5"]["nfe_per_window"] == 4
    assert "| known signal |" in (folder / "table.md").read_text()


# -- quality (depends on the weights) ------------------------------------------------------------------------
def test_the_committed_model_keeps_a_pure_tone_going(subject):
    """Loose: continuing one window of a pure A4 tone for three windows with vanilla history guidance,
    the pitch stays within 3 semitones on average (A4's neighbours among the named pitches are 2 and 3
    semitones away; a random named pitch is 6 away on average) and the timbre stays pure in most
    windows; a model that continues the tone well is within half a semitone. The committed (weak)
    model measured 1.25 semitones and timbre 1.0 here (1.25 - 2.54 semitones over generator seeds
    0 - 3); it overshoots the level by about 40 dB, which is not asserted."""
    given, attributes = subject.start(PROMPT, 2, 64, 0)
    out = continue_audio(subject, PROMPT, given, 160, HistoryGuidance(scheme="vanilla", scale=2.0, text_scale=3.0),
                         steps=10, generator=torch.Generator().manual_seed(1))
    m = continuation_metrics(out.latent, subject.decode(out.latent), attributes, 64, 32, subject.pipe.codec)
    assert m["pitch_err"] < 3.0 and m["timbre_kept"] >= 0.75, m
