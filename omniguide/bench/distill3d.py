"""``kind: bench-distill3d`` -- every objective (and SDS under several guiders) on the same prompts
at the same budget, measured against the true primitives.

    omniguide run configs/bench/distill3d.yaml

Each variant is a ``distill`` recipe (``base`` merged with the variant's fields and the prompt),
run in-process into ``<run>/<label>/<prompt>/``. The report (``metrics.json`` and ``table.md``)
gives per variant, averaged over the prompts: occupancy IoU against the true primitive, colour
error, view consistency, seconds per iteration, and the time shares of render, prior, update and
trainer overhead (the target is under 5% of an iteration).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.runners.distill import DistillConfig, build, run_distill
from ..recipes.schema import build_dataclass
from .kit import markdown_table

COLUMNS = ("iou", "color_error", "view_consistency", "silhouette_iou", "seconds_per_iteration", "render_share",
           "prior_share", "update_share", "overhead_share")


@dataclass
class BenchDistillConfig:
    """Variants of a distill recipe on fixed prompts at a fixed budget."""

    prompts: list[str] = field(default_factory=lambda: ["a red cube", "a blue sphere"])
    base: dict[str, Any] = field(default_factory=dict)               # distill recipe fields shared by all
    variants: list[dict[str, Any]] = field(default_factory=list)     # {label, objective, guider, ...}
    only: list[str] = field(default_factory=list)                    # run these labels only (all when empty)


def variant_configs(cfg: BenchDistillConfig) -> list[tuple[str, str, DistillConfig]]:
    """``(label, prompt, distill config)`` for every variant and prompt."""
    if not cfg.variants:
        raise errors.ConfigError("variants", "a bench needs at least one variant")
    labels = [v.get("label") for v in cfg.variants]
    unknown = [name for name in cfg.only if name not in labels]
    if unknown:
        raise errors.ConfigError("only", f"no variant labelled {unknown[0]!r}; labels: {', '.join(map(str, labels))}")
    out, seen = [], set()
    for i, variant in enumerate(cfg.variants):
        variant = dict(variant)
        label = variant.pop("label", None)
        if not label or label in seen:
            raise errors.ConfigError(f"variants.{i}.label", f"each variant needs a unique label, got {label!r}")
        seen.add(label)
        if cfg.only and label not in cfg.only:
            continue
        for prompt in cfg.prompts:
            merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(cfg.base)),
                                                            OmegaConf.create(variant), {"prompt": prompt}))
            merged.pop("kind", None)
            out.append((label, prompt, build_dataclass(DistillConfig, merged, f"variants.{i}", skip=())))
    return out


def missing_prior(distill: DistillConfig) -> str | None:
    """Why a variant cannot run here: its zoo prior has not been trained (None when it can)."""
    from ..recipes.runners.distill import ZOO_PRIORS

    p = distill.prior
    if p.name == "zoo" and not (ZOO_PRIORS[p.prediction] / "model_index.json").is_file():
        return f"the zoo's {p.prediction} prior is not trained (configs/train/primitives_prior.yaml)"
    return None


def check_bench(cfg: BenchDistillConfig) -> None:
    for label, _, distill in variant_configs(cfg):
        if missing_prior(distill):
            continue
        try:
            build(distill)
        except errors.ConfigError as err:
            raise errors.ConfigError(f"variants[{label}].{err.path}", err.message) from None


def table(rows: dict[str, dict[str, float]]) -> str:
    cells = [[label, *(f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) else "-" for c in COLUMNS)]
             for label, row in rows.items()]
    return markdown_table(["variant", *COLUMNS], cells) + "\n"


@register_recipe("bench-distill3d", BenchDistillConfig, check=check_bench)
def run_bench(cfg: BenchDistillConfig, run: RunContext) -> dict:
    """Every objective and SDS under several guiders at one budget: IoU, colour, consistency, timings."""
    per_run: dict[str, dict[str, dict]] = {}
    skipped: dict[str, str] = {}
    for label, prompt, distill in variant_configs(cfg):
        why = missing_prior(distill)
        if why:
            skipped[label] = why
            run.log(f"{label}: skipped, {why}")
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
        sub = RunContext(run.path(f"{label}/{slug}"), "distill", explicit_dir=True)
        sub.dir.mkdir(parents=True, exist_ok=True)
        run.log(f"{label}: {prompt}")
        metrics = run_distill(distill, sub)
        sub.write_json("metrics.json", metrics)
        per_run.setdefault(label, {})[prompt] = metrics
    summary = {}
    for label, runs in per_run.items():
        row = {}
        for column in COLUMNS:
            values = [m[column] for m in runs.values() if isinstance(m.get(column), (int, float))]
            if values:
                row[column] = sum(values) / len(values)
        summary[label] = row
    run.write_text("table.md", table(summary))
    return {"prompts": cfg.prompts, "summary": summary, "skipped": skipped, "runs": per_run}
