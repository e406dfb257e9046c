"""Attention perturbations: PAG's identity self-attention and SEG's blurred queries.

Both act on the selected diffusers-style self-attention modules (duck-typed, see
:func:`~.selection.is_self_attention`); the blur and its token grid live in :mod:`.blur`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import GuidanceError
from .base import LayerPerturbation, check_fired, patched_forwards
from .blur import blur_queries, token_grid
from .selection import select_self_attention


# -- PAG: identity self-attention ----------------------------------------------------------------
class _IdentitySDPA(TorchFunctionMode):
    """Answers ``F.scaled_dot_product_attention(q, k, v)`` with ``v`` (attention map = identity)."""

    def __init__(self, name: str, fired: dict[str, int]):
        super().__init__()
        self.name, self.fired = name, fired

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query = kwargs.get("query", args[0] if args else None)
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        if query.shape[-2] != value.shape[-2]:
            # diffusers silently falls back to normal attention here; a perturbed branch must differ
            raise GuidanceError(
                f"identity attention in {self.name}: query length {query.shape[-2]} != key/value length "
                f"{value.shape[-2]}, so softmax cannot be replaced by the identity (a cross-attention?)"
            )
        if value.ndim >= 3 and value.shape[-3] != query.shape[-3]:  # grouped-query attention
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        self.fired[self.name] += 1
        return value


@dataclass(frozen=True)
class IdentityAttention(LayerPerturbation):
    """PAG's perturbation: selected self-attention outputs ``V`` instead of ``softmax(QK^T/sqrt d) V``.

    Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance",
    arXiv:2403.17377. Default layers: the UNet mid block's self-attention, or a transformer's middle block."""

    who = "pag"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        return select_self_attention(module, self.layers, self.who)

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def wrap(name, attention, forward):
            def identity_forward(*args, **kwargs):
                with _IdentitySDPA(name, fired):
                    return forward(*args, **kwargs)
            return identity_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, f"scaled_dot_product_attention (processor {_processor(targets)})")


def _processor(targets: dict[str, nn.Module]) -> str:
    module = next(iter(targets.values()))
    return type(getattr(module, "processor", module)).__name__


# -- SEG: blurred queries -------------------------------------------------------------------------
@dataclass(frozen=True)
class BlurredQueries(LayerPerturbation):
    """SEG's perturbation: Gaussian-blur the self-attention queries ``Q = X W_q`` on their token grid.

    Hong, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced Energy Curvature of
    Attention", arXiv:2408.00760. ``sigma = inf`` (the default, the paper's limit) replaces every
    query by the mean query. The grid follows the sample's aspect ratio unless ``grid`` is given.
    The blur acts on the output of ``to_q``, before any q-norm (SEG-SDXL blurs right after ``to_q``)."""

    sigma: float = math.inf
    grid: tuple[int, ...] | None = None

    who = "seg"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        return select_self_attention(module, self.layers, self.who)

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def blur_hook(name):
            def hook(attention, args, output):
                fired[name] += 1
                if self.grid is not None:
                    frames, grid = output.shape[1] // math.prod(self.grid), tuple(self.grid)
                else:
                    frames, grid = token_grid(output.shape[1], output.shape[0], tuple(sample.shape))
                return blur_queries(output, self.sigma, frames, grid)
            return hook

        handles = []
        try:
            for name, attention in targets.items():
                handles.append(attention.to_q.register_forward_hook(blur_hook(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        check_fired(fired, self.who, "the query projection to_q")
