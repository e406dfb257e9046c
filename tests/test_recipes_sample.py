"""``kind: sample``: the Lightning predict loop over a prompt list (resumable, shardable, deterministic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omniguide.recipes.cli import main

RECIPES = Path(__file__).parent / "data" / "recipes"
CHILD = str(RECIPES / "sample_child.yaml")   # 1 inline prompt + 4 from prompts.jsonl


def run_cli(capsys, *argv: str) -> Path:
    rc = main(["run", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return Path(out.strip().splitlines()[-1])


def items(run_dir: Path) -> dict[int, tuple[torch.Tensor, dict]]:
    out = {}
    for meta_path in sorted((run_dir / "items").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        meta.pop("seconds")
        out[meta["index"]] = (torch.load(meta_path.with_suffix(".pt")), meta)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The single-process reference run."""
    root = tmp_path_factory.mktemp("sample")
    rc = main(["run", CHILD, f"run.root={root}"])
    assert rc == 0
    return next(root.iterdir())


def test_items_are_written_with_their_seeds_and_overrides(single):
    got = items(single)
    assert sorted(got) == [0, 1, 2, 3, 4]
    metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["items"] == 5 and metrics["skipped"] == 0
    seeds = [got[i][1]["seed"] for i in range(5)]
    assert seeds == [0, 11, 2, 5, 4]                      # base seed + index unless the item sets one
    assert got[2][1]["nfe"] == 8                          # guider.scale=1 per item: one pass per step
    assert got[0][1]["nfe"] == 16 and got[0][1]["guider"] == {"name": "cfg", "scale": 5.0}
    assert got[3][0].shape == (16, 2) and got[3][1]["steps"] == 4
    assert got[4][1]["guider"] == {"name": "cfg++", "scale": 0.4}
    assert all(m["accuracy"] > 0.8 for _, m in got.values() if m["guider"]["scale"] != 1.0)


def test_same_recipe_and_seed_give_identical_items(single, capsys, tmp_path):
    again = run_cli(capsys, CHILD, f"run.root={tmp_path}")
    a, b = items(single), items(again)
    for i in a:
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_rerun_skips_complete_items_and_redoes_missing_ones(capsys, tmp_path):
    first = run_cli(capsys, CHILD, f"run.root={tmp_path}")
    before = items(first)
    stamps = {p.name: p.stat().st_mtime_ns for p in (first / "items").iterdir()}
    (first / "items" / "000003.json").unlink()            # as if killed between the .pt and the .json
    again = run_cli(capsys, CHILD, f"run.dir={first}")
    assert again == first
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["skipped"] == 4 and metrics["items"] == 5
    after = items(first)
    assert all(torch.equal(before[i][0], after[i][0]) for i in before)
    changed = {p.name for p in (first / "items").iterdir() if p.stat().st_mtime_ns != stamps.get(p.name)}
    assert changed == {"000003.pt", "000003.json"}


def test_two_process_ddp_shards_union_equals_single_process(single, tmp_path):
    """2 ranks (DDP over gloo on CPU), each a disjoint shard; the union equals the 1-process run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.process_group_backend=gloo"]

    def launch(*argv: str) -> Path:
        proc = subprocess.run([sys.executable, "-m", "omniguide", "run", CHILD, *argv, *ddp],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return Path(proc.stdout.strip().splitlines()[-1])

    run_dir = launch(f"run.root={tmp_path}")
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    a, b = items(single), items(run_dir)
    assert sorted(a) == sorted(b)
    for i in a:
        assert torch.equal(a[i][0], b[i][0]), i
        assert a[i][1] == b[i][1], i
    assert not list(run_dir.rglob(".*.tmp*"))             # no temporary files left behind
    # fewer pending items than ranks: one rank's shard is empty (padded), the other redoes item 4
    (run_dir / "items" / "000004.json").unlink()
    assert launch(f"run.dir={run_dir}") == run_dir
    assert json.loads((run_dir / "metrics.json").read_text())["skipped"] == 4
    assert torch.equal(items(run_dir)[4][0], a[4][0])
