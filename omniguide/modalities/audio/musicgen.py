"""MusicGen (transformers' ``MusicgenForConditionalGeneration``): any omniguide guider on the logits.

    with guide_musicgen(model, APG(scale=3, space=None), negative=processor(text=["noise"], return_tensors="pt")):
        audio = model.generate(**processor(text=prompts, padding=True, return_tensors="pt"),
                               do_sample=True, max_new_tokens=256)

MusicGen's own CFG (``guidance_scale > 1``) runs the decoder on a doubled batch -- conditional rows
first, then rows whose text-encoder states are zeros -- and a
``ClassifierFreeGuidanceLogitsProcessor`` combines ``u + w (c - u)`` before any other processor
(temperature, top-k). Inside ``guide_musicgen`` the doubled batch is kept and that processor is
replaced, at the same place in the chain, by :class:`GuidedLogitsProcessor`, which hands the
conditional and unconditional logits of each decoding step to the guider:

* a logit vector is read as an ``x0`` prediction at a fixed noise level (``alpha = sigma = 1``,
  sample 0), so CFG, rescale (std over the vocabulary), APG (norms / projections over the
  vocabulary, per row = per sample and codebook), TCFG, CFG-Zero*, FDG and ``Terms`` act on the
  logits themselves; the layout is ``BD`` (rows x vocabulary);
* the step coordinate is the decoding step ``i / (N - 1)`` with ``N`` the new tokens, and the model
  time ``t = 1 - i / (N - 1)`` (1 at the first token, as at pure noise), so intervals and schedules
  over ``step`` or ``t`` apply over decoding steps; ``sigma`` is constant (1) and not meaningful;
* CFG++ (which re-anchors a diffusion sample) and guiders with extra branches (PAG, SEG,
  skip-layer, autoguidance) are refused: the decoder's batch holds only the two conditions.

The unconditional rows are computed at every step whatever the guider asks (the doubled batch is
transformers'), so an interval changes the result, not the cost: ``nfe`` counts 2 per step.
``negative`` (tokenized text) replaces the zero states of the unconditional rows with the
negative prompt's text-encoder states (padded with masked zeros to a common length), which
transformers' MusicGen has no argument for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ...core.axes import Axes
from ...core.errors import GuidanceError
from ...core.guider import STEP_INDEX, GuidanceStep, Guider, check_requirements
from ...core.noise import NoiseLevel
from ...core.prediction import Prediction

LAYOUT = "BD"


def _logits_processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class GuidedLogitsProcessor(_logits_processor_base()):
    """Combines ``[cond; uncond]`` logits rows with an omniguide guider (transformers' batched CFG
    layout: the first half of the rows is conditional). ``num_steps`` is the number of decoding
    steps (new tokens); ``nfe_per_step`` / ``guided_steps`` report the work."""

    def __init__(self, guider: Guider, num_steps: int | None = None):
        check_guider(guider)
        self.guider, self.num_steps = guider, num_steps
        self.axes = Axes.from_layout(LAYOUT)
        self.reset(num_steps)

    def reset(self, num_steps: int | None = None) -> None:
        self.num_steps = num_steps if num_steps is not None else self.num_steps
        self.index = 0
        self.nfe_per_step: list[int] = []
        self.guided_steps = 0
        self.guider.reset()

    def step(self, x: Tensor) -> GuidanceStep:
        n = max(int(self.num_steps or 1), 1)
        index = min(self.index, n - 1)
        progress = torch.as_tensor(index / max(n - 1, 1), dtype=torch.float64)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        noise = NoiseLevel(one, one, (1 - progress).to(device=x.device, dtype=x.dtype))
        return GuidanceStep(torch.zeros_like(x), noise, None, index, n, self.axes)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[0] != 2 * input_ids.shape[0]:
            raise GuidanceError(f"guided logits: expected [cond; uncond] rows (2 x {input_ids.shape[0]}), got "
                                f"{scores.shape[0]}; is generate() running with the doubled CFG batch?")
        cond, uncond = scores.float().split(input_ids.shape[0], dim=0)
        step = self.step(cond)
        needed = self.guider.branches(step)
        unknown = [b for b in needed if b not in ("cond", "uncond")]
        if unknown:
            raise GuidanceError(f"guided logits: the guider needs branch '{unknown[0]}' at step {step.index}; "
                                "MusicGen's batch holds only 'cond' and 'uncond'")
        values = {"cond": cond, "uncond": uncond}
        preds = {name: Prediction(values[name], "x0", step.x, step.noise) for name in needed}
        out = self.guider.combine(preds, step).x0
        if not torch.isfinite(out).any(dim=-1).all():
            raise GuidanceError(f"guided logits: step {step.index} gave a row without a finite logit")
        self.nfe_per_step.append(2)
        self.guided_steps += "uncond" in needed
        self.index += 1
        return out.to(scores.dtype)


def check_guider(guider: Guider) -> None:
    """Refuse guiders the logits processor cannot serve (one line naming the guider and why)."""
    check_requirements(guider, (STEP_INDEX,), "the MusicGen logits processor")
    extra = [name for name in guider.branch_defaults() if name not in ("cond", "uncond")]
    if extra:
        raise GuidanceError(f"guider '{guider.name or type(guider).__name__}' needs branch '{extra[0]}'; "
                            "MusicGen's batch holds only 'cond' and 'uncond'")


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

    def __init__(self, model: Any, guider: Guider, negative: Mapping[str, Tensor] | None = None):
        self.model, self.guider = model, guider
        self.processor = GuidedLogitsProcessor(guider)
        self.negative = dict(negative) if negative is not None else None
        if self.negative is not None and "input_ids" not in self.negative:
            raise GuidanceError("guide_musicgen(negative=...): expected tokenized text with 'input_ids' "
                                "(and 'attention_mask'), e.g. processor(text=['noise'], return_tensors='pt')")
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
        self._saved = {"encode": model.__dict__.get("_prepare_text_encoder_kwargs_for_generation")}
        original = model.generate
        model.generate = lambda *args, **kwargs: self._generate(original, *args, **kwargs)
        if self.negative is not None:
            encode = model._prepare_text_encoder_kwargs_for_generation
            model._prepare_text_encoder_kwargs_for_generation = (
                lambda *args, **kwargs: self._with_negative(encode(*args, **kwargs)))
        model._omniguide_guide = self
        return self

    def __exit__(self, *exc) -> bool:
        model = self.model
        model.__dict__.pop("generate", None)
        model.__dict__.pop("_omniguide_guide", None)
        model.__dict__.pop("_prepare_text_encoder_kwargs_for_generation", None)
        if self._saved.get("encode") is not None:
            model._prepare_text_encoder_kwargs_for_generation = self._saved["encode"]
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

    def _with_negative(self, model_kwargs: dict) -> dict:
        """Replace the zero (unconditional) half of the text-encoder states with the negative's."""
        from transformers.modeling_outputs import BaseModelOutput

        states = model_kwargs["encoder_outputs"].last_hidden_state
        half = states.shape[0] // 2
        mask = model_kwargs.get("attention_mask")
        ids = self.negative["input_ids"].to(states.device)
        neg_mask = self.negative.get("attention_mask", torch.ones_like(ids)).to(states.device)
        encoder = self.model.get_encoder()
        negative = encoder(input_ids=ids, attention_mask=neg_mask, return_dict=True).last_hidden_state
        if negative.shape[0] not in (1, half):
            raise GuidanceError(f"guide_musicgen(): {negative.shape[0]} negative prompts for {half} prompts; give one, "
                                "or one per prompt")
        negative, neg_mask = negative.expand(half, -1, -1), neg_mask.expand(half, -1)
        length = max(states.shape[1], negative.shape[1])

        def pad(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
            extra = length - x.shape[1]
            return (torch.nn.functional.pad(x, (0, 0, 0, extra)), torch.nn.functional.pad(m, (0, extra)))

        cond, cond_mask = pad(states[:half], mask[:half] if mask is not None else torch.ones(states.shape[:2],
                                                                                              dtype=torch.long))
        negative, neg_mask = pad(negative.to(states.dtype), neg_mask.to(cond_mask.dtype))
        model_kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=torch.cat([cond, negative]))
        model_kwargs["attention_mask"] = torch.cat([cond_mask, neg_mask.to(cond_mask.device)])
        return model_kwargs


def guide_musicgen(model: Any, guider: Guider, negative: Mapping[str, Tensor] | None = None) -> MusicGenGuide:
    """Drive ``model.generate`` with ``guider`` on the logits inside a ``with`` block (see the module
    docstring); ``negative``: tokenized negative text (one prompt, or one per prompt)."""
    return MusicGenGuide(model, guider, negative)
