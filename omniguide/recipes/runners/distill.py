"""``kind: distill`` -- score distillation of a 3D scene from a frozen 2D prior.

    kind: distill
    prompt: a red cube
    prior: {name: zoo}                                  # or {name: pretrained, path: <diffusers folder>}
    objective: {name: sds, t_max: {values: [0.98, 0.5], progress: [0.5, 0.5]}}
    guider: {name: cfg, scale: 20}
    scene: {type: grid, resolution: 32}
    trainer: {max_steps: 600, devices: 2, strategy: ddp}

Everything is checked before training (``omniguide validate``): the objective and guider configs
(a guider that needs a sampler step index or re-anchoring is refused, naming why), the prior
(prompts it cannot tokenize, render sizes it cannot use), the scene and the cameras. Outputs:
``checkpoints/step-N.ckpt`` (``resume: auto`` continues from the newest), ``scene.ckpt`` (the
final state), ``turntable.mp4`` / ``.gif``, ``mesh.obj`` / ``.glb`` and ``metrics.json`` (IoU,
colour error and view consistency against the primitive the prompt names, when it names one;
seconds per iteration and the time shares of render, prior and update).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import errors
from ..registry import register_recipe
from ..run import RunContext
from ..schema import TrainerConfig, find_file, option

# torch, Lightning and the distillation library are imported inside the functions: importing this
# module (``omniguide show`` imports every runner) only defines the schema.
ZOO = Path(__file__).resolve().parents[2] / "zoo" / "weights"
ZOO_PRIORS = {"v": ZOO / "primitives_prior", "flow": ZOO / "primitives_prior_flow"}
DTYPES = ("float32", "float16", "bfloat16")
EXPORT_FORMATS = {"video": ("mp4", "gif"), "mesh": ("obj", "glb")}   # what scene/export.py writes


@dataclass
class PriorConfig:
    """``name: zoo`` (the zoo's 3D prior; ``prediction: v | flow``: DDPM with v-prediction, or rectified
    flow) or ``name: pretrained`` with ``path`` to a diffusers pipeline folder (SD 1.x/2.x, SD3, the
    zoo's pixel pipeline)."""

    name: str = "zoo"
    prediction: str = option("v", choices=("v", "flow"))
    path: str | None = None
    dtype: str = option("float32", choices=DTYPES)
    encode: dict[str, Any] = field(default_factory=dict)     # extra encode_prompt arguments (max_sequence_length)


@dataclass
class SceneConfig:
    type: str = "grid"
    resolution: int = option(32, ge=2)
    radius: float = option(1.0, gt=0)
    blob_density: float = 5.0
    blob_radius: float = option(0.5, gt=0)


@dataclass
class ViewsConfig:
    enabled: bool = True
    suffix: str = ", {view} view"
    front_threshold: float = option(45.0, ge=0, le=180)
    back_threshold: float = option(45.0, ge=0, le=180)
    overhead_threshold: float = option(60.0, ge=-90, le=90)


@dataclass
class CamerasConfig:
    elevation: list[float] = field(default_factory=lambda: [-10.0, 45.0])
    azimuth: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    distance: list[float] = field(default_factory=lambda: [2.6, 3.0])
    fov: list[float] = field(default_factory=lambda: [38.0, 45.0])
    stratified: bool = True
    views: ViewsConfig = field(default_factory=ViewsConfig)


@dataclass
class ExportConfig:
    video: list[str] = field(default_factory=lambda: ["mp4", "gif"])
    mesh: list[str] = field(default_factory=lambda: ["obj", "glb"])
    frames: int = option(36, ge=1)
    size: int = option(64, ge=8)
    mesh_resolution: int = option(64, ge=8)
    threshold: float = option(5.0, gt=0)


@dataclass
class DistillConfig:
    """Optimise a scene so that a frozen prior's guided score is satisfied from every view."""

    prompt: str = "???"
    negative_prompt: str = ""
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "sds"})
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg", "scale": 7.5})
    prior: PriorConfig = field(default_factory=PriorConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    render_size: int = option(32, ge=4)
    samples: int = option(48, ge=2)
    batch_size: int = option(4, ge=1)             # views per step over all ranks
    lr: float = option(1e-2, gt=0)
    seed: int = 0
    checkpoint_every: int = option(100, ge=1)
    resume: str = "auto"                          # auto | never | path to a .ckpt
    evaluate: Any = option("auto", choices=("auto", "true", "false", True, False))   # YAML's false is a bool
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    export: ExportConfig = field(default_factory=ExportConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=1000))


