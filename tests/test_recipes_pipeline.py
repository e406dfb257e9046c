"""``kind: sample`` driving a diffusers pipeline (saved tiny SD pipeline, loaded with from_pretrained):
PNGs, contact sheet and metrics written; per-item seeds and guiders; resume; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_pipelines as TP
import torch

from omniguide import CFG, guide
from omniguide.recipes.cli import main

RECIPE = """kind: sample
model: {{name: diffusers, path: {path}, call: {{height: 16, width: 16}}}}
guider: {{name: cfg, scale: 4.0}}
negative_prompt: blurry
prompts: ["a red circle", {{prompt: "a blue square", seed: 7, guider: {{name: apg, scale: 5.0}}}},
          {{prompt: "a cat", num_samples: 2, negative_prompt: "low quality"}}]
steps: 3
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}}
"""


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd")
    TP.sd().save_pretrained(folder, safe_serialization=True)
    return folder


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write_recipe(tmp_path: Path, folder: Path, extra: str = "") -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(path=folder) + extra)
    return recipe


def test_pipeline_recipe_writes_images_sheet_and_metrics(pipeline_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path, pipeline_dir)
    rc, out, err = cli(capsys, "run", str(recipe), f"run.root={tmp_path / 'runs'}")
    assert rc == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    metas = {m["index"]: m for m in map(json.loads, map(Path.read_text, sorted((run_dir / "items").glob("*.json"))))}
    assert [len(metas[i]["files"]) for i in range(3)] == [1, 1, 2]
    assert metas[0]["nfe"] == 6 and metas[0]["negative_prompt"] == "blurry"
    assert metas[1]["guider"] == {"name": "apg", "scale": 5.0} and metas[1]["seed"] == 7
    assert metas[2]["negative_prompt"] == "low quality"
    assert (run_dir / "contact_sheet.png").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["items"] == 3 and metrics["images"] == 4 and metrics["nfe"] == 18
    # the recipe's image is the library's: same seed, guider and negative prompt
    import imageio.v3 as iio

    pipe = TP.saved(TP.sd(), tmp_path / "again")
    with guide(pipe, CFG(scale=4.0), negative_prompt="blurry"):
        direct = pipe("a red circle", num_inference_steps=3, height=16, width=16, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images[0]
    png = iio.imread(run_dir / "items" / "000000_0.png")
    assert abs(png.astype(int) - (direct * 255).round().astype(int)).max() <= 1
    # a rerun in the same folder skips the finished items
    rc, out, err = cli(capsys, "run", str(recipe), f"run.dir={run_dir}")
    assert rc == 0 and json.loads((run_dir / "metrics.json").read_text())["skipped"] == 3


def test_scheduler_swap_keeps_the_pipelines_noise_schedule(pipeline_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path, pipeline_dir, "scheduler: {name: dpmpp_2m}\n")
    rc, out, err = cli(capsys, "run", str(recipe), f"run.root={tmp_path}", "prompts=[a dog]")
    assert rc == 0, err


@pytest.mark.parametrize("case", ["missing", "incomplete", "unknown-class", "xformers", "bad-prompt"])
def test_pipeline_recipe_errors_are_one_line(pipeline_dir, tmp_path, capsys, case):
    folder = tmp_path / "copy"
    shutil.copytree(pipeline_dir, folder)
    overrides = []
    if case == "missing":
        folder = tmp_path / "nowhere"
        expected = f"error: model.path: pipeline folder not found: {folder}"
    elif case == "incomplete":
        for weights in (folder / "unet").glob("*.safetensors"):
            weights.unlink()
        expected = f"error: model.path: {folder} is incomplete: unet/ has no weights (*.safetensors or *.bin)"
    elif case == "unknown-class":
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
        expected = "error: model.path: no pipeline family serves KandinskyPipeline; supported: "
    elif case == "xformers":
        overrides = ["model.attention=xformers"]
        expected = "error: model.attention: xformers"
    else:
        overrides = ["prompts=[3]"]
        expected = "error: prompts.0: expected a text prompt, got 3"
    recipe = write_recipe(tmp_path, folder)
    for command in ("validate", "run"):
        rc, out, err = cli(capsys, command, str(recipe), f"run.root={tmp_path / 'runs'}", *overrides)
        assert rc == 2 and err.startswith(expected) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_process_ddp_shards_pipeline_items(pipeline_dir, tmp_path, capsys):
    """2 ranks over gloo, each loading the pipeline once and generating a disjoint shard of the items;
    the union equals the single-process run, image for image."""
    import os
    import subprocess
    import sys

    import imageio.v3 as iio

    recipe = write_recipe(tmp_path, pipeline_dir)
    rc, out, err = cli(capsys, "run", str(recipe), f"run.root={tmp_path / 'one'}")
    assert rc == 0, err
    single = Path(out.strip().splitlines()[-1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "omniguide", "run", str(recipe), f"run.root={tmp_path / 'two'}",
                           "trainer.devices=2", "trainer.strategy=ddp", "trainer.process_group_backend=gloo"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = Path(proc.stdout.strip().splitlines()[-1])
    assert json.loads((double / "metrics.json").read_text())["world_size"] == 2
    files = sorted(p.name for p in (single / "items").glob("*.png"))
    assert files == sorted(p.name for p in (double / "items").glob("*.png")) and len(files) == 4
    for name in files:
        assert (iio.imread(single / "items" / name) == iio.imread(double / "items" / name)).all(), name
