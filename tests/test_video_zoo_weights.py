"""The committed weights of the zoo's video denoiser are trained: on sprite clips it has not seen,
its velocity error is a small fraction of an untrained network's, its one-shot estimate of the
frames after four clean history frames puts the sprites where the physics does (much closer than
repeating the last frame), and vanilla history guidance changes a rollout the way the benchmark
measures (more sprites found than conditional sampling)."""

from __future__ import annotations

import pytest
import torch

from omniguide.bench.video_history import VideoHistoryBenchConfig, run_method
from omniguide.zoo.sprite_rollout import SpriteRollout
from omniguide.zoo.sprites import random_state, render, trajectory
from omniguide.zoo.video_denoiser import DEFAULT_WEIGHTS, VideoDenoiser


@pytest.fixture(scope="module")
def subject() -> SpriteRollout:
    assert DEFAULT_WEIGHTS.is_file(), f"committed weights missing: {DEFAULT_WEIGHTS}"
    return SpriteRollout.load()


def _score(subject, state, given, generated) -> dict:
    score = subject.score(state)
    score(given, 0)
    score(generated, given.shape[2])
    return score.summary(given.shape[2], generated.shape[2], windows=(1,))


def test_committed_weights_predict_the_sprite_physics(subject):
    torch.set_num_threads(1)
    net, world, n = subject.net.eval(), subject.world, 32
    state = random_state(world, n, torch.Generator().manual_seed(3))      # not a training draw
    x0 = render(world, state, trajectory(world, state, 8)) * 2 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0] * 4 + [0.6] * 4).expand(n, 8)                  # 4 clean history frames
    tt = t.reshape(n, 1, 8, 1, 1)
    xt = (1 - tt) * x0 + tt * eps
    torch.manual_seed(0)
    fresh = VideoDenoiser(net.config).eval()
    with torch.no_grad():
        v = net(xt, t * 1000, state.attributes, 1)
        v_fresh = fresh(xt, t * 1000, state.attributes, 1)
    target = (eps - x0)[:, :, 4:]
    trained_err = float((v[:, :, 4:] - target).pow(2).mean())
    fresh_err = float((v_fresh[:, :, 4:] - target).pow(2).mean())
    assert trained_err < 0.15 and trained_err < 0.1 * fresh_err, (trained_err, fresh_err)
    estimate = (xt - tt * v)[:, :, 4:]
    model = _score(subject, state, x0[:, :, :4], estimate)
    frozen = _score(subject, state, x0[:, :, :4], x0[:, :, 3:4].expand(-1, -1, 4, -1, -1))
    # measured: 0.61 px against 1.86 px for the last frame repeated, 64 % of sprites found
    assert model["pos_err_w1"] < 0.5 * frozen["pos_err_w1"], (model, frozen)
    assert model["found"] > 0.4 and 0.7 < model["motion_ratio"] < 1.3, model


def test_vanilla_history_guidance_keeps_more_sprites_than_conditional_sampling(subject):
    torch.set_num_threads(1)
    cfg = VideoHistoryBenchConfig(videos=16, windows=1, steps=8, seed=3)
    conditional = run_method(cfg, subject, {"name": "history", "scheme": "conditional"})
    vanilla = run_method(cfg, subject, {"name": "history", "scheme": "vanilla", "scale": 3.0})
    # measured: found 0.81 -> 0.98, motion ratio 1.63 -> 1.25; NFE per frame doubles
    assert vanilla["found"] > conditional["found"] + 0.08, (conditional, vanilla)
    assert vanilla["nfe_per_frame"] == 2 * conditional["nfe_per_frame"]
