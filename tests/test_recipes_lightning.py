"""``kind: train`` on Lightning: DDP equivalence, SIGKILL + ``resume: auto`` bitwise, and a dead rank
ending the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omniguide.recipes.cli import main
from omniguide.zoo.small_denoiser import SmallDenoiser

DATA = Path(__file__).parent / "data"
TRAIN = str(DATA / "recipes" / "train_tiny.yaml")
PLUGIN = str(DATA / "plugins" / "slow_steps.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DELAY = "callbacks=[{name: step-delay, seconds: 0.1}]"


def launch(*argv: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "omniguide", "--plugin", PLUGIN, "run", TRAIN, *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        x, y = a["state_dict"][key], b["state_dict"][key]
        assert torch.equal(x, y) if exact else torch.allclose(x, y, atol=atol, rtol=0), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run of the tiny recipe."""
    root = tmp_path_factory.mktemp("train")
    assert main(["run", TRAIN, f"run.root={root}"]) == 0
    return next(root.iterdir())


def test_training_writes_checkpoints_logs_and_a_loadable_model(reference):
    ckpts = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert ckpts == ["final.ckpt", "step-000020.ckpt", "step-000040.ckpt", "step-000060.ckpt"]
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["final_loss"] < 1.0
    rows = (reference / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0].count("train/loss") == 1 and len(rows) >= 6      # CSV logger, every 10 steps
    model = SmallDenoiser.load(reference / "model.safetensors")
    x = torch.randn(5, 2)
    eps = model(x, torch.tensor([10, 200, 500, 800, 999]), labels=torch.tensor([0, 1, 2, -1, 0]))
    assert eps.shape == (5, 2) and torch.isfinite(eps).all()
    final = load(reference / "checkpoints" / "final.ckpt")["state_dict"]
    assert all(torch.equal(final[f"model.{k}"], v) for k, v in model.state_dict().items())


def test_two_process_ddp_training_equals_single_process(reference, tmp_path):
    """The global batch is split over 2 ranks and gradients averaged: same weights as 1 process."""
    proc = launch(f"run.root={tmp_path}", "trainer.devices=2", "trainer.strategy=ddp",
                  "trainer.process_group_backend=gloo")
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    assert_same_state(load(reference / "checkpoints/final.ckpt"), load(run_dir / "checkpoints/final.ckpt"),
                      exact=False, atol=1e-5)


def test_sigkill_then_resume_auto_matches_uninterrupted_bitwise(reference, tmp_path):
    run_dir = tmp_path / "killed"
    proc = launch(f"run.dir={run_dir}", DELAY)
    wait_for(run_dir / "checkpoints" / "step-000020.ckpt", proc)
    time.sleep(0.5)                                         # somewhere between two checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # nothing the killed run left under a final name is half-written
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model.safetensors").exists()
    finals = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for path in finals:
        if path.suffix == ".ckpt":
            assert load(path)["global_step"] % 20 == 0
        elif path.suffix in (".json",):
            json.loads(path.read_text())
    killed_at = max(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.ckpt"))
    assert 20 <= killed_at < 60
    # resume in the same folder: continues from the newest complete checkpoint
    proc = launch(f"run.dir={run_dir}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith(f"step-{killed_at:06d}.ckpt") and metrics["steps"] == 60
    a, b = load(reference / "checkpoints/final.ckpt"), load(run_dir / "checkpoints/final.ckpt")
    assert_same_state(a, b, exact=True)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # resumed once more, at its last checkpoint: no step runs, metrics.json still has the final loss
    proc = launch(f"run.dir={run_dir}")
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err[-3000:]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["resumed_from"].endswith("step-000060.ckpt") and again["final_loss"] == metrics["final_loss"] > 0


def _children(pid: int) -> list[int]:
    psutil = pytest.importorskip("psutil")
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


@pytest.mark.parametrize("victim", ["child", pytest.param("rank0", marks=pytest.mark.slow)])
def test_killing_one_rank_ends_the_job_nonzero(victim, tmp_path):
    psutil = pytest.importorskip("psutil")
    run_dir = tmp_path / "run"
    proc = launch(f"run.dir={run_dir}", DELAY, "trainer.max_steps=100000", "trainer.devices=2",
                  "trainer.strategy=ddp", "trainer.timeout_s=60")
    wait_for(run_dir / "checkpoints" / "step-000020.ckpt", proc, timeout=120)   # both ranks are training
    children = _children(proc.pid)
    assert children, "no rank-1 process found"
    start = time.monotonic()
    os.kill(children[0] if victim == "child" else proc.pid, signal.SIGKILL)
    if victim == "child":
        proc.communicate(timeout=60)
        assert proc.returncode != 0
    else:
        proc.communicate(timeout=10)
    # every process of the job is gone within a bounded time (no rank left waiting in a collective)
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(c) and psutil.Process(c).status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, "a rank outlived the killed one"
        time.sleep(0.2)
    assert time.monotonic() - start < 60


def test_the_zoo_trainers_share_one_base_and_its_learning_rate_schedule():
    """Every zoo trainer is a StepTrainer built from the recipe's settings; the shared schedule is a
    linear warm-up, a plateau up to ``decay_from`` x max_steps, then a cosine down to 10 %."""
    import math
    from types import SimpleNamespace

    from omniguide.zoo.trainables import TRAINABLES, trainable
    from omniguide.zoo.trainer import StepTrainer, TrainSettings

    data = {"toy-audio": {"pool": 8}, "primitives-prior": {"resolution": 16, "views_per_shape": 2, "samples": 8}}
    small = {"shapes": {"block_out_channels": [8, 16], "text_hidden": 16, "text_intermediate": 32,
                        "attention_heads": 2}, "toy-audio": {"channels": [144, 144]},
             "primitives-prior": {"block_out_channels": [16, 16], "cross_attention_dim": 16, "text_hidden": 16}}
    for name in TRAINABLES:
        recipe = SimpleNamespace(batch_size=8, lr=2.0, weight_decay=0.5, cond_dropout=0.25, seed=3,
                                 data=data.get(name, {}))
        module = trainable(name)({"name": name, **small.get(name, {})}, recipe)
        assert isinstance(module, StepTrainer), name
        assert (module.settings.batch_size, module.settings.lr, module.settings.seed) == (8, 2.0, 3), name
    settings = TrainSettings.from_recipe(recipe)
    assert (settings.weight_decay, settings.cond_dropout) == (0.5, 0.25)

    module = trainable("small-denoiser")({"name": "small-denoiser"}, recipe)
    module._trainer = SimpleNamespace(max_steps=100, world_size=2, global_rank=1)
    assert module.rows(8) == slice(1, None, 2)
    with pytest.raises(Exception, match="batch_size: 7 is not divisible by the 2 processes"):
        module.rows(7)
    assert torch.equal(torch.rand(3, generator=module.generator(5)),
                       torch.rand(3, generator=torch.Generator().manual_seed(3 * 1_000_003 + 5)))
    opt = module.adamw_warmup_cosine([torch.nn.Parameter(torch.zeros(1))], warmup=10, decay_from=0.5)
    factor = opt["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert opt["optimizer"].defaults["weight_decay"] == 0.5
    assert [factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]          # (step + 1) / warmup
    assert factor(10) == factor(50) == 1.0                               # plateau to 0.5 x 100
    assert factor(75) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)   # half-way down: 0.55
    assert factor(100) == factor(500) == pytest.approx(0.1)
