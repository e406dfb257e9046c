"""What ``kind: sample`` generates with: a *sample model* turns one item (a prompt, a seed, a
guider) into outputs of one kind -- ``points`` (the testbed), ``image``, ``audio`` or ``video`` --
with per-item metrics. The runner stores the outputs with the writer of their kind.

    model: {name: mixture}                                      # the analytic testbed
    model: {name: small-denoiser, weights: ...}                 # a zoo model trained by `train`
    model: {name: diffusers, path: <folder or model id>}        # any pipeline guide() serves

Models are built once per process (a pipeline is loaded once, not per item); everything an item
sets (seed, guider, steps, negative prompt) is applied per item, so results do not depend on how
items are sharded over ranks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import ConfigError
from .builders import make_guider
from .predict import Item
from .registry import output_scorers

KINDS = ("points", "image", "audio", "video")


@dataclass
class ItemSettings:
    """The settings of one item: the recipe's, overridden by the item's own."""

    guider: dict
    steps: int
    num_samples: int
    negative_prompt: Any = None
    corrector: dict | None = None


@dataclass
class Generated:
    """One item's outputs: ``data`` of ``kind`` (points ``[N, D]``, images ``[N, 3, H, W]`` in [0, 1],
    audio ``[N, C, T]``, video ``[N, F, 3, H, W]`` in [0, 1]), the sample or frame ``rate`` where it
    applies, and the item's metrics."""

    kind: str
    data: Tensor
    meta: dict = field(default_factory=dict)
    rate: int | None = None


# -- the testbed ---------------------------------------------------------------------------------------
class MixtureSampler:
    """The analytic testbed or a small denoiser trained on it: prompts are class labels."""

    kind = "points"
    default_samples = 256

    def __init__(self, model_cfg: Any, scheduler_cfg: dict, batch: bool = True):
        self.model_cfg, self.scheduler_cfg, self.batch = model_cfg, scheduler_cfg or {"name": "ddim"}, batch

    def _model(self, path: str = "model"):
        from .builders import make_scheduler

        scheduler = make_scheduler(self.scheduler_cfg)
        return scheduler, self.model_cfg.build(scheduler, path)

    def check_item(self, item: Item) -> None:
        self._model()[1].label(item.prompt, item.where)
        if item.overrides.get("negative_prompt") is not None:
            raise ConfigError(f"{item.where}.negative_prompt", "the testbed's prompts are class labels; "
                              "it has no negative prompt")

    def generate(self, item: Item, settings: ItemSettings, device: torch.device, progress: bool) -> Generated:
        from ..core.correctors import build_corrector
        from ..core.sampler import sample

        scheduler, model = self._model()
        guider = make_guider(settings.guider, f"{item.where}.guider")
        corrector = build_corrector(settings.corrector)
        label = model.label(item.prompt, item.where)
        gen = torch.Generator().manual_seed(item.seed)
        noise = torch.randn(settings.num_samples, model.dim, generator=gen)
        out = sample(model.denoiser, scheduler, guider, noise, model.branches(label, settings.num_samples),
                     num_steps=settings.steps, parameterization=model.parameterization, generator=gen,
                     progress=progress, batch=self.batch, corrector=corrector)
        meta = {"nfe": out.nfe, **model.evaluate(out.sample, label), **({"report": out.report} if out.report else {})}
        return Generated("points", out.sample.float(), meta)


