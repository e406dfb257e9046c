"""Smoke test of configs/bench/audio_guiders.yaml on tiny settings (a random small toy-audio pipeline):
it runs from its YAML file and writes the promised keys and table. It asserts nothing about speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from omniguide.recipes.config import load_recipe
from omniguide.recipes.run import RunContext
from omniguide.zoo.toy_audio import ToyAudioDenoiser, ToyTextEncoder, build_pipeline

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "audio_guiders.yaml"


def test_bench_audio_guiders_writes_table_and_metrics(tmp_path):
    torch.manual_seed(0)
    pipe = build_pipeline(ToyAudioDenoiser(channels=(8, 8, 8), embed_dim=8, text_dim=8, heads=1, groups=2),
                          ToyTextEncoder(dim=8))
    pipe.codec.register_to_config(griffin_lim_iters=2)
    pipe.save_pretrained(tmp_path / "toy")
    methods = ("methods=[{guider: {name: cfg}, scales: [1, 3]}, {guider: {preset: ace-step}, scales: [3]},"
               " {guider: {name: fdg, space: null}, scales: [2], tied: {scale_high: 2.0}}]")
    resolved = load_recipe(CONFIG, [f"path={tmp_path / 'toy'}", "prompts=[a pure A4 tone, a rising chirp]",
                                    "samples=2", "steps=2", methods, "overhead.repeats=1", "overhead.warmup=0"])
    (tmp_path / "run").mkdir()
    run = RunContext(tmp_path / "run", resolved.recipe.name)
    out = resolved.recipe.fn(resolved.cfg, run)
    run.write_json("metrics.json", out)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(m["methods"]) == {"cfg", "ace-step", "fdg"}
    cfg = m["methods"]["cfg"]["settings"]
    assert [r["nfe"] for r in cfg] == [2, 4]                     # scale 1: one pass per step
    for r in (*cfg, *m["methods"]["fdg"]["settings"]):
        for key in ("accuracy", "diversity", "peak", "rms", "flatness", "clipped", "audio_per_second"):
            assert math.isfinite(r[key]), key
    assert m["overhead"]["ratio"] > 0 and m["overhead"]["max_output_difference"] < 1e-5
    table = (tmp_path / "run" / "table.md").read_text()
    assert table.startswith("# bench-audio-guiders") and "Adapter overhead" in table and "| fdg | 2 |" in table
