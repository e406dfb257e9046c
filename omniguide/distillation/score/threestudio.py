"""A bridge to threestudio: every omniguide objective as a threestudio guidance module.

When threestudio is importable, importing this module registers ``omniguide-<objective>``
(``omniguide-sds``, ``omniguide-csd``, ``omniguide-nfsd``, ``omniguide-vsd``, ``omniguide-asd``,
``omniguide-ism``, ``omniguide-sds-bridge``, ``omniguide-rfds``) with ``threestudio.register``. A
threestudio extension folder (``custom/threestudio-omniguide/__init__.py``) needs one line:

    import omniguide.distillation.score.threestudio  # noqa: F401

and a config then says (threestudio's ``dreamfusion-sd.yaml`` with the guidance swapped):

    system:
      guidance_type: omniguide-asd
      guidance:
        pretrained_model_name_or_path: stabilityai/stable-diffusion-2-1-base   # any diffusers SD/SD3 folder
        guider: {name: cfg, scale: 7.5}          # any omniguide guider; note CFG's u + w(c - u) convention
        objective: {gamma: -0.75, weighting: sigma2, estimator: lora}
        trainer_max_steps: 25000                  # progress = global_step / trainer_max_steps
      loss: {lambda_sds: 1.0}

The module follows threestudio's guidance convention (``threestudio/models/guidance/*``): a
``BaseObject`` with a nested ``Config`` dataclass, ``__call__(rgb [B, H, W, 3], prompt_utils,
elevation, azimuth, camera_distances, rgb_as_latents=False, **kwargs)`` returning a dict whose
``loss_sds`` threestudio's systems weigh by ``lambda_sds``, plus ``grad_norm``, ``min_step``,
``max_step`` and the objective's own terms, and ``update_step(epoch, global_step)``. The
conditional and unconditional text embeddings come from threestudio's prompt processor
(``prompt_utils.get_text_embeddings``, view-dependent when enabled); objectives with extra prompts
(NFSD's negative, SDS-bridge's source and target) encode them once with the pipeline's encoder.
VSD/ASD train their estimator inside the call with its own optimizer (threestudio's optimizer
never sees it). Without threestudio nothing is registered and nothing fails.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.guider import NOISE_LEVEL, PROGRESS, SAMPLE, check_requirements
from ...core.registry import build_guider
from ..priors import load_pipeline as load_folder
from ..priors import prior_from_pipeline
from ..registry import OBJECTIVES, build_objective
from .estimators import Estimator
from .objectives.base import Context, Draws

PREFIX = "omniguide-"


def load_pipeline(path: str, pipeline_class: str = "auto", dtype: torch.dtype = torch.float32):
    """A local pipeline folder (:func:`omniguide.distillation.priors.load_pipeline`), or
    ``module:Class.from_pretrained(path)`` for a class given by name (and for hub ids)."""
    from pathlib import Path

    if pipeline_class == "auto":
        if (Path(path) / "model_index.json").is_file():
            return load_folder(path, dtype, "guidance.pretrained_model_name_or_path")
        from diffusers import DiffusionPipeline

        cls = DiffusionPipeline
    else:
        module, _, name = pipeline_class.partition(":")
        cls = getattr(importlib.import_module(module), name)
    pipe = cls.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guidance_class(threestudio: Any, objective_name: str) -> type:
    """A threestudio guidance class for ``objective_name`` built on ``threestudio.utils.base.BaseObject``."""
    base = threestudio.utils.base.BaseObject

    @dataclass
    class Config(base.Config):
        pretrained_model_name_or_path: str = ""
        pipeline_class: str = "auto"
        half_precision_weights: bool = False
        guider: dict = field(default_factory=lambda: {"name": "cfg", "scale": 7.5})
        objective: dict = field(default_factory=dict)
        trainer_max_steps: int = 25000
        view_dependent_prompting: bool = True
        prompt: str = ""                       # for objectives with extra prompts ({prompt} is replaced)
        seed: int = 0

    class OmniguideGuidance(base):
        __doc__ = f"omniguide's '{objective_name}' objective as a threestudio guidance module."

        def configure(self) -> None:
            cfg = self.cfg
            dtype = torch.float16 if cfg.half_precision_weights else torch.float32
            pipe = load_pipeline(cfg.pretrained_model_name_or_path, cfg.pipeline_class, dtype)
            self.prior = prior_from_pipeline(pipe, cfg.pretrained_model_name_or_path).to(self.device)
            self.objective = build_objective({"name": objective_name, **dict(cfg.objective)}, "guidance.objective")
            self.objective.check_prior(self.prior, "guidance.objective")
            self.guider = build_guider(dict(cfg.guider), "guidance.guider")
            check_requirements(self.guider, (PROGRESS, SAMPLE, NOISE_LEVEL), "score distillation")
            self.extra = self.prior.encode_prompts({name: [text.format(prompt=cfg.prompt)] for name, text in
                                                    self.objective.prompt_sets(cfg.prompt).items()})
            self.estimator = None
            if getattr(self.objective, "estimator", None) in ("copy", "lora"):
                self.estimator = Estimator(self.prior, self.objective.estimator,
                                           getattr(self.objective, "lora_rank", 4)).to(self.device)
                self.estimator_optimizer = torch.optim.AdamW(self.estimator.trainable(),
                                                             lr=self.objective.estimator_lr)
            self.progress, self.global_step = 0.0, 0

        def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
            self.global_step = global_step
            self.progress = min(1.0, global_step / max(1, self.cfg.trainer_max_steps))

        def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances, rgb_as_latents: bool = False,
                     **kwargs) -> dict:
            images = rgb.permute(0, 3, 1, 2)
            x = images if rgb_as_latents else self.prior.encode_image(images)
            b = x.shape[0]
            emb = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                   self.cfg.view_dependent_prompting)
            key = self.prior.text_keyword
            inputs = {"cond": {key: emb[:b]}, "uncond": {key: emb[b:]}}
            for name, enc in self.extra.items():
                inputs[name] = {k: v.expand(b, *v.shape[1:]) for k, v in enc.items()}
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
            ctx = Context(self.prior, self.guider, x, inputs, Draws(gen), self.progress, self.global_step,
                          self.estimator)
            out = self.objective(ctx)
            if out.estimator_loss is not None:
                self.estimator_optimizer.zero_grad(set_to_none=True)
                out.estimator_loss.backward()
                self.estimator_optimizer.step()
            n = self.prior.num_train_timesteps
            from ..schedules import at

            result = {"loss_sds": out.loss, "grad_norm": out.values["grad_norm"],
                      "min_step": int(at(self.objective.t_min, self.progress) * n),
                      "max_step": int(at(self.objective.t_max, self.progress) * n)}
            result.update({f"omniguide/{k}": v for k, v in out.values.items()})
            return result

    OmniguideGuidance.Config = Config
    OmniguideGuidance.__name__ = OmniguideGuidance.__qualname__ = "Omniguide" + "".join(
        p.title() for p in objective_name.split("-")) + "Guidance"
    return OmniguideGuidance


def register(threestudio: Any | None = None) -> list[str]:
    """Register every objective with threestudio (imported when not given); returns the names
    registered, or an empty list when threestudio is not installed."""
    if threestudio is None:
        try:
            threestudio = importlib.import_module("threestudio")
            importlib.import_module("threestudio.utils.base")
        except ImportError:
            return []
    from . import objectives  # noqa: F401  (registers the built-in objectives)

    names = []
    for name in OBJECTIVES.names():
        full = PREFIX + name
        if full not in getattr(threestudio, "__modules__", {}):
            threestudio.register(full)(guidance_class(threestudio, name))
        names.append(full)
    return names


REGISTERED = register()
__all__ = ["guidance_class", "register", "REGISTERED"]
