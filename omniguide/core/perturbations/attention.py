"""Attention perturbations: PAG's identity self-attention and SEG's blurred queries.

Both act on the selected diffusers-style self-attention modules (duck-typed, see
:func:`~.selection.is_self_attention`); the blur and its token grid live in :mod:`.blur`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import GuidanceError
from .base import LayerPerturbation, check_fired, forward_hooks, patched_forwards
from .blur import blur_queries, token_grid
from .sdpa import InterceptSDPA, repeat_heads
from .selection import select_self_attention


# -- PAG: identity self-attention ----------------------------------------------------------------
def _identity(name: str, fired: dict[str, int]) -> Callable[..., Tensor]:
    """An SDPA handler answering ``F.scaled_dot_product_attention(q, k, v)`` with ``v`` (attention map = identity)."""
    def identity(query: Tensor, value: Tensor, **_) -> Tensor:
        if query.shape[-2] != value.shape[-2]:
            # diffusers silently falls back to normal attention here; a perturbed branch must differ
            raise GuidanceError(
                f"identity attention in {name}: query length {query.shape[-2]} != key/value length "
                f"{value.shape[-2]}, so softmax cannot be replaced by the identity (a cross-attention?)"
            )
        fired[name] += 1
        return repeat_heads(value, query.shape[-3]) if value.ndim >= 3 else value   # grouped-query attention
    return identity


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
                with InterceptSDPA(_identity(name, fired)):
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

        with forward_hooks({name: attention.to_q for name, attention in targets.items()}, blur_hook):
            yield
        check_fired(fired, self.who, "the query projection to_q")
