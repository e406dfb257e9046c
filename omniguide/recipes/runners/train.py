"""``kind: train`` -- fit a small zoo model with ``Trainer.fit``; checkpoints every N steps and
``resume: auto`` (continue from the newest complete checkpoint in the run folder).

    kind: train
    model: {name: small-denoiser, hidden: 128, depth: 3}
    data: {classes: 3}
    trainer: {max_steps: 2000}
    checkpoint_every: 500

Resume by running the same recipe into the same folder: ``run.dir=runs/train-...``.
Outputs: ``checkpoints/step-NNNNNN.ckpt``, ``checkpoints/final.ckpt``, ``model.safetensors`` (when
``module.model`` has ``save(path)``), and whatever ``module.save_outputs(run_dir)`` writes when the
module has that method (the shapes model: its ``pipeline/`` folder).

The zoo, torch and Lightning are imported inside the functions: importing this module
(``omniguide show`` imports every runner) only defines the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import errors
from ..registry import Registry, register_listing, register_recipe
from ..run import RunContext
from ..schema import TrainerConfig, find_file, option


def _trainables() -> Registry:
    """`omniguide list trainables`: the zoo's names, without importing the models."""
    from ...zoo.trainables import TRAINABLES

    listed = Registry("trainable model")
    for name in TRAINABLES:
        listed.register(name)(name)
    return listed


register_listing("trainables", _trainables)


@dataclass
class TrainConfig:
    """Fit a model of the zoo on synthetic data."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": "small-denoiser"})
    data: dict[str, Any] = field(default_factory=dict)          # the model's data (mixture ring, shapes ...)
    batch_size: int = option(256, ge=1)                         # global batch, split over ranks
    lr: float = option(1e-3, gt=0)
    weight_decay: float = option(0.0, ge=0)
    cond_dropout: float = option(0.1, ge=0, le=1)
    seed: int = 0
    checkpoint_every: int = option(100, ge=1)                   # steps between checkpoints
    resume: str = "auto"                                        # auto | never | path to a .ckpt
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=1000))


def build_module(cfg: TrainConfig) -> Any:
    """The LightningModule the recipe trains."""
    from ...zoo.trainables import TRAINABLES, trainable

    name = cfg.model.get("name") if isinstance(cfg.model, dict) else None
    if name is None:
        raise errors.ConfigError("model.name", f"missing; one of: {', '.join(TRAINABLES)}")
    build = trainable(name)
    import lightning

    lightning.seed_everything(cfg.seed, verbose=False)   # the initial weights depend on the seed only
    return build(cfg.model, cfg, "model")


def check_train(cfg: TrainConfig) -> None:
    """Build the module, callbacks and trainer settings without training."""
    from ..components import make_callbacks
    from ..runtime import check_trainer, device_count

    build_module(cfg)
    make_callbacks(cfg.callbacks)
    check_trainer(cfg.trainer)
    if cfg.trainer.max_steps < 1:
        raise errors.ConfigError("trainer.max_steps",
                          f"a train recipe needs max_steps >= 1, got {cfg.trainer.max_steps}")
    if cfg.resume not in ("auto", "never"):
        find_file(cfg.resume, "resume")
    processes = device_count(cfg.trainer.devices)
    if processes and cfg.batch_size % (processes * cfg.trainer.num_nodes):
        raise errors.ConfigError("batch_size", f"{cfg.batch_size} is not divisible by the "
                                 f"{processes * cfg.trainer.num_nodes} processes")


@register_recipe("train", TrainConfig, check=check_train)
def run_train(cfg: TrainConfig, run: RunContext) -> dict | None:
    """Train a zoo model; checkpoints/step-N.ckpt every N steps, model.safetensors at the end."""
    from ..components import make_callbacks
    from ..runtime import fit_checkpointed, load_checkpoint

    module = build_module(cfg)
    trainer, ckpt, seconds = fit_checkpointed(cfg, run, module, make_callbacks(cfg.callbacks))
    if not trainer.is_global_zero:
        return None
    save: Callable | None = getattr(module.model, "save", None)
    if save is not None:
        with run.atomic("model.safetensors") as tmp:
            save(tmp)
    save_outputs: Callable | None = getattr(module, "save_outputs", None)   # e.g. a pipeline folder
    if save_outputs is not None:
        save_outputs(run.dir)
    loss = trainer.callback_metrics.get("train/loss")
    if loss is None and ckpt:    # resumed at its last step: the loss the checkpoint recorded
        loss = load_checkpoint(ckpt).get("final_loss")
    return {"steps": trainer.global_step, "final_loss": float(loss) if loss is not None else None,
            "resumed_from": ckpt, "world_size": trainer.world_size, "seconds": seconds}