# -- diffusers pipelines through the adapter --------------------------------------------------------------
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_pipeline_folder(path: str, where: str) -> Path:
    """A local pipeline folder with ``model_index.json`` and every component it lists (config and
    weights for models); or a model id present in the local Hugging Face cache. One-line errors
    name the missing file."""
    from ..io.config import RECIPE_DIRS

    folder = Path(path).expanduser()
    bases = [Path("."), *map(Path, RECIPE_DIRS)] if not folder.is_absolute() else [Path("/")]
    if not folder.exists():   # relative to the recipe file, as weights are
        folder = next((base / folder for base in bases if (base / folder).exists()), folder)
    if not folder.exists():
        local = any((base / folder.parts[0]).is_dir() for base in bases)   # models/sd15: a folder, as ./models/sd15
        if "/" in path and not path.startswith((".", "/", "~")) and not local:
            return _cached_model_id(path, where)
        raise ConfigError(where, f"pipeline folder not found: {path}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(where, f"{folder} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        components = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(where, f"{index}: invalid JSON: {err.msg}") from None
    for name, spec in components.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise ConfigError(where, f"{folder} is incomplete: component '{name}' has no folder {name}/")
        if (sub / "config.json").is_file() and not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            raise ConfigError(where, f"{folder} is incomplete: {name}/ has no weights (*.safetensors or *.bin)")
    return folder


def _cached_model_id(model_id: str, where: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(where, f"'{model_id}' is neither a local folder nor in the local Hugging Face cache, "
                              "and downloads are off (HF_HUB_OFFLINE=1)") from None
        return Path(model_id)   # from_pretrained will download it


def pipeline_class(folder: Path, class_path: str | None, where: str) -> type:
    """The pipeline class: ``class_path`` (``"module:Class"``) or the folder's ``_class_name`` in diffusers."""
    import importlib

    import diffusers

    if class_path:
        module, _, name = class_path.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(where, f"cannot import pipeline class '{class_path}': {err}") from None
    index = folder / "model_index.json"
    name = json.loads(index.read_text())["_class_name"] if index.is_file() else "DiffusionPipeline"
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(where, f"{name} is not a diffusers pipeline class; give pipeline_class: 'module:Class'")
    return cls


class PipelineSampler:
    """A diffusers pipeline driven by :func:`omniguide.guide`; prompts are text."""

    default_samples = 1

    def __init__(self, model_cfg: Any, scheduler_cfg: dict, batch: bool = True, path: str = "model"):
        from ..modalities.base import family_for_class

        self.cfg, self.scheduler_cfg, self.batch, self.path = model_cfg, scheduler_cfg, batch, path
        self.folder = check_pipeline_folder(model_cfg.path, f"{path}.path")
        self.cls = pipeline_class(self.folder, model_cfg.pipeline_class, f"{path}.pipeline_class")
        self.family = family_for_class(self.cls, f"{path}.path")
        self.kind = self.family.modality
        self.scorer = _scorer(model_cfg.scorer, f"{path}.scorer")
        self._pipe = None
        self._check_scheduler()
        self.family.check_frames(model_cfg.call.get("num_frames"), self._component_config, f"{path}.call.num_frames")
        self._check_call(dict(model_cfg.call), f"{path}.call")
        check_rerank(self.scorer, model_cfg.rerank, f"{path}.rerank")

    def check_guider(self, guider: Any, where: str) -> None:
        """The layers a guider perturbs (PAG, NAG, ...) looked up now on the denoiser built from its
        ``config.json`` without weights (on the meta device), so a bad ``layers`` fails at validate."""
        import diffusers

        from ..core.errors import GuidanceError
        from ..core.perturbations import LayerPerturbation

        parts = self.family.parts
        wanted = [p.on(parts[p.part]) if p.layers is None and p.part in parts else p
                  for p in (b.perturbation for b in guider.branch_defaults().values())
                  if isinstance(p, LayerPerturbation)]
        config = self._component_config(self.family.denoiser)
        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if not wanted or cls is None:
            return
        with torch.device("meta"):
            module = cls.from_config(config)
        for perturbation in wanted:
            try:
                perturbation.targets(module)
            except GuidanceError as err:
                raise ConfigError(f"{where}.layers", f"on {cls.__name__}: {err}") from None

    def _check_call(self, call: dict, where: str) -> None:
        """Pipeline arguments the recipe sets itself, or that belong to the guider, are one-line errors."""
        from ..modalities.base import own_guidance

        family = self.family
        recipe = {"num_inference_steps": "steps", family.samples_kwarg: "num_samples", "generator": "seed",
                  "prompt": "prompts", **dict.fromkeys(family.output_kwargs)}
        for key, value in call.items():
            if key in recipe:
                owner = f"; set the recipe's {recipe[key]} instead" if recipe[key] else ""
                raise ConfigError(f"{where}.{key}", f"the recipe sets {key} itself{owner} (got {value!r})")
        if (own := own_guidance(family, call)) is not None:
            raise ConfigError(f"{where}.{own[0]}", own[1])

    def _component_config(self, name: str) -> dict:
        """A component's ``config.json`` in the pipeline folder (no weights loaded)."""
        file = self.folder / name / "config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def _check_scheduler(self) -> None:
        if self.scheduler_cfg:
            from .builders import make_scheduler

            make_scheduler(self.scheduler_cfg)   # names and keys are checked now, applied at load

    def pipeline(self, device: torch.device):
        """The pipeline, loaded once per process onto ``device`` (the model's own, or the rank's)."""
        if self._pipe is None:
            cfg = self.cfg
            pipe = self.cls.from_pretrained(str(self.folder), torch_dtype=DTYPES[cfg.dtype])
            target = device if cfg.device == "auto" else torch.device(cfg.device)
            pipe = pipe.to(target)
            pipe.set_progress_bar_config(disable=True)
            if cfg.attention == "xformers":
                pipe.enable_xformers_memory_efficient_attention()
            if self.scheduler_cfg:
                pipe.scheduler = _swap_scheduler(pipe.scheduler, self.scheduler_cfg)
            self._pipe = pipe
        return self._pipe

    def check_item(self, item: Item) -> None:
        if self.family.item_inputs is not None:
            self.family.item_inputs(item.prompt, item.where)
        elif not isinstance(item.prompt, str) or not item.prompt.strip():
            raise ConfigError(item.where, f"expected a text prompt, got {item.prompt!r}")

    def generate(self, item: Item, settings: ItemSettings, device: torch.device, progress: bool) -> Generated:
        from ..modalities.base import guide

        pipe, family = self.pipeline(device), self.family
        guider = make_guider(settings.guider, f"{item.where}.guider")
        generator = torch.Generator().manual_seed(item.seed)
        start = time.perf_counter()
        first = family.item_inputs(item.prompt, item.where) if family.item_inputs else {"prompt": item.prompt}
        with guide(pipe, guider, negative_prompt=settings.negative_prompt, batch=self.batch) as handle:
            result = pipe(**first, num_inference_steps=settings.steps, generator=generator,
                          **{family.samples_kwarg: settings.num_samples}, **family.output_kwargs, **self.cfg.call)
        data, rate = family.read_output(pipe, result)
        seconds = time.perf_counter() - start
        meta = {"nfe": handle.nfe, "forward_passes": handle.forward_passes, "generate_seconds": seconds}
        if self.kind == "video":
            meta["frames"] = int(data.shape[0] * data.shape[1])
        data, scores = score_outputs(self.scorer, self.cfg.rerank, data.detach().float().cpu(), item.prompt, rate, meta)
        return Generated(self.kind, data, meta, rate)


def _swap_scheduler(current, cfg: dict):
    """The pipeline's scheduler replaced by ``cfg['name']``, keeping its training noise schedule."""
    from ..core.schedulers import swap_scheduler

    return swap_scheduler(current, cfg["name"], "scheduler.name", **{k: v for k, v in cfg.items() if k != "name"})


def __getattr__(name: str) -> Any:
    if name == "SCORERS":   # the former name of the output-scorer table
        return output_scorers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scorer(cfg: Any, where: str):
    """An output scorer from its name, or ``{name: ..., **arguments}`` (e.g. ``{name: clap, path: ...}``)."""
    if cfg is None:
        return None
    from collections.abc import Mapping

    from ..io.config import strict_kwargs

    name, kwargs = (cfg, {}) if isinstance(cfg, str) else (cfg.get("name") if isinstance(cfg, Mapping) else None, cfg)
    if not isinstance(name, str):
        raise ConfigError(where, f"expected a scorer name or {{name: ..., ...}}, got {cfg!r}")
    factory = output_scorers().get(name, where)
    return factory(**strict_kwargs(factory, dict(kwargs), where))


def check_rerank(scorer, rerank: int | None, where: str) -> None:
    """Re-ranking needs a scorer with per-output scores (``clip_scores``)."""
    if rerank is not None and (scorer is None or not hasattr(scorer, "clip_scores")):
        raise ConfigError(where, "re-ranking needs a scorer with per-output scores (model.scorer)")


def score_outputs(scorer, rerank: int | None, data: Tensor, prompt: Any, rate: int | None,
                  meta: dict) -> tuple[Tensor, dict]:
    """Re-rank the outputs by the scorer's ``clip_scores`` and keep the best ``rerank`` (when set), then
    add the scorer's metrics of what is kept to ``meta``."""
    extra = {"rate": rate} if rate else {}
    if rerank is not None:
        check_rerank(scorer, rerank, "model.rerank")
        from ..modalities.audio.metrics import rerank as sort_by

        scores = scorer.clip_scores(data, prompt, **extra)
        data, order = sort_by(data, scores, rerank)
        meta["rerank_scores"] = [float(scores[i]) for i in order]
        meta["rerank_candidates"] = int(scores.numel())
    if scorer is not None:
        meta.update(scorer(data, prompt, **extra))
    return data, meta
