"""Benchmark (issue 7): every guider on the small image model, through the pipeline adapter.

For each guider and scale it generates the same prompts with the same seeds through
``guide(pipe, guider)`` and measures, per row:

* ``accuracy`` (colour, shape and position all right) and per attribute, from the analytic scorer;
* ``diversity``: mean RMS pixel distance between the images of one prompt across seeds;
* saturation: ``chroma`` (mean max-min over RGB), ``clipped`` (share of channel values at 0 or 1);
* ``nfe`` (branch evaluations per image) and ``images_per_s`` (wall time of the pipeline calls).

Then the adapter's overhead: the bare pipeline with its own CFG and ``guide(pipe, CFG(s))`` at the
same NFE, timed interleaved in the same run (ratio of medians; target under 1.05 on CPU).
Writes ``metrics.json`` and ``table.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.schema import build_dataclass, option
from . import kit
from .guiders import MethodSweep, guider_config, guider_names, row_label

if TYPE_CHECKING:   # torch, the modalities and the components are imported inside the functions
    from torch import Tensor

    from ..recipes.sample_models import PipelineSampler


@dataclass
class Overhead:
    """The adapter's overhead over the bare pipeline at the same NFE (CFG at ``scale``)."""

    scale: float = 5.0
    warmup: int = 1
    repeats: int = 6


@dataclass
class BenchImageConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "diffusers", "path": "???"})
    scorer: str = "shapes"
    prompts: list[str] = field(default_factory=list)     # empty: the scorer's prompt set of num_prompts
    num_prompts: int = option(32, ge=1)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = option(30, ge=1)
    methods: list[MethodSweep] = field(default_factory=list)
    overhead: Overhead = field(default_factory=Overhead)
    threads: int = option(0, ge=0)
    # registered guiders that no row names and whose needs the model meets: run at these scales
    # (empty: the report names them)
    unlisted_scales: list[float] = field(default_factory=list)


def unlisted(cfg: BenchImageConfig) -> tuple[list[MethodSweep], list[str]]:
    """Rows for the registered guiders that no row names and whose declared needs the model meets
    (it has every module kind a method perturbs, :data:`omniguide.core.needs.MODULES`) at
    ``unlisted_scales``, and the names of those left out (all of them when no scales are given; those that need
    settings to build)."""
    from ..core.needs import MODULES
    from ..core.registry import guiders_served
    from ..modalities.base import load_families

    kit.load_guider_modules()
    load_families()     # the modalities register their guiders
    named = {n for sweep in cfg.methods for n in guider_names(sweep.guider)}
    rows, left_out = [], []
    for name in guiders_served(MODULES):
        sweep = MethodSweep(guider={"name": name}, scales=list(cfg.unlisted_scales))
        if name not in named and cfg.unlisted_scales and _builds(sweep):
            rows.append(sweep)
        elif name not in named:
            left_out.append(name)
    return rows, left_out


def _builds(sweep: MethodSweep) -> bool:
    """Whether every setting of ``sweep`` builds (a wrapper needs the guider it wraps; the swept key
    must be a field)."""
    from ..recipes.components import make_guider

    try:
        for value in sweep.scales:
            make_guider(guider_config(sweep, value))
    except errors.ConfigError:
        return False
    return True


def image_scorer(name: str) -> Any:
    """The output scorer ``name`` (the one registry of them) if it scores images: its
    ``score_images(images in [0, 1], prompts) -> {metric: value}`` and ``prompts(n, seed)`` (a default
    prompt set) are what the bench calls."""
    from ..recipes.sample_models import output_scorers

    registry = output_scorers()
    scorer = registry.get(name, "scorer")
    if not (hasattr(scorer, "score_images") and hasattr(scorer, "prompts")):
        valid = [n for n in registry.names() if hasattr(registry.get(n), "score_images")]
        raise errors.ConfigError("scorer", f"'{name}' scores no images (no score_images / prompts); image scorers: "
                                 f"{', '.join(valid)}")
    return scorer


def check_bench_image(cfg: BenchImageConfig) -> PipelineSampler:
    from ..recipes.components import DiffusersModel, make_guider

    image_scorer(cfg.scorer)
    if not cfg.seeds:
        raise errors.ConfigError("seeds", "empty; give at least one seed")
    labels = [row_label(m) for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise errors.ConfigError("methods", f"two rows share a label ({labels}); give 'label' to tell them apart")
    for i, sweep in enumerate(cfg.methods):
        if not sweep.scales:
            raise errors.ConfigError(f"methods.{i}.scales", "empty")
        for value in sweep.scales:
            make_guider(guider_config(sweep, value), f"methods.{i}.guider")
    model = build_dataclass(DiffusersModel, cfg.model, "model")
    return model.sampler({}, True, "model")


def generate(pipe, family, guider, prompts: list[str], seed: int, steps: int) -> tuple[Tensor, int, float]:
    """The images of ``prompts`` (one each) with ``guider`` and ``seed``; NFE per image and seconds."""
    import torch

    from ..modalities.base import guide

    start = time.perf_counter()
    with guide(pipe, guider) as handle:
        result = pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                      **family.output_kwargs)
    seconds = time.perf_counter() - start
    images, _ = family.read_output(pipe, result)
    return images.float().cpu(), handle.nfe, seconds


