"""The pipeline adapter: any omniguide guider on a diffusers pipeline, with one ``with``.

    with guide(pipe, APG(scale=7), negative_prompt="blurry") as run:
        images = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, generator=g).images
    print(run.nfe, run.forward_passes)

Inside the block the adapter owns classifier-free guidance:

* the pipeline's own CFG is switched off (``guidance_scale=1``; ``true_cfg_scale=1`` for Flux), and
  passing a CFG scale to the pipeline is a one-line error naming it;
* the pipeline's own prompt encoder runs once per call, as it would with CFG on, so the
  conditional and the negative inputs are exactly the pipeline's (its default negative included);
* the denoiser's ``forward`` is intercepted: at each call the adapter reads the noise level of the
  timestep the pipeline passes (the model's training schedule), builds the ``cond`` and ``uncond``
  branches (plus the guider's own, e.g. PAG's perturbed one), runs what the guider asks for through
  the branch executor (batched, or ``batch=False``), combines, and returns the guided prediction in
  the pipeline's own parameterization;
* the scheduler's ``step`` is wrapped to count steps (the guider's step index) and to re-anchor the
  sample for guiders that return an inconsistent ``(x0, eps)`` pair (CFG++);
* on exit, also after an exception, the pipeline is restored exactly.

Methods that need more than the positive and negative inputs get them through the branch table:
``prompts={"negative": "blurry"}`` encodes each named prompt as the pipeline encodes its negative and
adds a branch of that name (the conditional inputs with those conditions: Perp-Neg's negatives, a
fixed independent condition), and ``branches=`` adds or replaces any branch (a base model for
prior guidance: ``{"prior": Branch("prior", base="uncond", model=base_unet)}``).

What differs between pipelines lives in a :class:`Family` (one short file per family under
``omniguide/modalities/<modality>/``): which classes it serves, the denoiser and how it is called,
the axes, how prompts are encoded and which denoiser inputs carry the condition.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.axes import Axes, as_axes
from ..core.branch import Branch, BranchExecutor, BranchTable, as_branches
from ..core.errors import GuidanceError
from ..core.guider import (
    FOLLOW_UP,
    GRADIENT,
    NOISE_LEVEL,
    REANCHOR,
    SAMPLE,
    STEP_INDEX,
    GuidanceStep,
    Guided,
    Guider,
    check_requirements,
)
from ..core.model_call import ModelCall, default_output
from ..core.noise import NoiseLevel, per_sample
from ..core.perturbations import LayerPerturbation
from ..core.registry import PRESETS
from ..core.sampler import evaluate_guider

# -- families -----------------------------------------------------------------------------------------
Encoder = Callable[[Callable, dict, dict], tuple[Any, dict, dict]]


@dataclass(frozen=True)
class Family:
    """What the adapter needs to know about one family of pipelines.

    ``pipelines``: the classes served (subclasses too), as diffusers names or ``"module:Class"``;
    ``denoiser``: the pipeline attribute holding the denoiser; ``sample`` / ``timestep``: the
    denoiser's keywords for them; ``timestep_scale``: model timestep per scheduler timestep;
    ``layout``: the axes letters of the denoiser's sample; ``cfg_scale``: the pipeline's CFG-scale
    arguments (an error inside ``guide``); ``cfg_off``: what switches the pipeline's CFG off;
    ``negatives``: the pipeline's negative-input arguments (``guide`` accepts the same names);
    ``encode(original, arguments, negatives) -> (result for the pipeline, positive, negative)``
    runs the pipeline's encoder once with the negative and returns the encoded values by name;
    ``conditions``: denoiser keyword (dotted into mappings) -> the encoded value it carries (the
    unconditional inputs replace each by its negative); ``uncond(inputs, positive, negative)``
    builds them instead when the pipeline assembles the condition after encoding (Stable Audio's
    text + duration sequence);
    ``shared``: denoiser inputs without a batch dimension; ``output(module)`` / ``pack(module,
    guided)``: where the prediction sits in the denoiser's output and how the guided prediction is
    handed back (a learned variance next to the noise); ``check(pipe)``: family-specific refusals;
    ``check_call(pipe, arguments)``: refusals of one call's arguments (as passed, before the
    pipeline runs: an empty prompt list, a duration the model cannot produce), one-line errors.
    ``parts``: where the denoiser keeps a part that perturbations look for by diffusers' usual names
    and would not find (``{"time_embedding": ("timestep_proj",)}``: Stable Audio's DiT, for TSG);
    ``embeddings``: the denoiser inputs that carry the prompt embeddings (what ICG replaces by noise:
    AudioLDM's ``class_labels``).

    Video pipelines add (all optional): ``split(model_input, inputs) -> (sample, inputs)`` and
    ``assemble(sample, inputs) -> (model_input, inputs)`` when the denoiser's input is not the
    sample the guider reasons about (SVD concatenates the image latents on the channel axis; the
    branches carry them as an input, zeros in the unconditional one); ``experts``: further denoiser
    attributes intercepted like ``denoiser`` (Wan 2.2's ``transformer_2``, switched at a noise
    boundary); ``noise_of(scheduler) -> (timestep -> NoiseLevel)`` when the timestep the pipeline
    passes is not a training timestep (SVD's ``0.25 log sigma``); ``frames(config_of) -> (step,
    remainder)``: the pipeline makes ``num_frames`` with ``num_frames % step == remainder`` only
    (``config_of(component)`` reads a component's config), other counts are a one-line error
    instead of a silent rounding; ``batch``: the default of ``guide(batch=...)`` (False where the
    pipeline itself runs its branches one at a time, as Wan does).

    For recipes that run the pipeline (``kind: sample``): ``modality`` (``image``, ``audio``,
    ``video``: which writer stores the outputs), ``samples_kwarg`` (outputs per prompt),
    ``output_kwargs`` (arguments that make the pipeline return tensors),
    ``item_inputs(prompt, where) -> call arguments`` (default ``{"prompt": prompt}``; SVD reads an
    image file) and ``read_output(pipe, result) -> (data, rate)``: images ``[N, 3, H, W]`` in
    [0, 1], audio ``[N, C, T]`` with its sample rate, video ``[N, F, 3, H, W]`` in [0, 1] with its
    frame rate."""

    name: str
    pipelines: tuple[str, ...]
    denoiser: str
    sample: str
    encode: Encoder
    conditions: Mapping[str, str]
    timestep: str = "timestep"
    timestep_scale: float = 1.0
    layout: str = "BCHW"
    cfg_scale: tuple[str, ...] = ("guidance_scale",)
    cfg_off: Mapping[str, Any] = field(default_factory=lambda: {"guidance_scale": 1.0})
    negatives: tuple[str, ...] = ("negative_prompt", "negative_prompt_embeds")
    encoder: str = "encode_prompt"
    shared: frozenset[str] = frozenset()
    output: Callable[[nn.Module], Callable[[Any], Tensor]] = lambda module: default_output
    pack: Callable[[nn.Module, Tensor], Tensor] | None = None
    check: Callable[[Any], None] | None = None
    check_call: Callable[[Any, dict], None] | None = None
    uncond: Callable[[dict, dict, dict], dict] | None = None
    modality: str = "image"
    key_mask: str | None = None     # the denoiser keyword of a [B, L] 0/1 text-token mask the family leaves unset
    samples_kwarg: str = "num_images_per_prompt"
    output_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"output_type": "pt"})
    read_output: Callable[[Any, Any], tuple[Tensor, int | None]] = lambda pipe, result: (result.images, None)
    split: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None
    assemble: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None
    experts: tuple[str, ...] = ()
    noise_of: Callable[[Any], Callable[[Any], NoiseLevel]] | None = None
    frames: Callable[[Callable[[str], Mapping]], tuple[int, int]] | None = None
    batch: bool = True
    item_inputs: Callable[[Any, str], dict] | None = None
    parts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    embeddings: tuple[str, ...] = ("encoder_hidden_states",)

    def classes(self) -> tuple[type, ...]:
        """The pipeline classes, imported."""
        out = []
        for spec in self.pipelines:
            module, _, name = spec.rpartition(":") if ":" in spec else ("diffusers", "", spec)
            out.append(getattr(importlib.import_module(module), name))
        return tuple(out)

    def model_call(self, module: nn.Module | ModelCall) -> ModelCall:
        """How the adapter calls a denoiser of this family (also a weak model given as a module)."""
        if isinstance(module, ModelCall):
            return module
        return ModelCall(module, sample=self.sample, timestep=self.timestep, timestep_scale=self.timestep_scale,
                         output=self.output(module), shared=self.shared, fixed={"return_dict": False},
                         assemble=self.assemble)

    def check_frames(self, num_frames: Any, config_of: Callable[[str], Mapping], where: str) -> None:
        """A one-line error when the pipeline cannot make ``num_frames`` frames (see ``frames``)."""
        if self.frames is None or num_frames is None:
            return
        step, remainder = self.frames(config_of)
        if not isinstance(num_frames, int) or num_frames < 1 or num_frames % step != remainder % step:
            valid = ", ".join(str(remainder + step * k) for k in range(1, 4))
            raise GuidanceError(f"{where}: {self.name} pipelines make num_frames = {step} k + {remainder} frames "
                                f"(e.g. {valid}); {num_frames!r} would be rounded or rejected")


# the pipelines' own guidance arguments besides the CFG scale -> (what they are, the omniguide equivalent, "off")
OWN_GUIDANCE = {"guidance_rescale": ("guidance rescale", "Rescale(...) or CFGRescale(...)", 0.0),
                **{k: ("skip-layer guidance", "SkipLayer(...)", None) for k in (
                    "skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start",
                    "skip_layer_guidance_stop")},
                "pag_scale": ("PAG scale", "PAG(...)", 0.0), "pag_adaptive_scale": ("PAG scale", "PAG(...)", 0.0)}


def own_guidance(family: Family, arguments: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first argument of the pipeline's own guidance among ``arguments`` (its CFG scale,
    ``guidance_rescale``, SD3's skip-layer guidance, PAG's scales) and why it is refused, naming the
    omniguide equivalent; ``None`` when there is none, or each is at its "off" value (``guidance_scale=1``)."""
    for name, value in arguments.items():
        what, equivalent, off = OWN_GUIDANCE.get(name, (None, None, None))
        if name in family.cfg_scale:
            what, equivalent, off = "CFG scale", f"set its scale, e.g. CFG(scale={value!r})", family.cfg_off.get(name)
        if what is not None and value is not None and value is not False and not _equal(value, off):
            return name, (f"the pipeline's own {what}; inside guide() the guider owns guidance ({equivalent}); "
                          f"got {name}={value!r}")
    return None


def _equal(value: Any, off: Any) -> bool:
    try:
        return off is not None and float(value) == float(off)
    except (TypeError, ValueError):
        return False


FAMILIES: dict[str, Family] = {}
# modality packages whose import registers their families (no shared list of families to edit)
MODALITY_PACKAGES = ("omniguide.modalities.image", "omniguide.modalities.audio", "omniguide.modalities.video")


def register_family(family: Family) -> Family:
    """Make ``family`` available to :func:`guide` (called at import by each family file)."""
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"pipeline family '{family.name}' is registered twice")
    FAMILIES[family.name] = family
    return family


def load_families() -> dict[str, Family]:
    """Import the modality packages that exist, so every family is registered."""
    for package in MODALITY_PACKAGES:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as err:
            if err.name != package:
                raise
    return FAMILIES


# guider presets are registered by the modality packages (e.g. audio/presets.py): load them on demand
PRESETS.loaders.append(load_families)


def family_for(pipe: Any) -> Family:
    """The family serving ``pipe``; a one-line error listing the supported ones otherwise."""
    return family_for_class(type(pipe), "guide()")


def family_for_class(cls: type, where: str = "guide()") -> Family:
    """The family serving pipelines of class ``cls`` (subclasses included)."""
    for family in load_families().values():
        if issubclass(cls, family.classes()):
            return family
    supported = ", ".join(f"{f.name} ({', '.join(c.rpartition(':')[2] for c in f.pipelines)})"
                          for f in FAMILIES.values())
    raise GuidanceError(f"{where}: no pipeline family serves {cls.__name__}; supported: {supported}")


# -- small helpers ------------------------------------------------------------------------------------
def replace_input(inputs: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``inputs`` with ``path`` (dotted into mappings) set to ``value``; the pipeline's own
    mappings are never mutated."""
    key, _, rest = path.partition(".")
    out = dict(inputs)
    out[key] = replace_input(inputs[key], rest, value) if rest else value
    return out


def get_input(inputs: Mapping[str, Any], path: str) -> Any:
    key, _, rest = path.partition(".")
    if key not in inputs or inputs[key] is None:
        return None
    return get_input(inputs[key], rest) if rest else inputs[key]


def prompt_count(prompt: Any) -> int | None:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, (list, tuple)):
        return len(prompt)
    return None


@dataclass
class _Call:
    """State of one pipeline call inside ``guide``."""

    executor: BranchExecutor
    scheduler: Any
    negatives: dict
    positive: dict | None = None
    negative: dict | None = None
    named: dict = field(default_factory=dict)
    negative_tokens: Tensor | None = None   # the negative prompt's token mask (1: a real token)
    index: int = 0
    last: tuple[Guided, NoiseLevel] | None = None


class _DenoiserOutput(dict):
    """What a denoiser returns with ``return_dict=True``: ``.sample`` and ``[0]`` both work."""

    def __init__(self, sample: Tensor):
        super().__init__(sample=sample)
        self.sample = sample

    def __getitem__(self, key):
        return self.sample if key == 0 else super().__getitem__(key)


# -- the adapter --------------------------------------------------------------------------------------
class Guide:
    """The context manager :func:`guide` returns; inside it, the handle reports the work done:
    ``nfe`` (branch evaluations per sample), ``forward_passes`` (denoiser calls), per step, over
    every pipeline call made in the block."""

    def __init__(self, pipe: Any, guider: Guider, negatives: dict, batch: bool | None = None,
                 axes: Axes | str | tuple | None = None, branches: BranchTable | None = None,
                 family: str | None = None, prompts: Mapping[str, Any] | None = None):
        self.pipe, self.guider, self.batch = pipe, guider, batch
        self.prompts = dict(prompts or {})
        clash = [name for name in self.prompts if name in ("cond", "uncond")]
        if clash:
            raise GuidanceError(f"guide(prompts=...): '{clash[0]}' is the adapter's own branch; name the prompt "
                                "branch otherwise (e.g. 'negative')")
        self.family = FAMILIES[family] if family in load_families() else None
        if family is not None and self.family is None:
            raise GuidanceError(f"guide(family='{family}'): unknown family; valid: {', '.join(sorted(FAMILIES))}")
        self.family = self.family or family_for(pipe)
        unknown = [k for k, v in negatives.items() if v is not None and k not in self.family.negatives]
        if unknown:
            raise GuidanceError(f"guide(): '{unknown[0]}' is not a negative input of the {self.family.name} family; "
                                f"valid: {', '.join(self.family.negatives)}")
        self.negatives = {k: v for k, v in negatives.items() if v is not None}
        self.axes = as_axes(axes) if axes is not None else Axes.from_layout(self.family.layout)
        self.user_branches = as_branches(branches)
        self.nfe_per_step: list[int] = []
        self.passes_per_step: list[int] = []
        self.report: dict = {}
        self.calls = 0
        self._call: _Call | None = None
        self._inner = False
        self._saved: dict[str, Any] = {}

    # -- reporting ----------------------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        return sum(self.nfe_per_step)

    @property
    def forward_passes(self) -> int:
        return sum(self.passes_per_step)

    # -- entering and leaving -----------------------------------------------------------------------
    def __enter__(self) -> Guide:
        family, pipe = self.family, self.pipe
        if family.check is not None:
            family.check(pipe)
        self.denoiser = getattr(pipe, family.denoiser, None)
        if not isinstance(self.denoiser, nn.Module):
            raise GuidanceError(f"guide(): {type(pipe).__name__} has no denoiser module '{family.denoiser}'")
        if getattr(pipe, "_omniguide_guide", None) is not None:
            raise GuidanceError(f"guide(): this {type(pipe).__name__} is already inside a guide() block")
        check_requirements(self.guider, (STEP_INDEX, REANCHOR, GRADIENT, FOLLOW_UP, SAMPLE, NOISE_LEVEL),
                           "the pipeline adapter")
        # the denoiser and any experts (Wan 2.2's transformer_2), each intercepted the same way
        self.denoisers = {family.denoiser: self.denoiser}
        for name in family.experts:
            module = getattr(pipe, name, None)
            if isinstance(module, nn.Module) and all(module is not m for m in self.denoisers.values()):
                self.denoisers[name] = module
        self.model_calls = {name: family.model_call(module) for name, module in self.denoisers.items()}
        self.call = self.model_calls[family.denoiser]
        self.branch_defaults = self._resolve_models(self.guider.branch_defaults())
        self.resolved_branches = self._resolve_models(self.user_branches)
        self._check_perturbations()
        cls = type(pipe)
        self._saved = {"class": cls, "forwards": {n: m.__dict__.get("forward") for n, m in self.denoisers.items()}}
        self._original_forwards = {n: m.forward for n, m in self.denoisers.items()}
        self._forward_signatures = {n: inspect.signature(f) for n, f in self._original_forwards.items()}
        for name, module in self.denoisers.items():
            module.forward = functools.partial(self._forward, name)
        pipe._omniguide_guide = self
        pipe.__class__ = _guided_class(cls)
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False

    def restore(self) -> None:
        """Put the pipeline back exactly as it was (class, denoiser forwards, attributes)."""
        if not self._saved:
            return
        pipe = self.pipe
        pipe.__class__ = self._saved["class"]
        pipe.__dict__.pop("_omniguide_guide", None)
        for name, module in self.denoisers.items():
            saved = self._saved["forwards"][name]
            if saved is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = saved
        self._saved = {}

    def _resolve_models(self, table: Mapping[str, Branch]) -> dict[str, Branch]:
        """Branch models given as plain modules (a weak UNet) are called the family's way; a perturbation
        of a part the family declares (``Family.parts``) acts on the modules it names."""
        out = {}
        for name, branch in table.items():
            if isinstance(branch.model, nn.Module):
                branch = dataclasses.replace(branch, model=self.family.model_call(branch.model))
            p = branch.perturbation
            if isinstance(p, LayerPerturbation) and p.layers is None and p.part in self.family.parts:
                branch = dataclasses.replace(branch, perturbation=p.on(self.family.parts[p.part]))
            out[name] = branch
        return out

    def _check_perturbations(self) -> None:
        """A guider whose perturbed branches this denoiser cannot serve fails now, not mid-run."""
        for name, branch in {**self.branch_defaults, **self.resolved_branches}.items():
            perturbation = branch.perturbation
            if isinstance(perturbation, LayerPerturbation):
                models = [branch.model] if isinstance(branch.model, ModelCall) else list(self.model_calls.values())
                try:
                    for model in models:
                        perturbation.targets(model.require_module(f"branch '{name}'"))
                except GuidanceError as err:
                    raise GuidanceError(f"guide(): {self.guider.name or 'the guider'} cannot build its branch "
                                        f"'{name}' on {type(self.denoiser).__name__}: {err}") from None

    # -- one pipeline call --------------------------------------------------------------------------
    def _run_pipeline(self, cls: type, pipe: Any, args: tuple, kwargs: dict) -> Any:
        """The pipeline's ``__call__`` with its CFG off and the encoder and scheduler wrapped."""
        family = self.family
        bound = inspect.signature(cls.__call__).bind(pipe, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        arguments.update(arguments.pop("kwargs", None) or {})
        if (own := own_guidance(family, arguments)) is not None:
            raise GuidanceError(f"guide(): {type(pipe).__name__}({own[0]}=...) is {own[1]}")
        family.check_frames(arguments.get("num_frames"), lambda name: getattr(pipe, name).config,
                            f"guide(): {type(pipe).__name__}")
        negatives = {k: arguments[k] for k in family.negatives if arguments.get(k) is not None}
        negatives.update(self.negatives)
        if family.check_call is not None:
            family.check_call(pipe, {**arguments, **negatives})
        arguments.update(family.cfg_off)
        scheduler = pipe.scheduler
        self._check_scheduler(scheduler)
        from ..core.schedulers import model_parameterization, noise_schedule

        noise_of = family.noise_of(scheduler) if family.noise_of is not None else \
            self._noise_of(noise_schedule(scheduler))
        batch = family.batch if self.batch is None else self.batch
        executor = BranchExecutor(self.call, None, model_parameterization(scheduler), batch=batch, noise_of=noise_of)
        self._call = _Call(executor, scheduler, negatives)
        self.guider.reset()
        encoder = getattr(pipe, family.encoder)
        step = scheduler.step
        pipe.__dict__[family.encoder] = self._encoder(encoder)
        scheduler.step = self._scheduler_step(step)
        try:
            return cls.__call__(pipe, **arguments)
        finally:
            pipe.__dict__.pop(family.encoder, None)
            scheduler.__dict__.pop("step", None)
            self.nfe_per_step += executor.nfe_per_step
            self.passes_per_step += executor.passes_per_step
            self.report = dict(self.guider.report())
            self.calls += 1
            self._call = None

    def _check_scheduler(self, scheduler: Any) -> None:
        order = getattr(scheduler, "order", 1)
        if order > 1 and self.guider.stateful:
            raise GuidanceError(
                f"guide(): guider '{self.guider.name}' keeps state between steps, but {type(scheduler).__name__} "
                f"evaluates the model {order} times per step; use a first-order or multistep scheduler")

    def _noise_of(self, schedule) -> Callable[[Any], NoiseLevel]:
        scale = self.family.timestep_scale

        def noise_of(timestep: Any) -> NoiseLevel:
            return schedule.noise(torch.as_tensor(timestep).detach().double().cpu() / scale)
        return noise_of

    def _encoder(self, original: Callable) -> Callable:
        signature = inspect.signature(original)

        def encode(*args, **kwargs):
            call = self._call
            arguments = dict(signature.bind(*args, **kwargs).arguments)
            negatives = dict(call.negatives)
            count, negative = prompt_count(arguments.get("prompt")), negatives.get("negative_prompt")
            if isinstance(negative, str) and isinstance(arguments.get("prompt"), (list, tuple)):
                negatives["negative_prompt"] = negative = [negative] * count
            if count is not None and isinstance(negative, (list, tuple)) and len(negative) != count:
                raise GuidanceError(f"guide(): {len(negative)} negative prompts for {count} prompts; give one "
                                    "negative prompt, or a list as long as the prompts")
            result, call.positive, call.negative = self.family.encode(original, arguments, negatives)
            if self.family.key_mask and any(getattr(b.perturbation, "masks_negative_padding", False)
                                            for b in self.branch_defaults.values()):
                call.negative_tokens = self._negative_tokens(negatives, call.negative)
            for name, text in self.prompts.items():
                if isinstance(text, str) and isinstance(arguments.get("prompt"), (list, tuple)):
                    text = [text] * count
                call.named[name] = self.family.encode(original, arguments, {"negative_prompt": text})[2]
            return result
        return encode

    def _negative_tokens(self, negatives: dict, encoded: dict) -> Tensor | None:
        """The negative prompt's token mask from the pipeline's tokenizer, at the encoded length, for the
        attention negatives that must not see its padding (VSF); None without a tokenizer or a text."""
        tokenizer, text = getattr(self.pipe, "tokenizer", None), negatives.get("negative_prompt")
        if text is None and negatives.get("negative_prompt_embeds") is None:
            text = ""                                       # the pipelines' default negative
        embeds = [v for v in encoded.values() if isinstance(v, Tensor) and v.ndim == 3]
        if not callable(tokenizer) or text is None or len(embeds) != 1:
            return None
        rows, length = embeds[0].shape[:2]
        texts = [text] if isinstance(text, str) else list(text)
        mask = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                         return_tensors="pt").attention_mask
        return mask.repeat_interleave(rows // len(texts), 0) if rows % len(texts) == 0 else None

    def _padding_masks(self, denoiser: str, inputs: dict, device: torch.device) -> dict[str, Branch]:
        """VSF's branches with per-row key masks: ones for the positive rows, the negative prompt's token
        mask for the negative rows, so its padding stays out of the flipped block (every reference
        encodes the negative without padding), through the family's ``key_mask`` keyword."""
        tokens, key = self._call.negative_tokens, self.family.key_mask
        if tokens is None or key is None or inputs.get(key) is not None:
            return {}
        out = {}
        for name, branch in self.branch_defaults.items():
            p = branch.perturbation
            if getattr(p, "masks_negative_padding", False) and name in (p.positive, p.negative):
                mask = tokens if name == p.negative else torch.ones_like(tokens)
                out[name] = dataclasses.replace(branch, inputs={**branch.inputs, key: mask.to(device)})
        return out

    def _scheduler_step(self, original: Callable) -> Callable:
        signature = inspect.signature(original)
        from ..core.schedulers import sample_unit, scales_model_input

        def step(*args, **kwargs):
            call = self._call
            if call.last is not None and not call.last[0].consistent:
                bound = signature.bind(*args, **kwargs)
                result, noise = call.last
                if scales_model_input(call.scheduler):   # VE sample x0 + sigma eps; the model saw it scaled
                    noise = NoiseLevel.edm(noise.sigma_edm)
                sample = bound.arguments["sample"]
                anchor = sample_unit(call.scheduler) * (noise.alpha * result.x0 + noise.sigma * result.eps)
                bound.arguments["sample"] = anchor.to(sample.dtype)
                args, kwargs = bound.args, bound.kwargs
            call.last = None
            call.index += 1
            return original(*args, **kwargs)
        return step

    # -- one denoiser call --------------------------------------------------------------------------
    def _forward(self, denoiser: str, *args, **kwargs):
        if self._inner or self._call is None:   # the executor's own calls, or a call outside the pipeline
            return self._original_forwards[denoiser](*args, **kwargs)
        family, call = self.family, self._call
        inputs = dict(self._forward_signatures[denoiser].bind(*args, **kwargs).arguments)
        inputs.update(inputs.pop("kwargs", None) or {})
        return_dict = inputs.pop("return_dict", True)
        if family.sample not in inputs or family.timestep not in inputs:   # a (*args, **kwargs) wrapper
            raise GuidanceError(
                f"guide(): the {family.denoiser}'s forward{self._forward_signatures[denoiser]} does not name its "
                f"'{family.sample}' and '{family.timestep}' inputs, so the adapter cannot map the call; give the "
                f"wrapper the original's signature (functools.wraps) or guide the unwrapped {family.denoiser}")
        sample, timestep = inputs.pop(family.sample), inputs.pop(family.timestep)
        model_input = sample
        if family.split is not None:     # the latents the guider reasons about, the rest as inputs
            sample, inputs = family.split(sample, inputs)
        if call.positive is None:
            raise GuidanceError(f"guide(): {type(self.pipe).__name__} called its {family.denoiser} before encoding "
                                f"prompts with {family.encoder}; the adapter has no negative inputs")
        noise = per_sample(call.executor.noise_of(timestep), sample.ndim).to(sample)
        num_steps = len(call.scheduler.timesteps)
        step = GuidanceStep(sample, noise, timestep, call.index, num_steps, self.axes,
                            embeddings=tuple(family.embeddings))
        table = {"cond": Branch("cond", inputs), "uncond": Branch("uncond", self._uncond_inputs(inputs))}
        for name, encoded in call.named.items():
            table[name] = Branch(name, self._uncond_inputs(inputs, encoded, name))
        masked = self._padding_masks(denoiser, inputs, sample.device)
        table = {**table, **self.branch_defaults, **masked, **self.resolved_branches}
        self._inner = True
        try:
            _, result = evaluate_guider(self.guider, call.executor, sample, timestep, step, branches=table,
                                        model=self.model_calls[denoiser])
        finally:
            self._inner = False
        call.last = (result, noise)
        out = result.to(call.executor.parameterization).to(model_input.dtype)
        if family.pack is not None:
            out = family.pack(self.denoisers[denoiser], out)
        return _DenoiserOutput(out) if return_dict else (out,)

    def _uncond_inputs(self, inputs: dict, encoded: dict | None = None, branch: str = "negative") -> dict:
        """The conditional inputs with each condition replaced by its negative counterpart (or by the
        counterpart in ``encoded``, a named prompt's encoding)."""
        call, out = self._call, inputs
        encoded = call.negative if encoded is None else encoded
        if self.family.uncond is not None:
            return self.family.uncond(inputs, call.positive, encoded)
        for path, name in self.family.conditions.items():
            cond = get_input(inputs, path)
            if cond is None:
                continue
            negative = encoded.get(name)
            if negative is None:
                raise GuidanceError(f"guide(): the {self.family.name} encoder gave no {branch} '{name}' for {path}")
            if isinstance(cond, Tensor):
                if negative.shape != cond.shape:
                    raise GuidanceError(f"guide(): the negative '{name}' has shape {tuple(negative.shape)} but the "
                                        f"pipeline passes {tuple(cond.shape)} as {path}")
                negative = negative.to(device=cond.device, dtype=cond.dtype)
            out = replace_input(out, path, negative)
        return out


_GUIDED_CLASSES: dict[type, type] = {}


def _guided_class(cls: type) -> type:
    """A subclass of the pipeline class whose ``__call__`` goes through the adapter (swapped in on
    ``pipe.__class__`` for the duration of the block, as ``torch.nn.utils.parametrize`` does)."""
    if cls not in _GUIDED_CLASSES:
        def __call__(self, *args, **kwargs):
            return self._omniguide_guide._run_pipeline(cls, self, args, kwargs)

        __call__.__doc__ = cls.__call__.__doc__
        _GUIDED_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    return _GUIDED_CLASSES[cls]


def guide(pipe: Any, guider: Guider, negative_prompt: str | list[str] | None = None, *, batch: bool | None = None,
          axes: Axes | str | tuple | None = None, branches: BranchTable | None = None, family: str | None = None,
          prompts: Mapping[str, Any] | None = None, **negatives: Any) -> Guide:
    """Drive ``pipe`` with ``guider`` inside a ``with`` block (see the module docstring).

    ``negative_prompt`` (and the family's other negative inputs by name, e.g. ``negative_prompt_2``)
    replaces the pipeline's unconditional input; without one the pipeline's own default is used.
    ``batch=False`` runs branches one at a time (less memory); ``None``: the family's default
    (batched, except for pipelines that run their own branches one at a time, such as Wan).
    ``axes`` overrides the family's
    layout. ``branches`` adds or replaces named branches (``{"weak": Branch(..., model=unet)}``).
    ``prompts`` adds a branch per named prompt, encoded as the pipeline encodes its negative
    (``{"negative": "blurry"}`` for Perp-Neg). ``family`` picks a family by name instead of by the
    pipeline's class. The handle's ``report`` holds what the guider decided in the last call."""
    return Guide(pipe, guider, {"negative_prompt": negative_prompt, **negatives}, batch, axes, branches, family,
                 prompts)
