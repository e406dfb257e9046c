"""The ``bench-guiders`` recipe kind: the sweep of :mod:`omniguide.bench.guiders` (which samples and
measures), then judging and presenting its results (per testbed, method and scale):

* **verdicts**: matched quality of the pass-saving families against the baseline
  (:func:`matched_quality`) and the papers' claims (:func:`check_claims`), both kept in ``metrics.json``;
* **outputs**: ``table.md`` (:func:`report`, with :func:`matched_table`) and ``plot.png`` (:func:`plot`).
"""

from __future__ import annotations

import time
from typing import Any

from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from .guiders import BenchGuidersConfig, MethodSweep, check_bench_guiders, plan, row_label, run_testbed
from .kit import load_guider_modules, markdown_table, yes_no


def matched_quality(methods: dict, rows: list[MethodSweep], baseline: str, cfg: BenchGuidersConfig) -> dict:
    """Per family and scale: every setting's NFE saving and swd change against the baseline, and the
    largest saving among settings within the swd tolerance."""
    if baseline not in methods:
        return {}
    base = methods[baseline]["scales"]
    families: dict[str, Any] = {}
    for sweep in rows:
        if not sweep.family:
            continue
        label = row_label(sweep)
        fam = families.setdefault(sweep.family, {})
        for key, m in methods[label]["scales"].items():
            if key not in base:
                continue
            b = base[key]
            saving = 1.0 - m["nfe"] / b["nfe"]
            matched = m["swd"] <= b["swd"] + cfg.swd_tolerance
            per_scale = fam.setdefault(key, {"settings": {}, "best_saving": None, "best_setting": None})
            per_scale["settings"][label] = {"saving": saving, "swd": m["swd"], "baseline_swd": b["swd"],
                                            "swd_change": m["swd"] - b["swd"], "matched": matched,
                                            "swd_to_baseline": m.get("swd_to_baseline")}
            if matched and (per_scale["best_saving"] is None or saving > per_scale["best_saving"]):
                per_scale["best_saving"], per_scale["best_setting"] = saving, label
    return families


def check_claims(results: dict, matched: dict, rows: list[MethodSweep], baseline: str,
                 cfg: BenchGuidersConfig) -> list[dict]:
    claims = []
    for tb, res in results.items():
        methods = res["methods"]
        if baseline not in methods:
            continue
        base = methods[baseline]["scales"]
        for name in cfg.overshoot_methods:
            if name not in methods:
                continue
            pairs = [(k, methods[name]["scales"][k]["overshoot"], base[k]["overshoot"])
                     for k in methods[name]["scales"] if k in base and float(k) >= cfg.high_scales]
            if not pairs:
                continue
            claims.append({"testbed": tb,
                           "claim": f"{name} cuts overshoot compared with {baseline} at scale >= {cfg.high_scales:g}",
                           "holds": all(a < b for _, a, b in pairs),
                           "detail": ", ".join(f"w={k}: {a:+.2f} vs {b:+.2f}" for k, a, b in pairs)})
        for family, per_scale in matched.get(tb, {}).items():
            guided = {k: v for k, v in per_scale.items() if float(k) > 1}
            if not guided:
                continue
            savings = [v["best_saving"] for v in guided.values()]
            claims.append({"testbed": tb,
                           "holds": all(x is not None and x >= cfg.min_saving - 1e-9 for x in savings),
                           "detail": ", ".join(f"w={k}: {_best_setting(v)}" for k, v in guided.items()),
                           "claim": f"{family} saves >= {100 * cfg.min_saving:.0f}% of evaluations at swd within "
                                    f"{cfg.swd_tolerance} of {baseline}"})
    return claims


def _best_setting(v: dict) -> str:
    """A family's best setting at one scale, as the claims' detail gives it."""
    if not v["best_setting"]:
        return "no setting within tolerance"
    return f"{100 * v['best_saving']:.0f}% ({v['best_setting']})"


