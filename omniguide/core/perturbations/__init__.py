"""Perturbations: what a perturbed branch changes inside the model while (and only while) it runs.

A perturbation is called with the denoiser's module (as its ModelCall declares it) and the forward
pass's sample, and returns a context manager; the executor enters it around that branch's forward
pass only (see :class:`~omniguide.core.branch.Perturbation`). Modules are diffusers-style and duck-typed
(this package imports torch only):

* :mod:`.attention` -- :class:`IdentityAttention` (PAG, Ahn et al. 2024, arXiv:2403.17377): the selected
  self-attention maps are the identity, so ``softmax(QK^T/sqrt(d)) V`` becomes ``V``;
  :class:`BlurredQueries` (SEG, Hong 2024, arXiv:2408.00760): the self-attention queries are
  Gaussian-blurred on their token grid (:mod:`.blur`; 2-D for images from the sample's aspect ratio, per
  frame for video, 1-D for audio); ``sigma = inf`` replaces them by their mean;
* :mod:`.skip` -- :class:`SkipBlocks` (skip-layer guidance, SD3.5 / STG arXiv:2411.18664): a block returns
  its input;
* :mod:`.tokens` (TPG's token shuffle), :mod:`.timestep` (TSG's noisy time-step embedding, a per-step
  perturbation), :mod:`.dropping` (S²-Guidance's random block dropping), :mod:`.negative` (NAG and VSF:
  positive and negative rows in one pass), :mod:`.sparse` (PLADIS's sparse attention, entmax) and
  :mod:`.record` (SAG's attention-map recorder); they share :mod:`.sdpa` (intercepting scaled-dot-product
  attention; context-attention modules) and :mod:`.base` (the common dataclass, forward patching and
  hooks, and their removal).

Layers are chosen with *selectors* (:mod:`.selection`): an int (a block of a transformer's block list;
negative counts from the end), ``"mid"``, ``"down"``, ``"up"``, ``"down.1"``, ``"up.0"`` (UNet regions), or a
module name, name prefix or glob (``"transformer_blocks.3"``, ``"*.attn1"``). ``None`` means the
method's default. A selector that matches nothing is an error naming it, and a selected module that
never runs during the forward pass is an error too: a perturbed branch never silently equals ``cond``.
Hooks are removed when the branch ends, also when its forward pass raises.
"""

from .attention import BlurredQueries, IdentityAttention
from .base import LayerPerturbation, check_fired, patched_forwards
from .blur import INF_BLUR, blur_queries, gaussian_blur, gaussian_kernel_size, token_grid
from .dropping import DroppedBlocks
from .negative import FlippedValues, NegativeContext, NormalizedAttention, nag_combine
from .record import AttentionRecorder
from .sdpa import InterceptSDPA, attention_logits, context_attention, is_context_attention
from .selection import (
    BLOCK_LISTS,
    UNET_REGIONS,
    Selector,
    as_selectors,
    block_modules,
    default_attention_layers,
    default_skip_layers,
    is_attention,
    is_self_attention,
    main_blocks,
    select,
    select_self_attention,
)
from .skip import OUTPUT_ORDER, SkipBlocks
from .sparse import SparseAttention, entmax15, sparsemax
from .timestep import TimestepNoise, TimestepNoiseSchedule, timestep_embedders
from .tokens import ShuffledTokens, default_token_layers

__all__ = [
    "as_selectors", "attention_logits", "AttentionRecorder", "BLOCK_LISTS", "block_modules", "blur_queries",
    "BlurredQueries", "check_fired", "context_attention", "default_attention_layers", "default_skip_layers",
    "default_token_layers", "DroppedBlocks", "entmax15", "FlippedValues", "gaussian_blur", "gaussian_kernel_size",
    "IdentityAttention", "INF_BLUR", "InterceptSDPA", "is_attention", "is_context_attention", "is_self_attention",
    "LayerPerturbation", "main_blocks", "nag_combine", "NegativeContext", "NormalizedAttention", "OUTPUT_ORDER",
    "patched_forwards", "select", "select_self_attention", "Selector", "ShuffledTokens", "SkipBlocks",
    "SparseAttention", "sparsemax", "timestep_embedders", "TimestepNoise", "TimestepNoiseSchedule", "token_grid",
    "UNET_REGIONS",
]
