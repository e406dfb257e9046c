"""Stochastic self-guidance's perturbation: a random subset of blocks is dropped at every call
(Chen et al. 2025, "S^2-Guidance: Stochastic Self Guidance for Training-Free Enhancement of Diffusion
Models", arXiv:2508.12880).

Each forward pass drops ``max(1, round(ratio * n))`` of the ``n`` candidate blocks, drawn uniformly
without replacement from the perturbation's own generator (a dropped block returns its input, as in
skip-layer guidance). Candidates default to the transformer's main blocks, or every transformer
block of a UNet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError, GuidanceError
from .base import LayerPerturbation, Seeded
from .selection import block_modules, main_blocks, select
from .skip import SkipBlocks


def default_drop_candidates(root: nn.Module) -> dict[str, nn.Module]:
    stack = main_blocks(root)
    if stack is not None:
        name, items = stack
        return {f"{name}.{i}": b for i, b in enumerate(items)}
    blocks = block_modules(root)
    if not blocks:
        raise GuidanceError(f"s2-guidance: {type(root).__name__} has no blocks to drop")
    return blocks


@dataclass(frozen=True)
class DroppedBlocks(Seeded, LayerPerturbation):
    """Drop a fresh random ``ratio`` of the candidate blocks at every call (see the module docstring)."""

    ratio: float = 0.1
    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, compare=False, repr=False)

    who = "s2-guidance"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < float(self.ratio) < 1.0:
            raise ConfigError("drop_ratio", f"a share of blocks in (0, 1), got {self.ratio}")

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        if self.layers:
            return select(module, self.layers, block_modules(module), self.who, "transformer block")
        return default_drop_candidates(module)

    def draw(self, module: nn.Module) -> tuple[str, ...]:
        """The names of the blocks dropped in the next pass."""
        names = list(self.targets(module))
        count = max(1, round(float(self.ratio) * len(names)))
        order = torch.randperm(len(names), generator=self.generator)[:count]
        return tuple(names[i] for i in sorted(order.tolist()))

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        with SkipBlocks(self.draw(module))(module, sample):
            yield
