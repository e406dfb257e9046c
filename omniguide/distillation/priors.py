"""Priors: a frozen denoiser (a :class:`~omniguide.core.model_call.ModelCall`), its training
:class:`~omniguide.core.noise.NoiseSchedule`, its parameterization, how rendered images become its
sample, and its text encoder -- run once per prompt set, never per step.

Any pipeline the adapter knows is a prior (``prior_from_pipeline``): the family's own prompt
encoder and denoiser call are reused (``Family.encode``, ``Family.model_call``), so a Stable
Diffusion 1.x/2.x or SD3 pipeline loaded with ``from_pretrained`` works as is, and so does the
zoo's pixel-space prior. Latent families encode renders with their VAE (the posterior mean,
scaled and shifted as the pipeline does; gradients flow through the encoder).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.axes import Axes
from ..core.errors import ConfigError
from ..core.model_call import ModelCall
from ..core.noise import NoiseLevel, NoiseSchedule, per_sample
from ..modalities.base import Family, family_for, replace_input
from .pipelines import PIPELINE_CLASSES, pipeline_class, register_pipeline  # noqa: F401  (their home before)

TOKENIZERS = ("tokenizer", "tokenizer_2")   # CLIP-style tokenizers whose length limit truncates silently


def load_pipeline(folder, dtype: torch.dtype = torch.float32, path: str = "prior.path"):
    """A diffusers pipeline folder loaded with ``from_pretrained`` by the class its
    ``model_index.json`` names (a diffusers class, or one of :data:`PIPELINE_CLASSES`)."""
    import json
    from pathlib import Path

    import diffusers

    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(path, f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    name = json.loads(index.read_text())["_class_name"]
    cls = getattr(diffusers, name, None) or pipeline_class(name)
    if cls is None:
        raise ConfigError(path, f"{folder}: unknown pipeline class '{name}' (not in diffusers; registered: "
                          f"{', '.join(sorted(PIPELINE_CLASSES)) or 'none'}; import the module that registers it)")
    pipe = cls.from_pretrained(str(folder), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Prior:
    """A frozen diffusion or flow model used as the score of score distillation (see the module docstring)."""

    call: ModelCall
    schedule: NoiseSchedule
    parameterization: str
    encode_text: Callable[[list[str]], dict[str, Any]]
    encode_image: Callable[[Tensor], Tensor]
    axes: Axes = field(default_factory=lambda: Axes.from_layout("BCHW"))
    modules: tuple[nn.Module, ...] = ()
    size_multiple: int = 1
    max_size: int | None = None
    make_call: Callable[[nn.Module], ModelCall] = ModelCall
    check_prompt: Callable[[str, str], None] = lambda prompt, path: None
    name: str = "prior"
    text_keyword: str = "encoder_hidden_states"      # the denoiser keyword that takes text embeddings

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    @property
    def is_flow(self) -> bool:
        return self.parameterization == "flow"

    def noise_of(self, timestep: Any) -> NoiseLevel:
        """The noise level of the model input at ``timestep`` (the executor's ``noise_of``)."""
        return self.schedule.noise(torch.as_tensor(timestep).detach().double().cpu())

    def noise_like(self, timestep: Tensor, x: Tensor) -> NoiseLevel:
        """Per-sample noise level at ``timestep [B]``, broadcast against ``x`` and in its dtype."""
        return per_sample(self.noise_of(timestep), x.ndim).to(x)

    def check_resolution(self, height: int, width: int, path: str = "scene.render_size") -> None:
        """Renders must be a size the denoiser takes (down-sampling levels, patches, VAE factor)."""
        for side in (height, width):
            if side % self.size_multiple:
                raise ConfigError(path, f"{height}x{width} cannot be used by {self.name}: each side must be a "
                                  f"multiple of {self.size_multiple}")
            if self.max_size is not None and side > self.max_size:
                raise ConfigError(path, f"{height}x{width} is larger than {self.name} takes ({self.max_size})")

    def to(self, device, dtype: torch.dtype | None = None) -> Prior:
        for module in self.modules:
            module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        return self

    def encode_prompts(self, prompts: Mapping[str, list[str]], path: str = "prompt") -> dict[str, dict[str, Any]]:
        """Each named list of prompts encoded once: ``{name: denoiser inputs batched over the list}``."""
        for name, texts in prompts.items():
            for text in texts:
                self.check_prompt(text, f"{path} ({name})")
        with torch.no_grad():
            return {name: self.encode_text(list(texts)) for name, texts in prompts.items()}


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _size_multiple(pipe: Any, denoiser: nn.Module) -> tuple[int, int | None]:
    vae = getattr(pipe, "vae", None)
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    config = denoiser.config
    if "patch_size" in config and config.get("patch_size"):
        patch = int(config["patch_size"])
        top = config.get("pos_embed_max_size")
        return scale * patch, (top * patch * scale if top else None)
    levels = len(config.get("block_out_channels", (1,)))
    return scale * 2 ** (levels - 1), None


def _encoder_arguments(encoder: Callable, prompts: list[str], device, extra: Mapping[str, Any]) -> dict:
    params = inspect.signature(encoder).parameters
    args: dict[str, Any] = {"prompt": prompts}
    for name in ("prompt_2", "prompt_3"):
        if name in params:
            args[name] = None
    if "device" in params:
        args["device"] = device
    if "num_images_per_prompt" in params:
        args["num_images_per_prompt"] = 1
    args.update({k: v for k, v in extra.items() if k in params})
    return args


def _check_prompt(pipe: Any) -> Callable[[str, str], None]:
    def check(prompt: str, path: str) -> None:
        for name in TOKENIZERS:
            tok = getattr(pipe, name, None)
            if tok is None:
                continue
            n = len(tok(prompt).input_ids)
            if n > tok.model_max_length:
                raise ConfigError(path, f"prompt {prompt!r} is {n} tokens but the prior's {name} takes at most "
                                  f"{tok.model_max_length} (it would be truncated silently)")
    return check


def prior_from_pipeline(pipe: Any, name: str = "prior", encode_kwargs: Mapping[str, Any] | None = None) -> Prior:
    """A :class:`Prior` from a diffusers pipeline of a family the adapter knows (SD 1.x/2.x, SD3,
    the zoo's pixel prior). Its denoiser, VAE and text encoders are frozen."""
    from ..core.schedulers import model_parameterization, noise_schedule

    family: Family = family_for(pipe)
    if family.name not in ("sd", "sd3", "pixel"):
        raise ConfigError("prior", f"the {family.name} family is not supported as a distillation prior yet "
                          "(supported: sd, sd3, pixel)")
    denoiser = _freeze(getattr(pipe, family.denoiser))
    modules = [denoiser]
    for attr in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, attr, None)
        if isinstance(module, nn.Module):
            modules.append(_freeze(module))
    encoder = getattr(pipe, family.encoder)
    extra = dict(encode_kwargs or {})

    def encode_text(prompts: list[str]) -> dict[str, Any]:
        args = _encoder_arguments(encoder, prompts, denoiser.device, extra)
        _, positive, _ = family.encode(encoder, args, {})
        inputs: dict[str, Any] = {}
        for path, key in family.conditions.items():
            inputs = replace_input(inputs, path, positive[key])
        return inputs

    vae = getattr(pipe, "vae", None)

    def encode_image(rgb: Tensor) -> Tensor:
        x = rgb * 2 - 1
        if vae is None:
            return x
        latents = vae.encode(x.to(vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).to(rgb.dtype)

    multiple, top = _size_multiple(pipe, denoiser)
    return Prior(call=family.model_call(denoiser), schedule=noise_schedule(pipe.scheduler),
                 parameterization=model_parameterization(pipe.scheduler), encode_text=encode_text,
                 encode_image=encode_image, axes=Axes.from_layout(family.layout), modules=tuple(modules),
                 size_multiple=multiple, max_size=top, make_call=family.model_call, check_prompt=_check_prompt(pipe),
                 name=name)