# -- outputs -----------------------------------------------------------------------------------------
def report(m: dict, rows: list[MethodSweep]) -> str:
    setup = m["setup"]
    s = setup["sampler"]
    batching = "one batch" if not s["chunk"] else f"batches of {s['chunk']}"
    lines = [
        "# bench-guiders: every guider on the Gaussian-mixture testbed", "",
        f"{s['scheduler']}, {s['steps']} steps, {s['samples']} samples asked for class {s['label']} "
        f"({batching}). swd: sliced Wasserstein distance "
        "to exact samples of the true conditional (lower is better); precision and coverage in [0, 1]; "
        "overshoot: mean distance past the class mode in component stds (0 for the truth); NFE: model "
        "evaluations per sample (CFG = 2 x steps). Autoguidance's weak model: the mixture with component "
        f"stds x {setup['weak_std_factor']}.", "",
    ]
    for tb, res in m["testbeds"].items():
        ref = res["reference"]
        info = setup["testbeds"][tb]
        lines += [f"## Testbed {tb} ({info['dim']}-D, {info['classes']} classes x {info['per_class']} components)",
                  "", f"Exact samples vs the reference (the noise floor): swd {ref['swd']:.3f}, precision "
                  f"{ref['precision']:.3f}, coverage {ref['coverage']:.2f}, overshoot {ref['overshoot']:+.3f}.", ""]
        table = []
        for label, entry in res["methods"].items():
            if "error" in entry:
                table.append([label, "-", "cannot run here: " + entry["error"], "", "", "", ""])
            for key, v in entry["scales"].items():
                scores = [v["swd"], v["precision"], v["coverage"], f"{v['overshoot']:+.3f}", f"{v['nfe']:g}"]
                table.append([label, key, *scores])
        lines += [markdown_table(["method", "scale", "swd", "precision", "coverage", "overshoot", "NFE"], table), ""]
        for title, why in (("Not applicable here", res["not_applicable"]), ("Not run", res["not_run"])):
            if why:
                lines += [f"{title}: " + "; ".join(f"{k}: {v}" for k, v in why.items()), ""]
        lines += matched_table(m["matched_quality"].get(tb, {}), setup)
    lines += ["## Claims", ""]
    for c in m["claims"]:
        verdict = "holds" if c["holds"] else "does not hold"
        lines.append(f"- [{c['testbed']}] **{verdict}**: {c['claim']} ({c['detail']})")
    return "\n".join(lines) + "\n"


def matched_table(families: dict, setup: dict) -> list[str]:
    if not families:
        return []
    rows = []
    for family, per_scale in families.items():
        for key, v in per_scale.items():
            for label, s in v["settings"].items():
                to_base = "-" if s["swd_to_baseline"] is None else f"{s['swd_to_baseline']:.3f}"
                saved = f"{100 * s['saving']:.0f}%"
                rows.append([family, key, label, saved, s["swd"], s["baseline_swd"], yes_no(s["matched"]), to_base])
    base = setup["baseline"]
    header = ["family", "scale", "setting", "NFE saved", "swd", f"{base} swd", "matched", f"swd to {base} samples"]
    return [f"Matched quality (swd within {setup['swd_tolerance']} of {base} at the same scale):", "",
            markdown_table(header, rows), ""]


def _clip_to_baseline(ax_swd, ax_over, base: dict | None) -> None:
    """Keep the axes on the range that matters: up to 1.6x the baseline's worst value (a method far
    off, such as beta at a mismatched scale, leaves the chart rather than squashing every other line)."""
    if not base or not base["scales"]:
        return
    values = list(base["scales"].values())
    ax_swd.set_ylim(0.0, 1.6 * max(v["swd"] for v in values))
    top = max(v["overshoot"] for v in values)
    ax_over.set_ylim(-0.6 * abs(top) - 0.2, 1.6 * abs(top) + 0.2)


