"""``kind: sample`` -- guided generation over a prompt list, as a Lightning predict loop.

    kind: sample
    model: {name: diffusers, path: omniguide/zoo/weights/shapes}   # or {name: mixture} (the testbed)
    scheduler: {name: dpm++}          # optional: swap the model's scheduler (a pipeline keeps its config)
    guider: {name: apg, scale: 7}
    corrector: {name: fkc, gamma: 3}  # optional, core sampler only: pcg (Langevin) or fkc (SMC)
    negative_prompt: blurry
    prompts: ["a red circle on the left", {prompt: "a blue square", seed: 7, guider: {scale: 5}}]
    trainer: {accelerator: cpu, devices: 2, strategy: ddp}

Each item is written under its global index with the writer of the model's output kind (PNG for
images, WAV for audio, MP4/GIF for video, ``.pt`` for the testbed's points) and a JSON with its
metrics; the run ends with ``metrics.json`` and, for images, a contact sheet.

torch, Lightning and the components are imported inside the functions: importing this module
(``omniguide show`` imports every runner) only defines the schema.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ... import errors
from ..config import merge_component
from ..registry import register_recipe
from ..run import RunContext
from ..schema import TrainerConfig, option

if TYPE_CHECKING:
    from ..predict import Item
    from ..sample_models import ItemSettings

# output kind -> "module:function" summarising a finished run (contact sheets, aggregate metrics)
SUMMARIES = {
    "image": "omniguide.modalities.image.io:summarize",
    "audio": "omniguide.modalities.audio.io:summarize",
    "video": "omniguide.modalities.video.io:summarize",
}


@dataclass
class SampleConfig:
    """Generation over a prompt list."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "mixture"})
    scheduler: dict[str, Any] = field(default_factory=dict)   # empty: the model's own (the testbed: ddim)
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg", "scale": 3.0})
    corrector: dict[str, Any] | None = None    # a sampler option between steps (pcg, fkc); the testbed only
    negative_prompt: str | None = None         # every item's negative prompt unless it sets one
    prompts: list[Any] = field(default_factory=list)
    prompts_file: str | None = option(None, file=True)
    steps: int = option(30, ge=1, le=10_000)
    num_samples: int | None = option(None, ge=1)   # outputs per item (None: the model's default)
    seed: int = 0                              # item i uses seed + i unless it sets its own
    batch: bool = True                         # branches in one forward pass (False: one at a time)
    output: dict[str, Any] = field(default_factory=dict)   # options of the output writer
    progress: bool | None = None               # a bar per item over sampling steps (None: trainer's setting)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def item_settings(cfg: SampleConfig, item: Item, default_samples: int) -> ItemSettings:
    """The guider config, steps, sample count and negative prompt of one item (the recipe's values,
    overridden by the item's own; an item's guider naming another guider replaces the recipe's)."""
    from ..sample_models import ItemSettings

    guider = cfg.guider
    if "guider" in item.overrides:
        own = item.overrides["guider"]
        if not isinstance(own, dict):
            raise errors.ConfigError(f"{item.where}.guider", "expected a mapping")
        guider = merge_component(cfg.guider, own)
    steps = item.overrides.get("steps", cfg.steps)
    n = item.overrides.get("num_samples", cfg.num_samples or default_samples)
    for key, value in (("steps", steps), ("num_samples", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise errors.ConfigError(f"{item.where}.{key}", f"expected an int >= 1, got {value!r}")
    negative = item.overrides.get("negative_prompt", cfg.negative_prompt)
    if negative is not None and not isinstance(negative, str):
        raise errors.ConfigError(f"{item.where}.negative_prompt", f"expected a string, got {negative!r}")
    return ItemSettings(guider, steps, n, negative, cfg.corrector)


def check_sample(cfg: SampleConfig) -> None:
    """Build every component and every item's settings without generating anything."""
    from ...core.correctors import build_corrector
    from ..components import make_callbacks, make_guider, make_sampler
    from ..predict import check_output_options, load_items
    from ..runtime import check_trainer
    from ..sample_models import MixtureSampler

    sampler = make_sampler(cfg.model, cfg.scheduler, cfg.batch)
    make_guider(cfg.guider, "guider")
    check_output_options(getattr(sampler, "kind", "points"), cfg.output)
    if cfg.corrector is not None:
        build_corrector(dict(cfg.corrector), "corrector")
        if not isinstance(sampler, MixtureSampler):
            raise errors.ConfigError("corrector", "correctors act between the core sampler's steps; a diffusers "
                                     "pipeline runs its own loop (use model: {name: mixture} or sample())")
    for item in load_items(cfg.prompts, cfg.prompts_file, cfg.seed):
        settings = item_settings(cfg, item, sampler.default_samples)
        where = f"{item.where}.guider" if "guider" in item.overrides else "guider"
        guider = make_guider(settings.guider, where)
        if hasattr(sampler, "check_guider"):   # what the guider needs of the model (PAG's layers)
            sampler.check_guider(guider, where)
        sampler.check_item(item)
    make_callbacks(cfg.callbacks)
    check_trainer(cfg.trainer)


@register_recipe("sample", SampleConfig, check=check_sample)
def run_sample(cfg: SampleConfig, run: RunContext) -> dict | None:
    """Generate every prompt with the guider; items/NNNNNN.*; resumable, shardable."""
    from ..components import make_callbacks, make_sampler
    from ..predict import Generator, ItemData, ItemStore, ItemWriter, load_items
    from ..runtime import build_trainer

    items = load_items(cfg.prompts, cfg.prompts_file, cfg.seed)
    store = ItemStore(run.dir, cfg.output)
    sampler = make_sampler(cfg.model, cfg.scheduler, cfg.batch)
    trainer = build_trainer(cfg.trainer, run, callbacks=[ItemWriter(store), *make_callbacks(cfg.callbacks)],
                            use_distributed_sampler=False)
    run.rank = trainer.global_rank
    done_before = sum(store.done(item.index) for item in items)
    progress = cfg.trainer.enable_progress_bar if cfg.progress is None else cfg.progress
    start = time.perf_counter()

    def generate(item: Item, device):
        began = time.perf_counter()
        settings = item_settings(cfg, item, sampler.default_samples)
        generated = sampler.generate(item, settings, device, progress)
        generated.meta = {"index": item.index, "prompt": item.prompt, "seed": item.seed, "guider": settings.guider,
                          "steps": settings.steps, "num_samples": settings.num_samples,
                          **({"negative_prompt": settings.negative_prompt} if settings.negative_prompt else {}),
                          **generated.meta, "seconds": time.perf_counter() - began}
        return generated

    trainer.predict(Generator(generate), datamodule=ItemData(items, store), return_predictions=False)
    trainer.strategy.barrier("omniguide-sample-done")
    if not trainer.is_global_zero:
        return None
    missing = [item.index for item in items if not store.done(item.index)]
    if missing:
        raise RuntimeError(f"items {missing[:5]} were not written")
    metas = store.read_all()
    run.log(f"{len(items)} items ({done_before} already done) in {time.perf_counter() - start:.2f}s")
    metrics = {"items": len(items), "skipped": done_before, "world_size": trainer.world_size,
               **aggregate(metas), "seconds": time.perf_counter() - start}
    kind = metas[0].get("kind", "points") if metas else "points"
    if kind in SUMMARIES:
        module, _, attr = SUMMARIES[kind].partition(":")
        metrics.update(getattr(importlib.import_module(module), attr)(run.dir, metas, cfg.output) or {})
    return metrics


def aggregate(metas: list[dict]) -> dict:
    """Totals of the work (nfe, forward passes) and means of every other numeric per-item metric."""
    skip = {"index", "prompt", "seed", "steps", "num_samples", "seconds", "rate"}
    out: dict[str, float] = {}
    for key in ("nfe", "forward_passes"):
        if metas and all(key in m for m in metas):
            out[key] = sum(m[key] for m in metas)
    numeric = {k for m in metas for k, v in m.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip and k not in out}
    for key in sorted(numeric):
        values = [m[key] for m in metas if key in m]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(values) / len(values)
    return out
