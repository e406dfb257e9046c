"""A small pixel-space text-to-image diffusion pipeline: a diffusers ``UNet2DConditionModel`` on RGB
in [-1, 1], a tiny CLIP text encoder, a diffusers scheduler (DDIM for eps/v models,
flow-matching Euler for rectified-flow ones). Saved and loaded with ``save_pretrained`` /
``from_pretrained`` like any diffusers pipeline.

``encode_prompt`` has Stable Diffusion's signature, so the pipeline adapter (``guide(pipe, ...)``,
family ``pixel``) and score distillation's priors treat it like an SD-family pipeline; it is the
3D prior of the zoo (trained on multi-view renders of coloured primitives, see ``data.py``).
The architecture follows the project's small text-to-image model (issue 7's shapes model: a
UNet2DConditionModel with a tiny CLIP encoder in pixel space) so the two can share this class.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from ...core.errors import GuidanceError
from ...modalities.base import Family, register_family
from ...modalities.image.sd import encode as sd_encode


class PixelDiffusionPipeline(DiffusionPipeline):
    """``unet`` + ``text_encoder`` + ``tokenizer`` + ``scheduler``, no VAE (pixel space)."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[B, max_length]``; a prompt longer than the encoder takes is an error, never truncated."""
        tok = self.tokenizer
        for p in prompts:
            n = len(tok(p).input_ids)
            if n > tok.model_max_length:
                raise GuidanceError(f"prompt {p!r} is {n} tokens; this text encoder takes at most "
                                    f"{tok.model_max_length}")
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids

    def _embed(self, prompts: list[str], device) -> torch.Tensor:
        ids = self.tokenize(prompts).to(device or self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def encode_prompt(self, prompt, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None):
        """``(prompt_embeds, negative_prompt_embeds)`` as Stable Diffusion's ``encode_prompt``
        returns them (the negative defaults to ``""``; None without CFG)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else None
        if prompt_embeds is None:
            prompt_embeds = self._embed(prompts, device)
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompt if negative_prompt is not None else ""
            negatives = [negative] * batch if isinstance(negative, str) else list(negative)
            negative_prompt_embeds = self._embed(negatives, device)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 5.0, num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, output_type: str = "pt", return_dict: bool = True):
        """Text-to-image with classifier-free guidance ``u + w (c - u)`` (``guidance_scale``); images in [0, 1]."""
        size = self.unet.config.sample_size
        height, width = height or size, width or size
        device = self.unet.device
        cfg = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(prompt, device, num_images_per_prompt, cfg, negative_prompt)
        shape = (cond.shape[0], self.unet.config.in_channels, height, width)
        x = torch.randn(shape, generator=generator, dtype=cond.dtype).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = torch.cat([x, x]) if cfg else x
            if hasattr(self.scheduler, "scale_model_input"):    # flow-matching schedulers take x as is
                inp = self.scheduler.scale_model_input(inp, t)
            emb = torch.cat([cond, uncond]) if cfg else cond
            out = self.unet(inp, t, encoder_hidden_states=emb, return_dict=False)[0]
            if cfg:
                c, u = out.chunk(2)
                out = u + guidance_scale * (c - u)
            x = self.scheduler.step(out, t, x, return_dict=False)[0]
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().float().numpy()
        elif output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().float().numpy())
        return ImagePipelineOutput(images=images) if return_dict else (images,)


PIXEL = register_family(Family(
    name="pixel",
    pipelines=(f"{__name__}:PixelDiffusionPipeline",),
    denoiser="unet",
    sample="sample",
    encode=sd_encode,
    conditions={"encoder_hidden_states": "prompt_embeds"},
))
