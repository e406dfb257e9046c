"""Smoke tests of the benchmark recipes (configs/bench/*.yaml) on tiny settings.

They check that each recipe runs from its YAML file and writes the promised files and keys with
finite, positive numbers. They assert nothing about speed: timings belong to the benchmarks' own
side-by-side ratios (docs/benchmarks.md), not to tests on a noisy machine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omniguide.core.errors import ConfigError
from omniguide.recipes.config import load_recipe
from omniguide.recipes.run import RunContext

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bench"
TINY_UNET = [
    "model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.cross_attention_dim=8",
    "model.attention_head_dim=2", "model.sample_size=8", "model.tokens=3", "device=cpu", "threads=1",
    "timing.warmup=1", "timing.repeats=2",
]


def run_recipe(name: str, overrides: list[str], tmp_path: Path) -> tuple[dict, Path]:
    resolved = load_recipe(CONFIGS / name, overrides)
    run = RunContext(tmp_path, resolved.recipe.name)
    out = resolved.recipe.fn(resolved.cfg, run)
    run.write_json("metrics.json", out)  # what the CLI does with a recipe's result
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == set(out)
    return on_disk, tmp_path


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_core_runs_and_reports_shares_and_ratios(tmp_path):
    m, folder = run_recipe("core.yaml", [*TINY_UNET, "timing.inner=2", "steps=6"], tmp_path)
    assert (folder / "report.md").read_text().startswith("# bench-core")
    assert positive(m["step"]["median_ms"])
    for key in ("batched_over_sequential", "batched_over_single", "sequential_over_single"):
        assert positive(m["branches"][key])
    assert {"cfg", "cfg-rescale", "cfg++"} <= set(m["combine"])
    assert {v["group"] for v in m["combine"].values()} <= {"elementwise", "spectral"}
    assert m["combine"]["fdg"]["group"] == "spectral"
    for v in m["combine"].values():
        assert positive(v["median_ms"]) and positive(v["share_of_step"])
    assert m["environment"]["device"] == "cpu"


def test_bench_diffusers_reports_a_ratio_per_shared_method(tmp_path):
    m, folder = run_recipe("diffusers_step.yaml", [*TINY_UNET, "steps=6"], tmp_path)
    assert "| method |" in (folder / "report.md").read_text()
    assert set(m["methods"]) == {"cfg", "apg", "tcfg", "cfg-zero-star", "fdg", "pag", "skip-layer", "seg"}
    ok = {k: v for k, v in m["methods"].items() if v["status"] == "ok"}
    assert {"cfg", "apg", "tcfg", "cfg-zero-star"} <= set(ok)
    for v in ok.values():
        assert positive(v["ratio"])
        assert positive(v["omniguide"]["median_ms"]) and positive(v["diffusers"]["median_ms"])
    # same math on both sides where the libraries define it the same way
    assert ok["cfg"]["max_abs_diff"] < 1e-4 * max(1.0, ok["cfg"]["output_scale"])


def test_bench_guiders_writes_table_plot_and_claims(tmp_path):
    overrides = [
        "testbeds=[{name: 2d, dim: 2}]", "sampler.samples=150", "sampler.steps=8", "high_scales=3",
        "auto_scales=[3]",
        "methods=[{guider: {name: cfg}, scales: [1, 3]}, {guider: {name: apg}, scales: [3]},"
        " {guider: {name: cfg-rescale}, scales: [3]}, {guider: {name: cfg-cache, every: 2}, scales: [3],"
        " family: cfg-cache}, {guider: {name: interval, guider: {name: cfg}, sigma: [0.28, 5.42]},"
        " key: guider.scale, scales: [3], family: interval}, {guider: {name: adaptive, guider: {name: cfg}},"
        " key: guider.scale, scales: [3], family: adaptive}]",
    ]
    m, folder = run_recipe("guiders.yaml", overrides, tmp_path)
    assert (folder / "plot.png").stat().st_size > 1000
    assert "## Claims" in (folder / "table.md").read_text()
    res = m["testbeds"]["2d"]
    assert set(res["not_applicable"]) >= {"pag", "seg", "skip-layer"}
    assert "autoguidance" in res["methods"]           # added from the registry, run with the weak mixture
    cfg3 = res["methods"]["cfg"]["scales"]["3"]
    for key in ("swd", "precision", "coverage", "overshoot", "nfe"):
        assert math.isfinite(cfg3[key])
    assert cfg3["nfe"] == 16 and res["methods"]["cfg"]["scales"]["1"]["nfe"] == 8
    assert set(m["matched_quality"]["2d"]) == {"cfg-cache", "interval", "adaptive"}
    assert m["matched_quality"]["2d"]["cfg-cache"]["3"]["settings"]["cfg-cache"]["saving"] > 0
    assert {c["claim"].split()[0] for c in m["claims"]} >= {"apg", "cfg-rescale", "cfg-cache", "interval"}


def test_bench_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="^device"):
        resolved = load_recipe(CONFIGS / "core.yaml", ["device=tpu"])
        resolved.recipe.check(resolved.cfg)
    with pytest.raises(ConfigError, match="^methods.0"):
        resolved = load_recipe(CONFIGS / "diffusers_step.yaml", ["methods=[cfg-rescale]"])
        resolved.recipe.check(resolved.cfg)
    with pytest.raises(ConfigError, match="^baseline"):
        resolved = load_recipe(CONFIGS / "guiders.yaml", ["baseline=nope"])
        resolved.recipe.check(resolved.cfg)
