"""Wan 2.1 / 2.2 (``WanPipeline``): a flow-matching transformer on latents ``[B, C, F, H, W]``
with a T5 text encoder; the condition is ``encoder_hidden_states``.

The pipeline runs its CFG branches as two separate transformer calls per step (inside
``cache_context("cond")`` / ``("uncond")``), so the adapter runs them one at a time too by default
(``guide(batch=True)`` batches them; the tiny-model outputs agree to 1e-6). The adapter's branches
run inside the pipeline's ``"cond"`` cache context; with a diffusers cache hook enabled the
unconditional branch would share it (none is enabled by default).

Wan 2.2 A14B has two experts: ``transformer`` (high noise) for ``t >= boundary_ratio`` and
``transformer_2`` (low noise) below, with CFG scales ``guidance_scale`` and ``guidance_scale_2``.
Both are intercepted; per-expert scales are a piecewise scale over ``t`` switching at the same
boundary (:func:`expert_scale`). ``num_frames - 1`` must be a multiple of the VAE's temporal factor.
"""

from __future__ import annotations

from ...core.scale import Piecewise
from ..base import Family, register_family
from ..image.sd import encode  # (positive, negative) embeddings, as SD's encode_prompt


def frames(config_of) -> tuple[int, int]:
    return int(config_of("vae").get("scale_factor_temporal", 4)), 1


WAN = register_family(Family(
    name="wan",
    pipelines=("WanPipeline",),
    denoiser="transformer",
    experts=("transformer_2",),
    sample="hidden_states",
    encode=encode,
    conditions={"encoder_hidden_states": "prompt_embeds"},
    layout="BCFHW",
    cfg_scale=("guidance_scale", "guidance_scale_2"),
    frames=frames,
    batch=False,
    modality="video",
    samples_kwarg="num_videos_per_prompt",
    read_output=lambda pipe, result: (result.frames, 16),
))


def expert_scale(high: float, low: float, boundary: float) -> Piecewise:
    """Wan 2.2's per-expert CFG scales: ``high`` where ``t >= boundary`` (the ``transformer``
    expert), ``low`` below (``transformer_2``), e.g. ``expert_scale(4.0, 3.0, 0.875)`` for T2V A14B."""
    return Piecewise(values=(high, low), at=(boundary, 0.0), coordinate="t")


def pipeline_expert_scale(pipe, high: float, low: float) -> Piecewise:
    """:func:`expert_scale` at the pipeline's own ``boundary_ratio``."""
    return expert_scale(high, low, float(pipe.config.boundary_ratio))
