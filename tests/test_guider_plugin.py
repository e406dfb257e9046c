"""Adding a guider touches no list: a throwaway guider registered from a plugin file
(tests/data/plugins/half_cfg.py, loaded as ``--plugin`` loads it) is picked up by the quickstart,
the composition matrix and the image bench, which ask the registry for the guiders whose declared
needs they meet."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_composition import SHAPES, methods, run

from omniguide import CFG
from omniguide.core.registry import GUIDERS
from omniguide.recipes.cli import main
from omniguide.recipes.config import import_plugins

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "data" / "plugins" / "half_cfg.py"
NAME = "test-half-cfg"


@pytest.fixture
def plugin():
    """The plugin's guider registered in this process, and gone again afterwards."""
    before = set(sys.modules)
    import_plugins([str(PLUGIN)])
    yield GUIDERS.get(NAME)
    GUIDERS._items.pop(NAME, None)
    for module in set(sys.modules) - before:
        if module.startswith("omniguide_plugin_"):
            del sys.modules[module]


def test_the_composition_matrix_runs_a_plugin_guider(plugin):
    for layout, shape in SHAPES.items():
        guider = methods(layout, shape)[NAME]
        assert isinstance(guider, plugin)
        # u + (3 / 2)(c - u): the sampler's result is CFG's at scale 1.5, to the last bit of float64
        torch.testing.assert_close(run(guider, layout).sample, run(CFG(1.5), layout).sample, rtol=1e-12, atol=1e-12)


def test_the_quickstart_runs_a_plugin_guider(tmp_path):
    cmd = [sys.executable, "-m", "omniguide", "--plugin", str(PLUGIN), "run", "configs/quickstart.yaml",
           f"run.root={tmp_path}", "sampler.samples=100", "sampler.steps=6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert set(metrics[NAME]) == {"1", "3", "7"} and all(row["nfe"] == 12 for row in metrics[NAME].values())
    assert metrics[NAME]["1"]["swd"] != metrics[NAME]["7"]["swd"]


def test_the_image_bench_runs_a_plugin_guider(plugin, tmp_path, capsys):
    recipe = ROOT / "configs" / "bench" / "image_guiders.yaml"
    overrides = ["num_prompts=2", "seeds=[0]", "steps=2", "threads=1", "overhead.repeats=1",
                 "methods=[{guider: {name: cfg}, scales: [1.5]}]", "unlisted_scales=[3]"]
    assert main(["run", str(recipe), f"run.root={tmp_path}", *overrides]) == 0
    rows = json.loads((Path(capsys.readouterr().out.strip().splitlines()[-1]) / "metrics.json").read_text())["rows"]
    mine, cfg = rows[f"{NAME} scale=3"], rows["cfg scale=1.5"]
    assert mine["nfe"] == 4 and mine["accuracy"] == cfg["accuracy"]
    assert mine["chroma"] == pytest.approx(cfg["chroma"]) and mine["clipped"] == pytest.approx(cfg["clipped"])
