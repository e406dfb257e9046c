"""The ``distill`` and ``rollout`` kinds meet the contract of ``sample`` and ``train``: a malformed
value exits 2 with one line naming the full key path, at ``validate`` and at ``run`` alike, before a
run folder exists (issue 17's measured cases: non-finite and textual scales, objective fields, the
rollout's stabilization, camera ranges and export formats)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniguide.recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]
SDS = ROOT / "configs" / "distill3d" / "toy_sds.yaml"
ROLLOUT = ROOT / "configs" / "video" / "toy_rollout.yaml"
AUDIO = ROOT / "configs" / "audio" / "continuation.yaml"

CASES = {
    # name: (recipe, overrides, the error line after "error: ")
    "rollout-scale-nan": (ROLLOUT, ["guider.scale=nan"], "guider.scale: must be a finite number, got 'nan'"),
    "rollout-scale-text": (ROLLOUT, ["guider.scale=abc"],
                           "guider.scale: expected a number or a schedule {shape: linear, scale: 7}, got 'abc'"),
    "audio-text-scale-nan": (AUDIO, ["guider.text_scale=nan"], "guider.text_scale: must be a finite number, got 'nan'"),
    "rollout-stabilization-range": (ROLLOUT, ["stabilization=1.5"],
                                    "stabilization: a noise level must lie in [0, 1), got 1.5"),
    "rollout-stabilization-text": (ROLLOUT, ["stabilization=abc"], "stabilization: expected a number, got 'abc'"),
    "rollout-stabilization-pair": (ROLLOUT, ["stabilization=[0.1,-0.2]"],
                                   "stabilization.1: a noise level must lie in [0, 1), got -0.2"),
    "rollout-stabilization-three": (ROLLOUT, ["stabilization=[0.1,0.1,0.1]"],
                                    "stabilization: give one level or [oldest, newest], got [0.1, 0.1, 0.1]"),
    "distill-scale-nan": (SDS, ["guider.scale=nan"], "guider.scale: must be a finite number, got 'nan'"),
    "distill-scale-inf": (SDS, ["guider.scale=-.inf"], "guider.scale: must be a finite number, got -inf"),
    "distill-objective-scale-text": (SDS, ["objective.scale=big"], "objective.scale: expected a number, got 'big'"),
    "distill-csd-guidance-nan": (SDS, ["objective={name: csd, guidance: .nan}"],
                                 "objective.guidance: must be a finite number, got nan"),
    "distill-t-min-nan": (SDS, ["objective.t_min=nan"], "objective.t_min: must be a finite number, got 'nan'"),
    "distill-anneal-nan": (SDS, ["objective.t_max.values=[.nan,0.5]"],
                           "objective.t_max.values: must be finite numbers, got [nan, 0.5]"),
    "distill-anneal-typo": (SDS, ["objective.t_max.progres=[0.5,0.5]"],
                            "objective.t_max.progres: unknown key for an annealed value; did you mean 'progress'?"),
    "distill-estimator": (SDS, ["objective={name: vsd, estimator: lorra}"],
                          "objective.estimator: unknown estimator 'lorra'; did you mean 'lora'?"),
    "distill-objective-text-field": (SDS, ["objective={name: nfsd, negative_prompt: 3}"],
                                     "objective.negative_prompt: expected text, got 3"),
    "distill-needs-flow": (SDS, ["objective.name=rfds"],
                           "objective.name: 'rfds' needs a rectified-flow prior; the zoo's 3D prior (v) predicts 'v'"),
    "distill-evaluate": (SDS, ["evaluate=maybe"],
                         "evaluate: 'maybe' is not allowed; valid: False, True, auto, false, true"),
    "distill-elevation": (SDS, ["cameras.elevation=[-10,120]"],
                          "cameras.elevation: must lie in [-90, 90] degrees, got [-10.0, 120.0]"),
    "distill-video-format": (SDS, ["export.video=[mp4,mp5]"],
                             "export.video.1: unknown format 'mp5'; did you mean 'mp4'?"),
    "distill-mesh-format": (SDS, ["export.mesh=[stl]"], "export.mesh.0: unknown format 'stl'; valid: glb, obj"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_and_run_reject_with_the_same_line_and_no_folder(name, tmp_path, capsys):
    recipe, overrides, expected = CASES[name]
    assert main(["validate", str(recipe), *overrides]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {expected}"], (out, err)
    assert main(["run", str(recipe), *overrides, f"run.root={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {expected}"] and out == ""
    assert not list(tmp_path.iterdir())     # nothing that looks like a run


@pytest.mark.parametrize("name", ["distill-objective-scale-text", "rollout-stabilization-text"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_process_prints_the_line_alone(name, command, tmp_path):
    """In a process of its own (loading bars and library warnings would reach stderr here)."""
    recipe, overrides, expected = CASES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "omniguide", command, str(recipe), *overrides]
    if command == "run":
        argv.append(f"run.root={tmp_path}")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: {expected}"] and done.stdout == ""
    assert not [p for p in tmp_path.iterdir() if p.name != "__pycache__"]


@pytest.mark.parametrize("value", ["false", "true", "auto", "'false'"])
def test_evaluate_takes_yaml_booleans_and_the_old_words(value, capsys):
    """``evaluate: false`` in YAML (or on the command line) is a boolean; it was refused as 'False'."""
    assert main(["validate", str(SDS), f"evaluate={value}"]) == 0, capsys.readouterr().err


def test_evaluate_false_skips_the_truth():
    from omniguide.recipes.config import load_recipe
    from omniguide.recipes.runners.distill import truth_for

    cfgs = {v: load_recipe(str(SDS), [f"evaluate={v}"]).cfg for v in ("false", "true", "auto")}
    assert truth_for(cfgs["false"]) is None
    assert truth_for(cfgs["true"]) is not None and truth_for(cfgs["auto"]) is not None
