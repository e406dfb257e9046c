"""``PixelDiffusionPipeline``: the zoo's text-to-image pipeline in pixel space, shaped like
``StableDiffusionPipeline``. It serves the shapes model (``zoo/shapes``, as ``ShapesPipeline``) and
the 3D prior of score distillation (``zoo/primitives3d``), and :func:`build_tokenizer` builds the
tokenizer of both.

Components: ``unet`` (``UNet2DConditionModel`` on RGB in [-1, 1], no VAE), ``text_encoder``
(``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``scheduler`` (DDIM on the training
schedule for eps/v models, flow-matching Euler for rectified-flow ones). ``encode_prompt``,
``__call__``, the classifier-free guidance batch
``cat([negative, positive])`` / ``chunk(2)`` / ``u + w (c - u)``, ``guidance_rescale``,
``prepare_latents`` and the step callbacks follow Stable Diffusion, so code written against SD
(guidance wrappers, callbacks, attention hooks for PAG/SEG) runs on it unchanged. What SD has and
this lacks: VAE, safety checker, IP-Adapter, LoRA/textual-inversion loaders, custom timesteps.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..distillation.pipelines import register_pipeline
from ..modalities.base import register_family
from ..modalities.image.sd import SD


@register_pipeline
class PixelDiffusionPipeline(DiffusionPipeline):
    """Images from captions such as ``"a red circle on the left"`` (shapes) or ``"a red cube, side view"``
    (the 3D prior)."""

    model_cpu_offload_seq = "text_encoder->unet"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.vae_scale_factor = 1   # pixel space: the "latents" are the image
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> PixelDiffusionPipeline:
        """``DiffusionPipeline.from_pretrained`` with ``dtype=torch.float32`` by default, so weights
        stored in float16 to keep the folder small come back as float32 on any device."""
        if "torch_dtype" not in kwargs:
            kwargs.setdefault("dtype", torch.float32)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # -- the properties SD exposes ---------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        """CFG runs (a doubled batch) when ``guidance_scale > 1``, as in SD."""
        return self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # -- text --------------------------------------------------------------------------------
    def _encode_text(self, text: list[str], device: torch.device, max_length: int,
                     clip_skip: int | None = None) -> torch.Tensor:
        ids = self.tokenizer(text, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="pt").input_ids.to(device)
        if clip_skip is None:
            return self.text_encoder(ids)[0]
        hidden = self.text_encoder(ids, output_hidden_states=True)[-1][-(clip_skip + 1)]
        return self.text_encoder.text_model.final_layer_norm(hidden)

    def encode_prompt(self, prompt: str | list[str] | None, device: torch.device | None = None,
                      num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                      lora_scale: float | None = None, clip_skip: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)`` like SD: each repeated ``num_images_per_prompt``
        times; the negative is None without CFG and the encoded ``""`` when no negative is given.
        ``lora_scale`` is accepted for SD compatibility and ignored (this pipeline loads no LoRA)."""
        device = device or self._execution_device
        batch_size = _batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            text = [prompt] if isinstance(prompt, str) else prompt
            prompt_embeds = self._encode_text(text, device, self.tokenizer.model_max_length, clip_skip)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                uncond_tokens = [""] * batch_size
            elif prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got "
                                f"{type(negative_prompt)} != {type(prompt)}.")
            elif isinstance(negative_prompt, str):
                uncond_tokens = [negative_prompt]
            elif batch_size != len(negative_prompt):
                raise ValueError(f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but "
                                 f"`prompt`: {prompt} has batch size {batch_size}. Please make sure that passed "
                                 "`negative_prompt` matches the batch size of `prompt`.")
            else:
                uncond_tokens = negative_prompt
            negative_prompt_embeds = self._encode_text(uncond_tokens, device, prompt_embeds.shape[1])
        if do_classifier_free_guidance:
            seq_len = negative_prompt_embeds.shape[1]
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat(1, num_images_per_prompt, 1).view(
                batch_size * num_images_per_prompt, seq_len, -1)
        return prompt_embeds, negative_prompt_embeds

    # -- checks and latents ------------------------------------------------------------------
    def check_inputs(self, prompt, height: int, width: int, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, callback_on_step_end_tensor_inputs=None) -> None:
        """SD's input checks (the UNet needs sides divisible by 2 per down-sampling level)."""
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % factor != 0 or width % factor != 0:
            raise ValueError(f"`height` and `width` have to be divisible by {factor} but are {height} and {width}.")
        if callback_on_step_end_tensor_inputs is not None and not all(
                k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs):
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                             f"but found {bad}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please "
                             "make sure to only forward one of the two.")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and "
                             "`prompt_embeds` undefined.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
                             f" {negative_prompt_embeds}. Please make sure to only forward one of the two.")
        if prompt_embeds is not None and negative_prompt_embeds is not None \
                and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed "
                             f"directly, but got: `prompt_embeds` {prompt_embeds.shape} != `negative_prompt_embeds`"
                             f" {negative_prompt_embeds.shape}.")

    def prepare_latents(self, batch_size: int, num_channels_latents: int, height: int, width: int,
                        dtype: torch.dtype, device: torch.device, generator, latents: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Gaussian noise from ``generator`` (or the given ``latents``) times ``init_noise_sigma``."""
        shape = (batch_size, num_channels_latents, int(height) // self.vae_scale_factor,
                 int(width) // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"You have passed a list of generators of length {len(generator)}, but requested an "
                             f"effective batch size of {batch_size}. Make sure the batch size matches the length "
                             "of the generators.")
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None \
            else latents.to(device)
        return latents * getattr(self.scheduler, "init_noise_sigma", 1.0)   # flow matching has none: 1

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 5.0,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (SD's signature)
                 guidance_rescale: float = 0.0,
                 clip_skip: int | None = None) -> ImagePipelineOutput | tuple:
        """Images for ``prompt``: PIL list (``"pil"``), numpy ``[B, H, W, 3]`` (``"np"``) or torch
        ``[B, 3, H, W]`` (``"pt"``) in [0, 1], or the raw ``[-1, 1]`` sample (``"latent"``)."""
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = guidance_scale, guidance_rescale, clip_skip
        self._interrupt = False
        batch_size = _batch_size(prompt, prompt_embeds)
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, clip_skip=self.clip_skip)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch_size * num_images_per_prompt, self.unet.config.in_channels, height,
                                       width, prompt_embeds.dtype, device, generator, latents)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                if hasattr(self.scheduler, "scale_model_input"):    # flow-matching schedulers take x as is
                    latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                                       return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                if self.do_classifier_free_guidance and self.guidance_rescale > 0.0:
                    noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    values = {"latents": latents, "prompt_embeds": prompt_embeds,
                              "negative_prompt_embeds": negative_prompt_embeds}
                    asked = {k: values[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, asked)
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        image = latents if output_type == "latent" else \
            self.image_processor.postprocess(latents, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


def _batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """SD's batch size: one prompt, a list of them, or the given embeddings' rows."""
    return 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]


def _learn_merges(words: list[str], ties: str = "smallest") -> list[tuple[str, str]]:
    """A deterministic BPE: merge the most frequent adjacent pair (counted over ``words`` with their
    repeats) until every word is one symbol; among equally frequent pairs the ``ties`` one
    (``smallest`` or ``largest`` in string order; the 3D prior was built with ``largest``).
    ``</w>`` marks a word's last symbol, as in CLIP."""
    counts = Counter(w.lower() for w in words)
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, n in counts.items():
            for pair in zip(pieces[w], pieces[w][1:]):
                pairs[pair] += n
        if not pairs:
            return merges
        top = max(pairs.values())
        tied = sorted(p for p, n in pairs.items() if n == top)
        best = tied[-1] if ties == "largest" else tied[0]
        merges.append(best)
        for w, seq in pieces.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            pieces[w] = out


def build_tokenizer(words: list[str], max_length: int = 16, ties: str = "smallest") -> CLIPTokenizer:
    """A ``CLIPTokenizer`` built offline with identical ids on every run: specials 0/1
    (``<|startoftext|>``, ``<|endoftext|>``, also the padding), the 256 byte-level symbols (sorted),
    the same with ``</w>``, then one token per merge. Every word of ``words`` is one token; any other
    text falls back to characters."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())   # the set comes back in random order
    merges = _learn_merges(words, ties)
    symbols = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet),
               *(a + b for a, b in merges)]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")


# guide() drives it as Stable Diffusion: the same encode_prompt, UNet call and scheduler contract.
PIXEL = register_family(dataclasses.replace(SD, name="pixel", pipelines=(f"{__name__}:PixelDiffusionPipeline",)))
