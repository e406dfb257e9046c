"""``kind: distill`` on Lightning with a tiny random SD prior: outputs, the frozen prior kept out of
checkpoints, 2-process DDP equal to 1 process, SIGKILL + ``resume: auto`` bitwise, refusals at
validate, and a diverging run stopping with its step and term named."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tiny_pipelines as tp
import torch

from omniguide import CFG, Guided, register_guider
from omniguide.core.registry import GUIDERS
from omniguide.recipes.cli import main
from omniguide.recipes.runtime import trim_csv_log

DATA = Path(__file__).parent / "data"
RECIPE = str(DATA / "recipes" / "distill_tiny.yaml")
PLUGIN = str(DATA / "plugins" / "slow_steps.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    tp.sd().save_pretrained(folder, safe_serialization=True)
    return folder


def launch(sd_folder: Path, *argv: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "omniguide", "--plugin", PLUGIN, "run", RECIPE, f"prior.path={sd_folder}", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def reference(sd_folder, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    assert main(["run", RECIPE, f"prior.path={sd_folder}", f"run.root={root}"]) == 0
    return next(root.iterdir())


def test_a_run_writes_turntable_mesh_metrics_and_keeps_the_prior_out_of_checkpoints(reference):
    for name in ("turntable.mp4", "turntable.gif", "metrics.json", "checkpoints/final.ckpt"):
        assert (reference / name).stat().st_size > 0, name
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["objective"] == "sds"
    assert {"grad_norm", "guided - noise", "cond - uncond", "t"} <= set(metrics["final"])
    shares = [metrics[k] for k in ("render_share", "prior_share", "update_share", "overhead_share")]
    assert abs(sum(shares) - 1) < 1e-6 and min(shares[:3]) > 0
    state = load(reference / "checkpoints/final.ckpt")["state_dict"]
    assert set(state) == {"scene.density", "scene.color"}            # no prior weights, no buffers
    rows = (reference / "logs" / "metrics.csv").read_text().splitlines()
    assert "train/grad_norm" in rows[0] and "train/loss" not in rows[0]


def test_two_process_ddp_equals_one_process_with_the_same_total_batch(sd_folder, reference, tmp_path):
    proc = launch(sd_folder, f"run.root={tmp_path}", "trainer.devices=2", "trainer.strategy=ddp",
                  "trainer.process_group_backend=gloo", "export.video=[]", "export.mesh=[]")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    a, b = load(reference / "checkpoints/final.ckpt"), load(run_dir / "checkpoints/final.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-5, rtol=0), key


def test_sigkill_then_resume_auto_reaches_the_uninterrupted_checkpoint(sd_folder, reference, tmp_path):
    run_dir = tmp_path / "killed"
    proc = launch(sd_folder, f"run.dir={run_dir}", "callbacks=[{name: step-delay, seconds: 0.25}]")
    target = run_dir / "checkpoints" / "step-000004.ckpt"
    end = time.monotonic() + 120
    while not target.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (run_dir / "metrics.json").exists()
    assert csv_rows(run_dir)[0]["step"] == "3"                # the killed run logged step 3
    (run_dir / "checkpoints" / ".step-000008.ckpt.tmpk1ll.ckpt").write_bytes(b"half a checkpoint")
    proc = launch(sd_folder, f"run.dir={run_dir}", "export.video=[]", "export.mesh=[]")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith(".ckpt") and metrics["steps"] == 12
    a, b = load(reference / "checkpoints/final.ckpt"), load(run_dir / "checkpoints/final.ckpt")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # the whole log: the killed run's rows kept, the resumed run's appended, equal to the uninterrupted log
    assert [r["step"] for r in csv_rows(run_dir)] == ["3", "7", "11"]
    assert csv_rows(run_dir) == csv_rows(reference)
    assert not list(run_dir.rglob(".*.tmp*"))                # the killed run's temporary is gone
    # resumed from the last checkpoint: no step runs, and metrics.json is still complete
    proc = launch(sd_folder, f"run.dir={run_dir}", "export.video=[]", "export.mesh=[]")
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err[-3000:]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["resumed_from"].endswith("step-000012.ckpt")
    assert again["final"] == metrics["final"] and again["final"]["grad_norm"] > 0
    shares = [again[k] for k in ("render_share", "prior_share", "update_share", "overhead_share")]
    assert abs(sum(shares) - 1) < 1e-6
    assert [r["step"] for r in csv_rows(run_dir)] == ["3", "7", "11"]


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_csv_log_keeps_only_the_rows_before_the_step_resumed_from(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,train/t\n0,3,0.5\n0,7,0.25\n0,11,0.125\n")
    trim_csv_log(log, 8)
    assert log.read_text().splitlines() == ["epoch,step,train/t", "0,3,0.5", "0,7,0.25"]
    trim_csv_log(log, 0)
    assert log.read_text().splitlines() == ["epoch,step,train/t"]


@pytest.mark.parametrize("override,message", [
    ("prompt='" + "a very long prompt " * 30 + "'", "prompt: prompt .* tokens but the prior's tokenizer takes at most"),
    ("render_size=18", "render_size: 18x18 cannot be used by .*multiple of 4"),
    ("guider={name: apg, scale: 5, momentum: -0.5}", "guider 'apg' needs a sampler step index .*score distillation"),
    ("guider={name: cfg++, scale: 0.5}", "guider 'cfg\\+\\+' needs a sampler that re-anchors.*score distillation"),
    ("objective={name: rfds}", "objective.name: 'rfds' needs a rectified-flow prior"),
    ("objective={name: sds, weigting: uniform}", "objective.weigting: unknown key .*did you mean 'weighting'"),
])
def test_bad_input_is_refused_at_validate(sd_folder, override, message, capsys):
    assert main(["validate", RECIPE, f"prior.path={sd_folder}", override]) == 2
    assert __import__("re").search(message, capsys.readouterr().err), capsys.readouterr()


@dataclass
class Explode(CFG):
    """CFG whose guided prediction turns infinite from training progress ``at`` on."""

    at: float = 0.25

    def combine(self, preds, step):
        out = super().combine(preds, step)
        if step.progress >= self.at:
            return Guided(out.x0, out.eps * float("inf"), out.x, out.noise)
        return out


@pytest.fixture
def explode_guider():
    """Registered for one test only: tests elsewhere iterate over every registered guider."""
    register_guider("test-explode")(Explode)
    yield
    GUIDERS._items.pop("test-explode")


def test_a_diverging_run_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(sd_folder, tmp_path, capsys,
                                                                                      explode_guider):
    run_dir = tmp_path / "diverge"
    guider = "guider={name: test-explode, at: 0.25}"
    code = main(["run", RECIPE, f"prior.path={sd_folder}", f"run.dir={run_dir}", guider, "checkpoint_every=2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "objective 'sds' at step 3: term 'guided - noise' is non-finite" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002.ckpt"]
    assert not (run_dir / "metrics.json").exists()


def test_the_bench_runs_every_variant_and_reports_quality_and_time_shares(sd_folder, tmp_path):
    recipe = tmp_path / "bench.yaml"
    recipe.write_text(f"""
