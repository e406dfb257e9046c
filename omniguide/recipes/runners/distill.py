"""``kind: distill`` -- score distillation (schema and registry slot only, for now).

The objectives (SDS, CSD, NFSD, VSD, ASD) come with a later issue and register themselves in
:data:`omniguide.recipes.registry.OBJECTIVES`; until one is registered, validating or running a
distill recipe fails with one clear line instead of pretending to work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..registry import OBJECTIVES, register_recipe
from ..run import RunContext
from ..schema import TrainerConfig, option


@dataclass
class DistillConfig:
    """Optimise a scene so that a frozen prior's guided score is satisfied from every view."""

    objective: dict[str, Any] = field(default_factory=lambda: {"name": "sds"})
    prior: dict[str, Any] = field(default_factory=dict)          # the frozen diffusion model
    scene: dict[str, Any] = field(default_factory=dict)          # the trainable representation
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg", "scale": 7.5})
    prompt: str = ""
    lr: float = option(1e-2, gt=0)
    seed: int = 0
    checkpoint_every: int = option(100, ge=1)
    resume: str = "auto"
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=1000))


def check_distill(cfg: DistillConfig) -> None:
    """The objective must be registered; the guider and trainer must be valid."""
    from ..components import make_guider
    from ..runtime import check_trainer

    if not OBJECTIVES.names():
        raise errors.ConfigError("objective.name", "no distillation objectives are registered yet "
                          "(score distillation arrives with omniguide.distillation)")
    OBJECTIVES.get(cfg.objective.get("name"), "objective.name")
    make_guider(cfg.guider, "guider")
    check_trainer(cfg.trainer)


@register_recipe("distill", DistillConfig, check=check_distill)
def run_distill(cfg: DistillConfig, run: RunContext) -> dict | None:
    """Score distillation of a scene from a guided prior (needs a registered objective)."""
    check_distill(cfg)
    raise errors.ConfigError("kind", "distill recipes have no runner yet; an objective registered without a runner "
                      "cannot be trained")