def measure_row(pipe, family, guider_cfg: dict, prompts: list[str], cfg: BenchImageConfig, score,
                steps: int | None = None) -> dict:
    import torch

    from ..modalities.image.io import diversity, pixel_stats
    from ..recipes.components import make_guider

    per_seed, nfe, seconds = [], 0, 0.0
    for seed in cfg.seeds:
        images, n, s = generate(pipe, family, make_guider(guider_cfg), prompts, seed, steps or cfg.steps)
        per_seed.append(images)
        nfe, seconds = nfe + n, seconds + s
    images = torch.cat(per_seed)
    row = dict(score(images, prompts * len(cfg.seeds)))
    row.update(pixel_stats(images))
    if len(per_seed) > 1:
        stacked = torch.stack(per_seed, dim=1)             # [prompts, seeds, 3, H, W]
        row["diversity"] = sum(diversity(group) for group in stacked) / len(prompts)
    row["nfe"] = nfe / len(cfg.seeds)                      # per image: a batch's images share each pass
    row["images_per_s"] = images.shape[0] / seconds
    return row


def overhead(pipe, family, prompts: list[str], cfg: BenchImageConfig) -> dict:
    """Bare pipeline CFG vs guide(pipe, CFG) at the same NFE, interleaved rounds, ratio of medians."""
    import torch

    from ..core.methods import CFG
    from ..modalities.base import guide

    scale, steps = cfg.overhead.scale, cfg.steps

    def bare():
        pipe(prompts, num_inference_steps=steps, guidance_scale=scale, generator=torch.Generator().manual_seed(0),
             **family.output_kwargs)

    def adapted():
        with guide(pipe, CFG(scale=scale)):
            pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 **family.output_kwargs)

    times = kit.interleaved({"bare": bare, "guide": adapted}, torch.device("cpu"),
                                 cfg.overhead.warmup, cfg.overhead.repeats)
    return {"bare": kit.summary(times["bare"]), "guide": kit.summary(times["guide"]),
            "ratio": kit.median_ratio(times["guide"], times["bare"]), "target": 1.05}


@register_recipe("bench-image-guiders", BenchImageConfig, check=check_bench_image)
def run_bench_image(cfg: BenchImageConfig, run: RunContext) -> dict:
    """Every guider on the small image model through guide(): accuracy, diversity, saturation, NFE."""
    import torch

    sampler = check_bench_image(cfg)
    scorer = image_scorer(cfg.scorer)
    score_fn = scorer.score_images
    prompts = list(cfg.prompts) or scorer.prompts(cfg.num_prompts, 0)
    with kit.torch_threads(cfg.threads), torch.inference_mode():
        pipe = sampler.pipeline(torch.device("cpu"))
        rows: dict[str, dict[str, Any]] = {}
        extra, left_out = unlisted(cfg)
        for sweep in [*cfg.methods, *extra]:
            label = row_label(sweep)
            for value in sweep.scales:
                row = measure_row(pipe, sampler.family, guider_config(sweep, value), prompts, cfg, score_fn,
                                  sweep.steps)
                rows[f"{label} {sweep.key}={value:g}"] = {"label": label, "scale": value,
                                                         "steps": sweep.steps or cfg.steps, **row}
                run.log(f"{label} {sweep.key}={value:g}: accuracy {row['accuracy']:.2f} "
                        f"chroma {row['chroma']:.3f} clipped {row['clipped']:.3f} nfe {row['nfe']:.0f}")
        cost = overhead(pipe, sampler.family, prompts, cfg)
    run.log(f"adapter overhead: guide/bare = {cost['ratio']:.3f} (target <= 1.05)")
    env = kit.environment(torch.device("cpu"), torch.float32)
    table = report(rows, cost, env, cfg, len(prompts))
    if left_out:
        table += f"Not listed, not run (give unlisted_scales to run them): {', '.join(left_out)}\n"
    run.write_text("table.md", table)
    return {"rows": rows, "overhead": cost, "environment": env, "prompts": len(prompts), "seeds": cfg.seeds,
            "steps": cfg.steps, "not_listed": left_out}


def report(rows: dict, cost: dict, env: dict, cfg: BenchImageConfig, prompts: int) -> str:
    attributes = [k for k in ("colour", "shape", "position") if any(k in r for r in rows.values())]
    header = ["guider", "scale", "steps", "accuracy", *attributes, "diversity", "chroma", "clipped", "NFE/image",
              "images/s"]
    table = [[r["label"], f"{r['scale']:g}", str(r["steps"]), f"{r['accuracy']:.3f}",
              *(f"{r[a]:.3f}" for a in attributes),
              f"{r.get('diversity', float('nan')):.3f}", f"{r['chroma']:.3f}", f"{r['clipped']:.3f}",
              f"{r['nfe']:.0f}", f"{r['images_per_s']:.1f}"] for r in rows.values()]
    return "\n".join([
        f"# Guiders on the small image model ({prompts} prompts x {len(cfg.seeds)} seeds, {cfg.steps} steps)",
        "", kit.markdown_table(header, table), "",
        f"Adapter overhead at equal NFE (CFG {cfg.overhead.scale:g}): "
        f"guide/bare = {cost['ratio']:.3f} (median {cost['guide']['median_ms']:.0f} ms vs "
        f"{cost['bare']['median_ms']:.0f} ms, {cfg.overhead.repeats} interleaved rounds; target <= 1.05)",
        "", f"Environment: {env}", "",
    ])