kind: bench-distill3d
prompts: ["a red cube"]
base:
  prior: {{name: pretrained, path: "{sd_folder}"}}
  scene: {{resolution: 16}}
  render_size: 16
  samples: 8
  batch_size: 2
  export: {{video: [], mesh: []}}
  trainer: {{accelerator: cpu, devices: 1, max_steps: 5, enable_progress_bar: false, logger: none, threads: 1}}
variants:
  - {{label: sds-apg, objective: {{name: sds}}, guider: {{name: apg, scale: 5, axes: BCHW}}}}
  - {{label: nfsd, objective: {{name: nfsd, negative_prompt: a blue sphere}}}}
""")
    assert main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    assert set(summary) == {"sds-apg", "nfsd"}
    for row in summary.values():
        assert 0 <= row["iou"] <= 1 and 0 <= row["color_error"] <= 1 and row["seconds_per_iteration"] > 0
    assert "| sds-apg |" in (run_dir / "table.md").read_text()


def test_the_bench_runs_only_the_selected_variants_and_names_an_unknown_label():
    from omniguide.bench.distill3d import BenchDistillConfig, variant_configs
    from omniguide.core.errors import ConfigError

    variants = [{"label": "a", "objective": {"name": "sds"}}, {"label": "b", "objective": {"name": "nfsd"}}]
    cfg = BenchDistillConfig(prompts=["a red cube", "a blue sphere"], variants=variants, only=["b"])
    assert [(label, prompt) for label, prompt, _ in variant_configs(cfg)] == [("b", "a red cube"),
                                                                              ("b", "a blue sphere")]
    with pytest.raises(ConfigError, match="only: no variant labelled 'c'; labels: a, b"):
        variant_configs(BenchDistillConfig(variants=variants, only=["c"]))


@pytest.mark.slow
def test_killing_a_rank_ends_the_ddp_job_nonzero_within_a_bound(sd_folder, tmp_path):
    psutil = pytest.importorskip("psutil")
    run_dir = tmp_path / "run"
    proc = launch(sd_folder, f"run.dir={run_dir}", "callbacks=[{name: step-delay, seconds: 0.1}]",
                  "trainer.max_steps=100000", "trainer.devices=2", "trainer.strategy=ddp", "trainer.timeout_s=60")
    target = run_dir / "checkpoints" / "step-000004.ckpt"
    end = time.monotonic() + 150
    while not target.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end
        time.sleep(0.1)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert children, "no rank-1 process found"
    start = time.monotonic()
    os.kill(children[0], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60


def test_perp_neg_takes_the_other_views_prompts_as_negatives(sd_folder, reference, tmp_path):
    """Perp-Neg inside SDS (the multi-face remedy): the back view's prompt as a named negative branch.
    The run's gradients differ from plain CFG's at the same seed, and its checkpoint holds only the scene."""
    guider = 'guider={name: perp-neg, scale: 7.5, negatives: {"view:back": 1.0}}'
    assert main(["run", RECIPE, f"prior.path={sd_folder}", f"run.root={tmp_path}", guider, "trainer.max_steps=4",
                 "checkpoint_every=2"]) == 0
    run = next(tmp_path.iterdir())
    ours = load(run / "checkpoints" / "final.ckpt")["state_dict"]
    cfg = load(reference / "checkpoints" / "step-000004.ckpt")["state_dict"]
    assert set(ours) == {"scene.density", "scene.color"}
    assert torch.isfinite(ours["scene.color"]).all()
    assert (ours["scene.color"] - cfg["scene.color"]).abs().max() > 1e-6
