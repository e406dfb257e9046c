"""Token perturbation guidance's perturbation: the input tokens of selected transformer blocks are
shuffled (Rajabi et al. 2025, "Token Perturbation Guidance for Diffusion Models", arXiv:2506.10036;
official TaatiTeam/Token-Perturbation-Guidance ``pipeline_sdxl_tpg.py``).

Each call of a selected block permutes its ``hidden_states`` along the token axis with one random
permutation shared by the batch (the official ``x[:, randperm(n)]``), drawn afresh at every call from
the perturbation's own ``torch.Generator`` (re-seeded by ``reseed``), so runs are reproducible. The
shuffle is norm-preserving: it changes where information sits, not how much there is.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import GuidanceError
from .base import LayerPerturbation, Seeded, check_fired, patched_forwards
from .selection import UNET_REGIONS, block_modules, main_blocks, select


def default_token_layers(root: nn.Module) -> tuple[str, ...]:
    """TPG's default: a UNet's down-region transformer blocks from the first quarter on (the official
    SDXL list ``d6``-``d23`` of 24); a transformer's first half of main blocks (our choice; the paper
    only reports UNets)."""
    blocks = list(block_modules(root))
    down = [n for n in blocks if n.startswith(UNET_REGIONS["down"] + ".")]
    if down:
        return tuple(down[len(down) // 4:])
    stack = main_blocks(root)
    if stack is None:
        raise GuidanceError(f"tpg: {type(root).__name__} has no transformer blocks to shuffle tokens in")
    name, items = stack
    return tuple(f"{name}.{i}" for i in range(max(1, len(items) // 2)))


@dataclass(frozen=True)
class ShuffledTokens(Seeded, LayerPerturbation):
    """Shuffle the input tokens of the selected transformer blocks (one permutation per call, shared by
    the batch). ``seed`` seeds the perturbation's generator; ``reseed()`` restarts it."""

    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, compare=False, repr=False)

    who = "tpg"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        layers = self.layers or default_token_layers(module)
        return select(module, layers, block_modules(module), self.who, "transformer block")

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def wrap(name, block, forward):
            signature = inspect.signature(forward)

            def shuffled_forward(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)
                hidden = bound.arguments.get("hidden_states")
                if not isinstance(hidden, Tensor) or hidden.ndim != 3:
                    raise GuidanceError(f"tpg: block {name} has no [batch, tokens, features] hidden_states to shuffle")
                order = torch.randperm(hidden.shape[1], generator=self.generator).to(hidden.device)
                bound.arguments["hidden_states"] = hidden[:, order]
                fired[name] += 1
                return forward(*bound.args, **bound.kwargs)
            return shuffled_forward

        with patched_forwards(targets, wrap):
            yield
        check_fired(fired, self.who, "a call of the block")
