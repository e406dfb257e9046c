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


def test_bench_guiders_methods2_rows(tmp_path):
    """Methods II rows: analytic scorer plugins take each testbed's mixture (here 4-D), a row may run at
    its own number of steps (residual CFG at CFG's NFE), perp-neg gets a negative class."""
    overrides = [
        "testbeds=[{name: 4d, dim: 4}]", "sampler.samples=120", "sampler.steps=6", "auto_scales=[3]",
        "methods=[{guider: {name: cfg}, scales: [3]},"
        " {guider: {name: scorer-guidance, scorer: {name: mixture-class, label: 0}}, scales: [0.5]},"
        " {guider: {name: gfcg, classifier: {name: mixture-classifier}, target: 0}, key: gfcg_scale, scales: [1]},"
        " {guider: {name: perp-neg}, scales: [3]},"
        " {guider: {name: residual-cfg}, scales: [3], family: one-pass},"
        " {guider: {name: residual-cfg}, scales: [3], steps: 12, label: rcfg12, family: one-pass}]",
    ]
    m, _ = run_recipe("guiders.yaml", overrides, tmp_path)
    res = m["testbeds"]["4d"]["methods"]
    assert "error" not in res["scorer-guidance"] and "error" not in res["gfcg"]
    assert res["residual-cfg"]["scales"]["3"]["nfe"] == 6 and res["rcfg12"]["scales"]["3"]["nfe"] == 12
    assert res["perp-neg"]["scales"]["3"]["nfe"] == 18 and res["gfcg"]["scales"]["1"]["nfe"] == 12
    assert m["matched_quality"]["4d"]["one-pass"]["3"]["settings"]["rcfg12"]["saving"] == pytest.approx(0.0)
    assert set(m["testbeds"]["4d"]["not_applicable"]) >= {"nag", "vsf", "pladis", "tsg", "tpg", "s2-guidance", "sag"}


def test_bench_correctors_writes_distances_and_claims(tmp_path):
    overrides = ["samples=96", "steps=6", "gammas=[1,3]", "pcg_steps=[1,2]", "fkc_particles=[8,96]",
                 "grid={limit: 5.0, size: 60, bins: 8}"]
    m, folder = run_recipe("correctors.yaml", overrides, tmp_path)
    assert "## Claims" in (folder / "table.md").read_text() and (folder / "plot.png").stat().st_size > 1000
    three = m["gammas"]["3"]
    assert three["tv_target_vs_conditional"] > 0.1     # the overlapping mixture can tell samplers apart
    assert m["gammas"]["1"]["tv_target_vs_conditional"] == 0.0
    assert set(three["methods"]) == {"cfg-ddim", "cfg-ddpm", "pcg(K=1)", "pcg(K=2)", "fkc(P=8)", "fkc(P=96)"}
    assert three["methods"]["cfg-ddpm"]["nfe"] == 12 and three["methods"]["pcg(K=2)"]["nfe"] == 6 + 5 * 4
    for v in three["methods"].values():
        assert 0 <= v["tv"] <= 1 and positive(v["swd"])
    assert 0 < three["methods"]["fkc(P=96)"]["min_ess_fraction"] <= 1
    assert {c["claim"].split()[0] for c in m["claims"]} >= {"cfg-ddim", "cfg-ddpm", "more", "PCG", "FKC"}
    with pytest.raises(ConfigError, match="fkc_particles.0: 7 must be >= 2 and divide samples"):
        resolved = load_recipe(CONFIGS / "correctors.yaml", ["samples=96", "fkc_particles=[7]"])
        resolved.recipe.check(resolved.cfg)
