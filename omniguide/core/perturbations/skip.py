"""Skip-layer guidance's perturbation: selected transformer blocks return their input."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import GuidanceError
from .base import LayerPerturbation, check_fired, patched_forwards
from .selection import block_modules, default_skip_layers, select


@dataclass(frozen=True)
class SkipBlocks(LayerPerturbation):
    """Skip-layer guidance's perturbation: each selected transformer block returns its input.

    Stability AI's SD3.5 skip-layer guidance (layers 7-9, diffusers ``pipeline_stable_diffusion_3``)
    and STG (Hyung et al., arXiv:2411.18664). Tuple-returning blocks (joint text+image streams) return
    each stream's input in the block's own output order (``None`` stays ``None``)."""

    who = "skip-layer"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        layers = self.layers or default_skip_layers(module)
        return select(module, layers, block_modules(module), self.who, "transformer block")

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def wrap(name, block, forward):
            signature = inspect.signature(forward)

            def skipped_forward(*args, **kwargs):
                fired[name] += 1
                try:
                    bound = signature.bind(*args, **kwargs).arguments
                except TypeError:
                    bound = {}
                hidden = bound.get("hidden_states", kwargs.get("hidden_states", args[0] if args else None))
                context = bound.get("encoder_hidden_states", kwargs.get("encoder_hidden_states"))
                if not isinstance(hidden, Tensor):
                    raise GuidanceError(f"skip-layer: cannot find the input hidden states of block {name}")
                # the block still runs once so its output structure is known exactly
                out = forward(*args, **kwargs)
                return _inputs_as_outputs(out, hidden, context, name, output_order(block))
            return skipped_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, "a call of the block")


# output order of diffusers' tuple-returning blocks, used when both streams have the same shape; matched
# by class (subclasses too) in the modules already loaded (such a block means its module is imported)
OUTPUT_ORDER = {
    "diffusers.models.attention:JointTransformerBlock": ("context", "hidden"),
    "diffusers.models.transformers.transformer_flux:FluxTransformerBlock": ("context", "hidden"),
    "diffusers.models.transformers.transformer_flux:FluxSingleTransformerBlock": ("context", "hidden"),
    "diffusers.models.transformers.cogvideox_transformer_3d:CogVideoXBlock": ("hidden", "context"),
    "diffusers.models.transformers.transformer_hunyuan_video:HunyuanVideoTransformerBlock": ("hidden", "context"),
}


def output_order(block: nn.Module) -> tuple[str, str] | None:
    """The stream order of ``block``'s tuple output when its class (or a base) is in :data:`OUTPUT_ORDER`."""
    for spec, order in OUTPUT_ORDER.items():
        module, _, name = spec.partition(":")
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(block, cls):
            return order
    return None


def _inputs_as_outputs(out: Any, hidden: Tensor, context: Tensor | None, name: str,
                       order: tuple[str, str] | None = None) -> Any:
    if isinstance(out, Tensor):
        return hidden
    if not isinstance(out, (tuple, list)):
        raise GuidanceError(f"skip-layer: block {name} returned {type(out).__name__}; cannot skip it")
    mapped = []
    for item in out:
        if item is None or not isinstance(item, Tensor):
            mapped.append(item)
            continue
        is_hidden = item.shape == hidden.shape
        is_context = context is not None and item.shape == context.shape
        if is_hidden and is_context and order is not None and len(out) == 2:
            is_hidden = order[len(mapped)] == "hidden"
            is_context = not is_hidden
        if is_hidden == is_context:
            raise GuidanceError(f"skip-layer: cannot tell which input block {name} returns for an output of shape "
                                f"{tuple(item.shape)} (hidden {tuple(hidden.shape)}, context "
                                f"{None if context is None else tuple(context.shape)})")
        mapped.append(hidden if is_hidden else context)
    return type(out)(mapped)