def build_prior(cfg: PriorConfig):
    import torch

    from ...distillation.priors import load_pipeline, prior_from_pipeline

    if cfg.name == "zoo":
        folder, label = ZOO_PRIORS[cfg.prediction], f"the zoo's 3D prior ({cfg.prediction})"
        if not (folder / "model_index.json").is_file():
            raise errors.ConfigError("prior.name",
                                     f"{folder} is missing; train it with configs/train/primitives_prior.yaml")
    elif cfg.name == "pretrained":
        if not cfg.path:
            raise errors.ConfigError("prior.path", "a pretrained prior needs the path of a diffusers pipeline folder")
        folder = Path(cfg.path) if Path(cfg.path).is_dir() else find_file(str(Path(cfg.path) / "model_index.json"),
                                                                             "prior.path").parent
        label = str(folder)
    else:
        hint = errors.did_you_mean(cfg.name, ("zoo", "pretrained"))
        raise errors.ConfigError("prior.name", f"unknown prior '{cfg.name}'{hint}")
    return prior_from_pipeline(load_pipeline(folder, getattr(torch, cfg.dtype)), label, cfg.encode)


@dataclass
class Built:
    """What a distill recipe builds before training."""

    objective: Any
    guider: Any
    prior: Any
    scene: Any
    background: Any
    cameras: Any
    truth: Any


def truth_for(cfg: DistillConfig):
    """The primitive the prompt names (None when it names none and ``evaluate`` is ``auto``)."""
    if cfg.evaluate in ("false", False):
        return None
    from ...zoo.primitives3d import PrimitiveField, parse_prompt

    try:
        color, shape = parse_prompt(cfg.prompt, "prompt")
    except errors.ConfigError:
        if cfg.evaluate in ("true", True):
            raise
        return None
    return PrimitiveField(shape, color)


def build(cfg: DistillConfig) -> Built:
    """Build and check every component (``omniguide validate`` runs this)."""
    from ...core.guider import NOISE_LEVEL, PROGRESS, SAMPLE, check_requirements
    from ...distillation.score.scene import CameraSampler, RadianceGrid, SolidBackground, ViewPrompts
    from ..builders import make_guider, make_objective

    if not cfg.prompt or cfg.prompt == "???":
        raise errors.ConfigError("prompt", "a distill recipe needs a prompt")
    for key, valid in EXPORT_FORMATS.items():
        for i, fmt in enumerate(getattr(cfg.export, key)):
            if fmt not in valid:
                hint = errors.did_you_mean(fmt, valid)
                raise errors.ConfigError(f"export.{key}.{i}", f"unknown format '{fmt}'{hint}")
    objective = make_objective(cfg.objective, "objective")
    guider = make_guider(cfg.guider, "guider")
    check_requirements(guider, (PROGRESS, SAMPLE, NOISE_LEVEL), "score distillation")
    if cfg.scene.type != "grid":
        raise errors.ConfigError("scene.type", f"unknown representation '{cfg.scene.type}'; valid: grid")
    scene = RadianceGrid(cfg.scene.resolution, cfg.scene.radius, cfg.scene.blob_density, cfg.scene.blob_radius)
    if len(cfg.background) != 3:
        raise errors.ConfigError("background", f"expected an RGB triple, got {list(cfg.background)}")
    views = ViewPrompts(cfg.cameras.views.front_threshold, cfg.cameras.views.back_threshold,
                        cfg.cameras.views.overhead_threshold, cfg.cameras.views.suffix, cfg.cameras.views.enabled)
    c = cfg.cameras
    cameras = CameraSampler(tuple(c.elevation), tuple(c.azimuth), tuple(c.distance), tuple(c.fov), c.stratified, views)
    prior = build_prior(cfg.prior)
    objective.check_prior(prior)
    prior.check_resolution(cfg.render_size, cfg.render_size, "render_size")
    from ...distillation.score.system import DistillSystem

    texts = DistillSystem.prompt_sets_for(cfg.prompt, cfg.negative_prompt, objective, views)
    for name, prompts in texts.items():
        for text in prompts:
            prior.check_prompt(text, "prompt" if name.startswith(("cond", "view:")) else
                               ("negative_prompt" if name == "uncond" else f"objective ({name} prompt)"))
    return Built(objective, guider, prior, scene, SolidBackground(tuple(cfg.background)), cameras, truth_for(cfg))