def plot(path, m: dict, rows: list[MethodSweep], baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    testbeds = list(m["testbeds"])
    fig, axes = plt.subplots(len(testbeds), 3, figsize=(16, 4.6 * len(testbeds)), squeeze=False)
    labels = [row_label(r) for r in rows]
    colors = plt.get_cmap("tab20")
    for r, tb in enumerate(testbeds):
        res = m["testbeds"][tb]["methods"]
        ax_swd, ax_over, ax_nfe = axes[r]
        for i, label in enumerate(labels):
            if label not in res:
                continue
            scales = res[label]["scales"]
            xs = [float(k) for k in scales]
            scale_of = 10.0 if res[label]["guider"].get("name") == "cfg++" else 1.0
            name = label + (" (x = 10 lambda)" if scale_of != 1.0 else "")
            style = {"color": colors(i % 20), "marker": "o", "ms": 3, "lw": 2.2 if label == baseline else 1.0}
            ax_swd.plot([x * scale_of for x in xs], [v["swd"] for v in scales.values()], label=name, **style)
            ax_over.plot([x * scale_of for x in xs], [v["overshoot"] for v in scales.values()], **style)
            family = next((rw.family for rw in rows if row_label(rw) == label), None)
            if family or label == baseline:
                nfe, swd = [v["nfe"] for v in scales.values()], [v["swd"] for v in scales.values()]
                ax_nfe.scatter(nfe, swd, color=style["color"], s=14, label=label)
        ref = m["testbeds"][tb]["reference"]
        _clip_to_baseline(ax_swd, ax_over, res.get(baseline))
        ax_swd.axhline(ref["swd"], color="grey", ls=":", lw=1)
        ax_over.axhline(0.0, color="grey", ls=":", lw=1)
        ax_swd.set(title=f"{tb}: swd to the true conditional", xlabel="scale", ylabel="swd")
        ax_over.set(title=f"{tb}: overshoot (component stds)", xlabel="scale", ylabel="overshoot")
        ax_nfe.set(title=f"{tb}: quality vs cost (pass-saving methods)", xlabel="NFE per sample", ylabel="swd")
        ax_nfe.legend(fontsize=6)
        if r == 0:
            ax_swd.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


@register_recipe("bench-guiders", BenchGuidersConfig, check=check_bench_guiders)
def run_bench_guiders(cfg: BenchGuidersConfig, run: RunContext) -> dict:
    """Benchmark: every guider on the mixture testbed over a scale sweep; table, plot and claims."""
    check_bench_guiders(cfg)
    failed_imports = load_guider_modules()
    rows, not_applicable, not_run = plan(cfg)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for tb in cfg.testbeds:
        results[tb.name] = run_testbed(tb, rows, cfg, run)
        results[tb.name].update(not_applicable=not_applicable, not_run=not_run)
    baseline = cfg.baseline
    matched = {name: matched_quality(res["methods"], rows, baseline, cfg) for name, res in results.items()}
    claims = check_claims(results, matched, rows, baseline, cfg)
    metrics = {
        "setup": {"sampler": dict(cfg.sampler.__dict__), "axes": cfg.axes, "seed": cfg.seed,
                  "weak_std_factor": cfg.weak_std_factor, "swd_tolerance": cfg.swd_tolerance,
                  "min_saving": cfg.min_saving, "high_scales": cfg.high_scales, "baseline": baseline,
                  "testbeds": {tb.name: dict(tb.__dict__) for tb in cfg.testbeds}},
        "testbeds": results,
        "matched_quality": matched,
        "claims": claims,
        "failed_imports": failed_imports,
        "seconds": time.perf_counter() - start,
    }
    run.write_text("table.md", report(metrics, rows))
    with run.atomic("plot.png") as tmp:
        plot(tmp, metrics, rows, baseline)
    for claim in claims:
        run.log(f"{'HOLDS ' if claim['holds'] else 'FAILS '} [{claim['testbed']}] {claim['claim']}: {claim['detail']}")
    run.log(f"bench-guiders done in {metrics['seconds']:.0f} s")
    return metrics
