"""MusicGen (transformers' ``MusicgenForConditionalGeneration``): any omniguide guider on the logits.

    with guide_musicgen(model, APG(scale=3, space=None), negative=processor(text=["noise"], return_tensors="pt")):
        audio = model.generate(**processor(text=prompts, padding=True, return_tensors="pt"),
                               do_sample=True, max_new_tokens=256)

MusicGen's own CFG (``guidance_scale > 1``) runs the decoder on a doubled batch -- conditional rows
first, then rows whose text-encoder states are zeros -- and a
``ClassifierFreeGuidanceLogitsProcessor`` combines ``u + w (c - u)`` before any other processor
(temperature, top-k). Inside ``guide_musicgen`` the doubled batch is kept and that processor is
replaced, at the same place in the chain, by :class:`GuidedLogitsProcessor`, which runs the core's
guided step on the conditional and unconditional logits of each decoding step:

* a logit vector is a prediction with *no noise level* (``step.noise is None``): nothing converts it,
  it is its own value in every parameterization, so CFG, rescale (std over the vocabulary), APG
  (norms / projections over the vocabulary, per row = per sample and codebook), TCFG, CFG-Zero*, FDG
  and ``Terms`` act on the logits themselves; the layout is ``BD`` (rows x vocabulary);
* the step coordinate is the decoding step ``i / (N - 1)`` with ``N`` the new tokens, and ``t = 1 -
  i / (N - 1)`` (the core's ``t`` without a noise level: 1 at the first token, as at pure noise), so
  intervals and schedules over ``step`` or ``t`` apply over decoding steps; there is no ``sigma``,
  and guiders that read it (an interval over ``sigma``) declare ``noise-level`` and are refused;
* CFG++ (which re-anchors a diffusion sample), residual CFG (which rebuilds a noise from the
  sample) and guiders whose branches change the model, call another one or redraw the condition
  (PAG, SEG, skip-layer, autoguidance; Methods II's TSG, TPG, S²-Guidance, NAG, VSF, PLADIS, prior
  guidance, ICG) or need a second round in the step (SAG, GFCG) are refused in one line: the
  processor only sees the logits of the decoder batch.

The unconditional rows are computed at every step whatever the guider asks (the doubled batch is
transformers'), so an interval changes the result, not the cost: ``nfe`` counts 2 per step.
``negative`` (tokenized text) replaces the zero states of the unconditional rows with the
negative prompt's text-encoder states (padded with masked zeros to a common length), which
transformers' MusicGen has no argument for. ``prompts={"negative": tokens}`` adds a branch per
named prompt: the decoder batch grows to ``[cond; uncond; named...]`` (NFE 2 + one per prompt), so
Perp-Neg gets its negative next to the unconditional rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...core.axes import Axes
from ...core.branch import Branch, BranchExecutor
from ...core.errors import GuidanceError
from ...core.guider import STEP_INDEX, GuidanceStep, Guider, check_requirements
from ...core.sampler import evaluate_guider

LAYOUT = "BD"
BRANCHES = ("cond", "uncond")


def _logits_processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class GuidedLogitsProcessor(_logits_processor_base()):
    """Combines ``[cond; uncond]`` logits rows with an omniguide guider (transformers' batched CFG
    layout: the first half of the rows is conditional; ``branches`` names further blocks of rows, the
    named prompts). ``num_steps`` is the number of decoding steps (new tokens); ``nfe_per_step`` /
    ``guided_steps`` report the work."""

    def __init__(self, guider: Guider, num_steps: int | None = None, branches: tuple[str, ...] = BRANCHES):
        self.branches = tuple(branches)
        check_guider(guider, self.branches)
        self.guider, self.num_steps = guider, num_steps
        self.axes = Axes.from_layout(LAYOUT)
        hint = f"; MusicGen's batch holds {held(self.branches)} (add a prompt with guide_musicgen(prompts={{...}}))"
        self.executor = BranchExecutor(held_logits, None, "x0", batch=False, check_finite=False, undefined=hint)
        self.reset(num_steps)

    def reset(self, num_steps: int | None = None) -> None:
        self.num_steps = num_steps if num_steps is not None else self.num_steps
        self.index = 0
        self.nfe_per_step: list[int] = []
        self.guided_steps = 0
        self.executor.reset_counts()
        self.guider.reset()

    def step(self, x: Tensor) -> GuidanceStep:
        """The decoding step: no sample (zeros of the logits' shape) and no noise level."""
        n = max(int(self.num_steps or 1), 1)
        return GuidanceStep(torch.zeros_like(x), None, None, min(self.index, n - 1), n, self.axes)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n, rows = len(self.branches), input_ids.shape[0]
        if scores.shape[0] != n * rows:
            raise GuidanceError(f"guided logits: expected [{'; '.join(self.branches)}] rows ({n} x {rows}), got "
                                f"{scores.shape[0]}; is generate() running with the doubled CFG batch?")
        values = dict(zip(self.branches, scores.float().split(rows, dim=0)))
        step = self.step(values["cond"])
        table = {name: {"logits": value} for name, value in values.items()}
        preds, result = evaluate_guider(self.guider, self.executor, step.x, None, step, branches=table)
        out = result.x0
        if not torch.isfinite(out).any(dim=-1).all():
            raise GuidanceError(f"guided logits: step {step.index} gave a row without a finite logit")
        self.nfe_per_step.append(n)
        self.guided_steps += "uncond" in preds
        self.index += 1
        return out.to(scores.dtype)


def held_logits(sample: Tensor, timestep: None, logits: Tensor) -> Tensor:
    """The "model" of a decoding step: the decoder already ran, and a branch's prediction is its rows of
    the logits."""
    return logits


def held(branches: tuple[str, ...]) -> str:
    names = [f"'{b}'" for b in branches]
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def branch_need(branch: Branch) -> str:
    """What a guider's own branch asks of the model, in words (for the refusal)."""
    if branch.perturbation is not None:
        return f"which runs the model under {type(branch.perturbation).__name__}"
    if branch.model is not None:
        return "which calls another model"
    if branch.draw is not None:
        return "whose condition is drawn afresh at every step"
    return "which has inputs of its own"


def check_guider(guider: Guider, branches: tuple[str, ...] = BRANCHES) -> None:
    """Refuse guiders the logits processor cannot serve (one line naming the guider and why): it sees
    only the logits of the decoder batch, whose rows are ``branches``, and has no diffusion sample."""
    check_requirements(guider, (STEP_INDEX,), "the MusicGen logits processor")
    for name, branch in guider.branch_defaults().items():
        if name not in branches:
            raise GuidanceError(f"guider '{guider.name or type(guider).__name__}' needs branch '{name}', "
                                f"{branch_need(branch)}; the MusicGen logits processor only sees the logits of "
                                f"the decoder batch ({held(branches)})")


def _processor_list(custom: Any, guided: GuidedLogitsProcessor):
    """A LogitsProcessorList that puts ``guided`` where generate() appends transformers' CFG processor."""
    from transformers import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList

    class _GuidedList(LogitsProcessorList):
        def append(self, processor):
            if isinstance(processor, ClassifierFreeGuidanceLogitsProcessor):
                processor = guided
            super().append(processor)

    for p in custom or []:
        if isinstance(p, ClassifierFreeGuidanceLogitsProcessor):
            raise GuidanceError("guide_musicgen(): a ClassifierFreeGuidanceLogitsProcessor was passed; inside "
                                "guide_musicgen the guider owns guidance")
    return _GuidedList(list(custom or []))


class MusicGenGuide:
    """The context manager :func:`guide_musicgen` returns; ``nfe``, ``nfe_per_step`` and
    ``guided_steps`` report the last ``generate`` call."""

    def __init__(self, model: Any, guider: Guider, negative: Mapping[str, Tensor] | None = None,
                 prompts: Mapping[str, Mapping[str, Tensor]] | None = None):
        self.model, self.guider = model, guider
        self.prompts = {name: dict(tokens) for name, tokens in (prompts or {}).items()}
        for name, tokens in self.prompts.items():
            if name in BRANCHES:
                raise GuidanceError(f"guide_musicgen(prompts=...): '{name}' is the decoder batch's own branch; "
                                    "name the prompt otherwise (e.g. 'negative')")
            check_tokens(tokens, f"guide_musicgen(prompts['{name}'])")
        self.processor = GuidedLogitsProcessor(guider, branches=(*BRANCHES, *self.prompts))
        self.negative = dict(negative) if negative is not None else None
        if self.negative is not None:
            check_tokens(self.negative, "guide_musicgen(negative=...)")
        self._saved: dict[str, Any] = {}

    @property
    def nfe_per_step(self) -> list[int]:
        return self.processor.nfe_per_step

    @property
    def nfe(self) -> int:
        return sum(self.processor.nfe_per_step)

    @property
    def guided_steps(self) -> int:
        return self.processor.guided_steps

    def __enter__(self) -> MusicGenGuide:
        model = self.model
        if "generate" in model.__dict__ or getattr(model, "_omniguide_guide", None) is not None:
            raise GuidanceError(f"guide_musicgen(): this {type(model).__name__} is already guided")
        self._saved = {name: model.__dict__.get(name) for name in PATCHED}
        original = model.generate
        model.generate = lambda *args, **kwargs: self._generate(original, *args, **kwargs)
        if self.negative is not None or self.prompts:
            encode = model._prepare_text_encoder_kwargs_for_generation
            model._prepare_text_encoder_kwargs_for_generation = (
                lambda *args, **kwargs: self._with_rows(encode(*args, **kwargs)))
        if self.prompts:
            prepare = model.prepare_inputs_for_generation

            @functools.wraps(prepare)   # generate() reads its signature
            def prepare_rows(*args, **kwargs):
                return self._repeat_rows(prepare(*args, **kwargs))
            model.prepare_inputs_for_generation = prepare_rows
        model._omniguide_guide = self
        return self

    def __exit__(self, *exc) -> bool:
        model = self.model
        model.__dict__.pop("generate", None)
        model.__dict__.pop("_omniguide_guide", None)
        for name in PATCHED:
            model.__dict__.pop(name, None)
            if self._saved.get(name) is not None:
                setattr(model, name, self._saved[name])
        return False

    def num_steps(self, kwargs: dict) -> int:
        """New tokens of this call: ``max_new_tokens``, else the generation config's ``max_length - 1``."""
        config = kwargs.get("generation_config") or self.model.generation_config
        if kwargs.get("max_new_tokens") is not None:
            return int(kwargs["max_new_tokens"])
        if config.max_new_tokens is not None:
            return int(config.max_new_tokens)
        return int(kwargs.get("max_length") or config.max_length) - 1

    def _generate(self, original, *args, **kwargs):
        if kwargs.get("guidance_scale") is not None:
            raise GuidanceError(f"guide_musicgen(): generate(guidance_scale={kwargs['guidance_scale']}) is MusicGen's "
                                f"own CFG scale; inside guide_musicgen the guider owns guidance (set its scale)")
        self.processor.reset(self.num_steps(kwargs))
        kwargs["logits_processor"] = _processor_list(kwargs.get("logits_processor"), self.processor)
        # any scale > 1 makes generate() build the doubled [cond; uncond] batch; the value is never used
        return original(*args, guidance_scale=2.0, **kwargs)

    def _encode(self, tokens: Mapping[str, Tensor], rows: int, like: Tensor, who: str) -> tuple[Tensor, Tensor]:
        """Text-encoder states and mask of ``tokens`` (one prompt, or one per prompt) for ``rows`` rows."""
        ids = tokens["input_ids"].to(like.device)
        mask = tokens.get("attention_mask", torch.ones_like(ids)).to(like.device)
        states = self.model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        if states.shape[0] not in (1, rows):
            raise GuidanceError(f"{who}: {states.shape[0]} prompts for {rows} prompts; give one, or one per prompt")
        return states.to(like.dtype).expand(rows, -1, -1), mask.expand(rows, -1)

    def _with_rows(self, model_kwargs: dict) -> dict:
        """The text-encoder states of the decoder batch ``[cond; uncond; named prompts]``: the zero
        (unconditional) half replaced by the negative's when given, each named prompt's appended, all
        padded with masked zeros to a common length."""
        from transformers.modeling_outputs import BaseModelOutput

        states = model_kwargs["encoder_outputs"].last_hidden_state
        half = states.shape[0] // 2
        mask = model_kwargs.get("attention_mask")
        mask = mask if mask is not None else torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        blocks = [(states[:half], mask[:half])]
        if self.negative is not None:
            blocks.append(self._encode(self.negative, half, states, "guide_musicgen(negative=...)"))
        else:
            blocks.append((states[half:], mask[half:]))
        for name, tokens in self.prompts.items():
            blocks.append(self._encode(tokens, half, states, f"guide_musicgen(prompts['{name}'])"))
        length = max(x.shape[1] for x, _ in blocks)

        def pad(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
            extra = length - x.shape[1]
            return torch.nn.functional.pad(x, (0, 0, 0, extra)), torch.nn.functional.pad(m.to(mask.dtype), (0, extra))

        padded = [pad(x, m) for x, m in blocks]
        model_kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=torch.cat([x for x, _ in padded]))
        model_kwargs["attention_mask"] = torch.cat([m for _, m in padded])
        return model_kwargs

    def _repeat_rows(self, inputs: dict) -> dict:
        """The decoder inputs for every block of rows: transformers repeats them for ``[cond; uncond]``,
        the named prompts' blocks need them too."""
        blocks = len(self.processor.branches)
        for key in ("decoder_input_ids", "decoder_attention_mask"):
            value = inputs.get(key)
            if value is not None:
                inputs[key] = value[: value.shape[0] // 2].repeat((blocks, 1))
        return inputs


# model attributes guide_musicgen replaces while it runs (restored on exit)
PATCHED = ("_prepare_text_encoder_kwargs_for_generation", "prepare_inputs_for_generation")


def check_tokens(tokens: Mapping[str, Tensor], who: str) -> None:
    if "input_ids" not in tokens:
        raise GuidanceError(f"{who}: expected tokenized text with 'input_ids' (and 'attention_mask'), e.g. "
                            "processor(text=['noise'], return_tensors='pt')")


def guide_musicgen(model: Any, guider: Guider, negative: Mapping[str, Tensor] | None = None,
                   prompts: Mapping[str, Mapping[str, Tensor]] | None = None) -> MusicGenGuide:
    """Drive ``model.generate`` with ``guider`` on the logits inside a ``with`` block (see the module
    docstring); ``negative``: tokenized negative text (one prompt, or one per prompt); ``prompts``:
    named tokenized prompts, each a branch of the decoder batch (Perp-Neg's ``negative``)."""
    return MusicGenGuide(model, guider, negative, prompts)