def check_distill(cfg: DistillConfig) -> None:
    """Build every component and check the trainer settings, without training."""
    from ..components import make_callbacks
    from ..runtime import check_trainer

    check_trainer(cfg.trainer)
    make_callbacks(cfg.callbacks)
    if cfg.trainer.max_steps < 1:
        raise errors.ConfigError("trainer.max_steps",
                                 f"a distill recipe needs max_steps >= 1, got {cfg.trainer.max_steps}")
    if cfg.resume not in ("auto", "never"):
        find_file(cfg.resume, "resume")
    build(cfg)


def make_system(cfg: DistillConfig, built: Built):
    import lightning

    from ...distillation.score.system import DistillSettings, DistillSystem

    lightning.seed_everything(cfg.seed, verbose=False)
    settings = DistillSettings(cfg.prompt, cfg.negative_prompt, cfg.batch_size, cfg.render_size, cfg.samples,
                               cfg.lr, cfg.seed, cfg.trainer.max_steps)
    return DistillSystem(built.scene, built.prior, built.objective, built.guider, built.cameras, settings,
                         built.background)


def export_and_measure(cfg: DistillConfig, system, built: Built, run: RunContext) -> dict:
    """Turntable video, mesh and metrics (rank 0)."""
    from ...distillation.score.metrics import occupancy_iou, view_metrics
    from ...distillation.score.scene.export import extract_mesh, turntable_frames, write_mesh, write_video

    scene = system.scene.eval()
    ex = cfg.export
    out: dict[str, Any] = {}
    if ex.video:
        frames = turntable_frames(scene, ex.frames, ex.size, max(cfg.samples, 64), system.background)
        for fmt in ex.video:
            with run.atomic(f"turntable.{fmt}") as tmp:
                write_video(frames, tmp)
    if ex.mesh:
        try:
            mesh = extract_mesh(scene, ex.mesh_resolution, ex.threshold)
            for fmt in ex.mesh:
                with run.atomic(f"mesh.{fmt}") as tmp:
                    write_mesh(mesh, tmp)
            out["mesh_faces"] = int(len(mesh.faces))
        except errors.ConfigError as err:
            out["mesh_error"] = err.message
            run.log(f"no mesh: {err}")
    if built.truth is not None:
        out["iou"] = occupancy_iou(scene, built.truth, 48, ex.threshold)
        out.update(view_metrics(scene, built.truth, size=cfg.render_size, background=system.background))
    return out


@register_recipe("distill", DistillConfig, check=check_distill)
def run_distill(cfg: DistillConfig, run: RunContext) -> dict | None:
    """Distil a 3D scene from a prior with a score-distillation objective; writes turntable, mesh, metrics."""
    from ..components import make_callbacks
    from ..runtime import check_trainer, fit_checkpointed

    check_trainer(cfg.trainer)
    built = build(cfg)
    system = make_system(cfg, built)
    trainer, ckpt, seconds = fit_checkpointed(cfg, run, system, make_callbacks(cfg.callbacks), "views are")
    if not trainer.is_global_zero:
        return None
    metrics: dict[str, Any] = {"prompt": cfg.prompt, "objective": built.objective.name, "guider": built.guider.name,
                               "steps": trainer.global_step, "world_size": trainer.world_size,
                               "resumed_from": ckpt, "seconds": seconds, **system.timing_summary(),
                               "final": system.last_logs}
    metrics.update(export_and_measure(cfg, system, built, run))
    return metrics

