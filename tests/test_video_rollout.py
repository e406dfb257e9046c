"""Long rollouts: the ``rollout`` recipe (frames streamed to disk, MP4 / GIF / contact sheets,
metrics against the physics), keyframes then interpolation, bad input as one-line errors, and
frames already written kept when a window fails. A tiny random video denoiser stands in for the
committed weights so the mechanics are tested independently of training."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from omniguide.core.model_call import ModelCall
from omniguide.core.noise import NoiseSchedule
from omniguide.core.schedulers import build_scheduler
from omniguide.modalities.video.history import HistoryGuidance
from omniguide.modalities.video.protocol import HistoryDenoiser
from omniguide.modalities.video.rollout import Rollout, RolloutPlan
from omniguide.recipes.cli import main
from omniguide.zoo.video_denoiser import VideoDenoiser, VideoDenoiserConfig

RECIPE = str(Path(__file__).parents[1] / "configs" / "video" / "toy_rollout.yaml")
PLUGIN = str(Path(__file__).parent / "data" / "plugins" / "failing_guider.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = VideoDenoiser(VideoDenoiserConfig(dim=48, depth=1, heads=2))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    net.save(path)
    return str(path)


def run(capsys, *argv):
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rollout_recipe_writes_videos_frames_and_metrics(weights, capsys, tmp_path):
    code, out, err = run(capsys, RECIPE, f"model.weights={weights}", "frames=16", "steps=2", "progress=false",
                         f"run.root={tmp_path}")
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    for k in (0, 1):
        assert iio.imread(folder / f"video_{k}.mp4").shape == (16, 128, 128, 3)        # 16 px x 8
        assert iio.imread(folder / f"video_{k}.gif").shape[0] == 16
        assert (folder / f"video_{k}_sheet.png").is_file()
        assert sorted(p.name for p in (folder / "frames" / f"video_{k}").iterdir()) == \
            [f"{i:06d}.png" for i in range(16)]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["frames"] == 16 and metrics["windows"] == 3
    assert metrics["nfe_per_frame"] == 2 * 2 / 4          # vanilla: 2 branches x 2 steps per 4 new frames
    assert {"pos_err_w1", "found", "flicker", "motion_ratio"} <= set(metrics)
    assert "window 3 (window): 4 frames from a history of 4 (4 generated)" in err


@pytest.mark.parametrize("override,message", [
    ("context=8", "^error: context: history of 8 frames is longer than the window allows \\(at most 7"),
    ("window=9", "^error: window: 9 frames is more than the model's window of 8$"),
    ("frames=4", "^error: frames: 4 frames in all leaves nothing to generate after 4 history frames$"),
    ("prompt=a purple square", "^error: prompt: clause 'a purple square' must name one colour"),
    ("guider.scheme=temporal", "^error: guider.subsets: temporal guidance needs subsets"),
    ("keyframe_stride=8", "^error: keyframe_stride: an interpolation window holds stride \\+ 1 = 9 frames"),
])
def test_bad_input_is_a_one_line_error(weights, capsys, override, message):
    code = main(["validate", RECIPE, f"model.weights={weights}", override])
    _, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").match(message, err.strip()), err


def test_a_subset_beyond_the_history_is_refused_before_running(weights, capsys):
    code = main(["validate", RECIPE, f"model.weights={weights}", "history=2", "context=4",
                 "guider={name: history, scheme: temporal, subsets: [[-3]], weights: [1.0]}"])
    _, err = capsys.readouterr()
    assert code == 2 and "guider: does not fit a history of 2 frames: segment 0: frame -3 is outside" in err


def test_frames_already_written_are_kept_when_a_window_fails(weights, capsys, tmp_path):
    folder = tmp_path / "failed"
    # 2 steps per window: the guider fails in the third window, after two windows were written
    code, out, err = run(capsys, "--plugin", PLUGIN, RECIPE, f"model.weights={weights}", "frames=24", "steps=2",
                         "progress=false", "guider={name: fail-after, calls: 5}", f"run.dir={folder}")
    assert code == 2 and "fail-after: failing on purpose at call 5" in err.strip().splitlines()[-1]
    frames = sorted(p.name for p in (folder / "frames" / "video_0").iterdir())
    assert frames == [f"{i:06d}.png" for i in range(12)]           # 4 given + 2 windows of 4
    assert iio.imread(folder / "video_0.mp4").shape[0] == 12          # assembled from what was written


class Echo(torch.nn.Module):
    """A full-sequence 'denoiser' that predicts each frame as the mean of the clean frames (t = 0)
    in its window: records the window layout it was called with."""

    config = type("C", (), {"max_frames": 8})()

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, window, timestep, caption=None, stride=None):
        self.calls.append((window.shape[2], tuple((timestep[0] == 0).tolist()), stride))
        return torch.zeros_like(window)


def test_keyframes_then_interpolate_emit_frames_in_order():
    net = Echo()
    roll = Rollout(ModelCall(HistoryDenoiser(net), module=None), build_scheduler("flow-euler"),
                   HistoryGuidance(scheme="conditional"), RolloutPlan(8, 4, 2, keyframe_stride=4),
                   NoiseSchedule.flow(1000), conditions={"stride": 1}, keyframe_inputs={"stride": 4}, steps=1,
                   progress=False)
    given = torch.randn(1, 1, 5, 2, 2)
    seen = []
    result = roll(given, 21, lambda frames, start: seen.append((start, frames.shape[2])), torch.Generator())
    assert seen == [(0, 5), (5, 4), (9, 4), (13, 4), (17, 4)]
    kinds = [w["kind"] for w in result.window_log]
    assert kinds == ["keyframes", "interpolate", "interpolate", "keyframes", "interpolate", "interpolate"]
    # keyframe windows: history = given frames 4 apart ending at the last (frames 0 and 4), stride 4;
    # interpolation windows: the two keyframes at window positions 0 and 4, three frames between, stride 1
    assert net.calls[0] == (4, (True, True, False, False), 4)
    assert net.calls[1] == (5, (True, False, False, False, True), 1)
    assert all(w["history"] <= 4 for w in result.window_log)


def test_the_rollout_keeps_only_its_context():
    net = Echo()
    roll = Rollout(ModelCall(HistoryDenoiser(net), module=None), build_scheduler("flow-euler"),
                   HistoryGuidance(scheme="vanilla", scale=2.0), RolloutPlan(8, 3, 5), NoiseSchedule.flow(1000),
                   steps=1, progress=False)
    result = roll(torch.randn(1, 1, 2, 2, 2), 40, lambda f, s: None, torch.Generator())
    assert [w["history"] for w in result.window_log][:3] == [2, 3, 3]
    assert max(c[0] for c in net.calls) == 8 and result.frames == 40


class Mixing1D(torch.nn.Module):
    """A full-sequence 1-D 'denoiser' on ``[B, C, T]`` (an audio latent) returning a diffusers-style
    tuple: each step predicts the level-weighted mean of the window."""

    config = type("C", (), {"max_frames": 16})()

    def forward(self, window, timestep, return_dict=True):
        w = (1 - timestep / 1000).unsqueeze(1)
        out = (window * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1e-3) + 0 * window
        return {"sample": out} if return_dict else (out,)


def test_the_same_machinery_continues_a_1d_sequence():
    """Audio continuation is the same rollout on the time axis of ``[B, C, T]``."""
    roll = Rollout(ModelCall(HistoryDenoiser(Mixing1D(), axis=2), module=None), build_scheduler("flow-euler"),
                   HistoryGuidance(scheme="vanilla", scale=2.0), RolloutPlan(16, 8, 8), NoiseSchedule.flow(1000),
                   conditions={"return_dict": False}, steps=2, axes="BCT", axis=2, progress=False)
    given = torch.randn(2, 5, 8)
    pieces = []
    result = roll(given, 40, lambda x, start: pieces.append(x), torch.Generator().manual_seed(0))
    audio = torch.cat(pieces, dim=2)
    assert audio.shape == (2, 5, 40) and torch.equal(audio[:, :, :8], given)
    assert [w["history"] for w in result.window_log] == [8, 8, 8, 8] and result.nfe == 4 * 2 * 2


def test_history_guidance_composes_with_stg_on_the_zoo_transformer(weights):
    from omniguide.zoo.sprite_rollout import SpriteRollout

    subject = SpriteRollout.load(weights)
    given, state = subject.start("a red square moving horizontally fast", 1, 4, 0)

    def rollout(guider):
        roll = Rollout(subject.model, build_scheduler("flow-euler"), guider, RolloutPlan(8, 4, 4), subject.schedule,
                       conditions=subject.conditions("a red square moving horizontally fast", 1), null=subject.null(1),
                       steps=2, progress=False)
        frames = []
        with torch.no_grad():
            result = roll(given, 8, lambda f, s: frames.append(f), torch.Generator().manual_seed(0))
        return frames[-1], result
    plain, plain_result = rollout(HistoryGuidance(scheme="vanilla", scale=2.0))
    both, result = rollout(HistoryGuidance(scheme="vanilla", scale=2.0, stg_scale=1.0, stg_mode="transformer_block",
                                           stg_layers=[0]))
    assert plain_result.nfe == 2 * 2 and result.nfe == 3 * 2 and result.forward_passes == 2 * 2
    assert (both - plain).abs().max() > 1e-4


def test_the_committed_sprite_model_follows_the_physics(capsys, tmp_path):
    """The committed weights (configs/train/video_denoiser.yaml, 8000 steps): measured on the toy
    recipe's caption, 2 videos, 16 frames -- history guidance w=2: sprites found 1.00, position error
    after the first window 1.46 px, motion ratio 1.02; conditional only: 0.96, 1.82 px, 1.45."""
    metrics = {}
    for scheme in ("vanilla", "conditional"):
        code, out, err = run(capsys, RECIPE, f"run.root={tmp_path}", "frames=16", "output.formats=[gif]",
                             f"guider.scheme={scheme}")
        assert code == 0, err
        metrics[scheme] = json.loads((Path(out.strip().splitlines()[-1]) / "metrics.json").read_text())
    guided, plain = metrics["vanilla"], metrics["conditional"]
    assert guided["found"] >= 0.95 and guided["pos_err_w1"] < 2.5, guided
    assert abs(guided["motion_ratio"] - 1) < abs(plain["motion_ratio"] - 1), (guided, plain)
    assert guided["nfe_per_frame"] == 2 * plain["nfe_per_frame"]


def test_history_bench_writes_the_table_with_reference_rows_and_memory(weights, capsys, tmp_path):
    bench = str(Path(__file__).parents[1] / "configs" / "bench" / "video_history.yaml")
    code, out, err = run(capsys, bench, f"model.weights={weights}", "videos=1", "windows=2", "steps=1",
                         "memory.lengths=[6, 10]", f"run.root={tmp_path}")
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"ground truth", "frozen (last given frame)"}
    assert metrics["baselines"]["ground truth"]["pos_err_w1"] < 0.5           # the estimate's floor
    assert metrics["baselines"]["frozen (last given frame)"]["motion_ratio"] == 0
    assert len(metrics["methods"]) == 7 and metrics["methods"]["conditional"]["nfe_per_frame"] == 1 / 4
    assert metrics["methods"]["vanilla w=3"]["nfe_per_frame"] == 2 / 4
    assert [m["frames"] for m in metrics["memory"].values()] == [6, 10]
    table = (folder / "table.md").read_text()
    assert "| frozen (last given frame) |" in table and "| temporal newest2+all w=(1.5,1) |" in table
