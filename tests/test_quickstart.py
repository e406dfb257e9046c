"""The quickstart recipe end to end through the CLI, on small settings."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from omniguide.core.registry import guiders_served
from omniguide.zoo.scorers import TESTBED_PROVIDES

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _names(cfg):
    if isinstance(cfg, dict):
        return ({cfg["name"]} if "name" in cfg else set()) | set().union(*(_names(v) for v in cfg.values()))
    if isinstance(cfg, list):
        return set().union(*(_names(v) for v in cfg)) if cfg else set()
    return set()


def test_quickstart_shows_every_guider():
    recipe = yaml.safe_load(QUICKSTART.read_text())
    shown = _names(recipe["guiders"])
    # every guider whose declared needs the 2-D mixture meets (no module to perturb, no video history)
    missing = set(guiders_served(TESTBED_PROVIDES)) - shown
    assert not missing, f"guiders missing from configs/quickstart.yaml: {sorted(missing)}"
    assert {"cfg", "apg", "autoguidance", "gfcg"} <= shown and "pag" not in shown


def test_quickstart_runs_and_writes_the_run_folder(tmp_path):
    cmd = [sys.executable, "-m", "omniguide", "run", str(QUICKSTART), f"run.root={tmp_path}",
           "sampler.samples=200", "sampler.steps=12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path
    for name in ("config.yaml", "gallery.png", "metrics.json"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = metrics["cfg"]
    # scale 1 is the conditional: one branch per step; higher scales run both branches
    assert cfg["1"]["nfe"] == 12 and cfg["4"]["nfe"] == 24
    # guidance pushes samples past the class modes, more at higher scales
    assert cfg["8"]["overshoot"] > cfg["4"]["overshoot"] > cfg["1"]["overshoot"] + 0.3
    assert metrics["interval(cfg)"]["4"]["nfe"] < 24
    # which way each metric improves, for every metric a row reports
    assert metrics["better"] == {"swd": "lower", "precision": "higher", "coverage": "higher",
                                 "overshoot": "closer to 0", "nfe": "lower", "forward_passes": "lower",
                                 "seconds": "lower"}
    assert set(metrics["better"]) == set(cfg["1"])
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["sampler"]["samples"] == 200

