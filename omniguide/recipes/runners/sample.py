"""``kind: sample`` -- guided generation over a prompt list, as a Lightning predict loop.

    kind: sample
    model: {name: mixture}             # or {name: small-denoiser, weights: .../model.safetensors}
    scheduler: {name: ddim}
    guider: {name: cfg, scale: 3}
    prompts: [0, 1, 2, {prompt: 0, seed: 7, guider: {scale: 5}}]
    trainer: {accelerator: cpu, devices: 2, strategy: ddp}

torch, Lightning and the components are imported inside the functions: importing this module
(``omniguide show`` imports every runner) only defines the schema.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import errors
from ..config import merge_component
from ..registry import register_recipe
from ..run import RunContext
from ..schema import TrainerConfig, option

if TYPE_CHECKING:
    import torch

    from ..predict import Item


@dataclass
class SampleConfig:
    """Generation over a prompt list."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "mixture"})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "ddim"})
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg", "scale": 3.0})
    prompts: list[Any] = field(default_factory=list)
    prompts_file: str | None = option(None, file=True)
    steps: int = option(30, ge=1, le=10_000)
    num_samples: int = option(256, ge=1)       # samples per item (points of the prompt's class)
    seed: int = 0                              # item i uses seed + i unless it sets its own
    progress: bool | None = None               # a bar per item over sampling steps (None: trainer's setting)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def item_settings(cfg: SampleConfig, item: Item) -> tuple[dict, int, int]:
    """The guider config, steps and sample count of one item (recipe values merged with its own)."""
    guider = cfg.guider
    if "guider" in item.overrides:
        own = item.overrides["guider"]
        if not isinstance(own, dict):
            raise errors.ConfigError(f"{item.where}.guider", "expected a mapping")
        guider = merge_component(cfg.guider, own)   # replaced when it names another guider
    steps, n = item.overrides.get("steps", cfg.steps), item.overrides.get("num_samples", cfg.num_samples)
    for key, value in (("steps", steps), ("num_samples", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise errors.ConfigError(f"{item.where}.{key}", f"expected an int >= 1, got {value!r}")
    return guider, steps, n


def check_sample(cfg: SampleConfig) -> None:
    """Build every component and every item's settings without generating anything."""
    from ..components import make_callbacks, make_guider, make_model, make_scheduler
    from ..predict import load_items
    from ..runtime import check_trainer

    scheduler = make_scheduler(cfg.scheduler)
    model = make_model(cfg.model, scheduler)
    make_guider(cfg.guider, "guider")
    for item in load_items(cfg.prompts, cfg.prompts_file, cfg.seed):
        guider, _, _ = item_settings(cfg, item)
        make_guider(guider, f"{item.where}.guider")
        model.label(item.prompt, item.where)
    make_callbacks(cfg.callbacks)
    check_trainer(cfg.trainer)


def generate_item(cfg: SampleConfig, item: Item) -> tuple[torch.Tensor, dict]:
    """One item: its own seed, scheduler and guider, so the result is independent of sharding."""
    import torch

    from ...core.sampler import sample
    from ..components import make_guider, make_model, make_scheduler

    guider_cfg, steps, n = item_settings(cfg, item)
    scheduler = make_scheduler(cfg.scheduler)
    model = make_model(cfg.model, scheduler)
    guider = make_guider(guider_cfg, f"{item.where}.guider")
    label = model.label(item.prompt, item.where)
    gen = torch.Generator().manual_seed(item.seed)
    noise = torch.randn(n, model.dim, generator=gen)
    start = time.perf_counter()
    out = sample(model.denoiser, scheduler, guider, noise, model.branches(label, n), num_steps=steps,
                 parameterization=model.parameterization, generator=gen,
                 progress=cfg.trainer.enable_progress_bar if cfg.progress is None else cfg.progress)
    meta = {"index": item.index, "prompt": item.prompt, "seed": item.seed, "guider": guider_cfg,
            "steps": steps, "num_samples": n, "nfe": out.nfe, "seconds": time.perf_counter() - start,
            **model.evaluate(out.sample, label)}
    return out.sample.float(), meta


@register_recipe("sample", SampleConfig, check=check_sample)
def run_sample(cfg: SampleConfig, run: RunContext) -> dict | None:
    """Generate every prompt with the guider; items/NNNNNN.{pt,json}; resumable, shardable."""
    from ..components import make_callbacks
    from ..predict import Generator, ItemData, ItemStore, ItemWriter, load_items
    from ..runtime import build_trainer

    items = load_items(cfg.prompts, cfg.prompts_file, cfg.seed)
    store = ItemStore(run.dir)
    trainer = build_trainer(cfg.trainer, run, callbacks=[ItemWriter(store), *make_callbacks(cfg.callbacks)],
                            use_distributed_sampler=False)
    run.rank = trainer.global_rank
    done_before = sum(store.done(item.index) for item in items)
    start = time.perf_counter()
    generator = Generator(lambda item, device: generate_item(cfg, item))
    trainer.predict(generator, datamodule=ItemData(items, store), return_predictions=False)
    trainer.strategy.barrier("omniguide-sample-done")
    if not trainer.is_global_zero:
        return None
    metas = store.read_all()
    missing = [item.index for item in items if not store.done(item.index)]
    if missing:
        raise RuntimeError(f"items {missing[:5]} were not written")
    run.log(f"{len(items)} items ({done_before} already done) in {time.perf_counter() - start:.2f}s")
    return {"items": len(items), "skipped": done_before, "world_size": trainer.world_size,
            "accuracy": sum(m["accuracy"] for m in metas) / len(metas),
            "nfe": sum(m["nfe"] for m in metas), "seconds": time.perf_counter() - start}
