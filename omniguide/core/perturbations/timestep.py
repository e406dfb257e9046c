"""Time-step guidance's perturbation: Gaussian noise on the time-step embedding (Sadat et al. 2025,
"No Training, No Problem: Rethinking Classifier-Free Guidance for Diffusion Models", arXiv:2407.02687,
Sec. 5 and App. G):

    t_emb' = t_emb + s * t^power * std(t_emb) * n,     n ~ N(0, I)

``std`` is the standard deviation of the whole embedding tensor (the paper's ``t_emb.std()``), ``t``
the model time in [0, 1] (the paper's power schedule; ``power = 0`` is its constant schedule). The
noise acts on the output of the time-step embedding modules: diffusers' ``time_embedding`` (UNets)
and ``*.timestep_embedder`` (DiT, PixArt, SD3, Flux -- for SD3 and Flux before the pooled-text
projection is added), or the modules ``layers`` names (any module; the outermost of those matched:
Stable Audio's ``timestep_proj``, which its family declares as its ``time_embedding`` part).
:class:`TimestepNoise` is the per-step perturbation; the guider builds it with ``at(step)``
(:class:`~omniguide.core.branch.StepPerturbation`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..branch import StepPerturbation
from ..errors import GuidanceError
from .base import LayerPerturbation, Seeded, check_fired, forward_hooks
from .selection import select

EMBEDDING_NAMES = ("time_embedding", "timestep_embedder")


def timestep_embedders(root: nn.Module) -> dict[str, nn.Module]:
    """The time-step embedding modules of a diffusers denoiser (by their diffusers attribute names)."""
    return {name: m for name, m in root.named_modules() if name.rsplit(".", 1)[-1] in EMBEDDING_NAMES}


def embedding_targets(root: nn.Module, layers, who: str) -> dict[str, nn.Module]:
    """The modules whose output TSG perturbs: ``layers`` (any submodule, the outermost of those matched;
    a family's declared time embedding) or, without them, the diffusers time-step embedders."""
    if layers:
        chosen = select(root, layers, dict(list(root.named_modules())[1:]), who, "module")
        return {n: m for n, m in chosen.items() if not any(n.startswith(o + ".") for o in chosen)}
    candidates = timestep_embedders(root)
    if not candidates:
        raise GuidanceError(f"{who}: {type(root).__name__} has no time-step embedding module "
                            f"({' or '.join(EMBEDDING_NAMES)}); name it with layers=[...]")
    return candidates


@dataclass(frozen=True)
class TimestepNoise(LayerPerturbation):
    """Add ``scale * std(emb) * n`` to the output of the selected time-step embedding modules
    (``layers=None``: all of them). ``generator`` draws ``n``."""

    scale: float = 1.0
    generator: torch.Generator = field(default_factory=torch.Generator, compare=False, repr=False)

    who = "tsg"
    part = "time_embedding"

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        return embedding_targets(module, self.layers, self.who)

    @contextlib.contextmanager
    def _run(self, module: nn.Module, sample: Tensor) -> Iterator:
        targets = self.targets(module)
        fired = dict.fromkeys(targets, 0)

        def noisy(name):
            def hook(embedder, args, output):
                fired[name] += 1
                n = torch.randn(output.shape, generator=self.generator, dtype=torch.float32).to(output)
                return output + float(self.scale) * output.float().std().to(output.dtype) * n
            return hook

        with forward_hooks(targets, noisy):
            yield
        check_fired(fired, self.who, "a call of the embedding")


@dataclass(frozen=True)
class TimestepNoiseSchedule(Seeded, LayerPerturbation, StepPerturbation):
    """TSG's per-step perturbation: :class:`TimestepNoise` with ``scale = noise * t^power`` at the step's
    model time ``t`` (the paper's power schedule). ``seed`` seeds one generator for the run."""

    noise: float = 1.0
    power: float = 0.0
    seed: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator, compare=False, repr=False)

    who = "tsg"
    part = "time_embedding"

    def at(self, step) -> TimestepNoise:
        t = step.coordinate("t")
        t = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        return TimestepNoise(self.layers, scale=float(self.noise) * t ** float(self.power), generator=self.generator)

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        return embedding_targets(module, self.layers, self.who)
