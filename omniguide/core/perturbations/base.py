"""What every layer perturbation shares: the dataclass base, forward patching with guaranteed
removal, and the check that every selected module really ran."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..errors import GuidanceError
from .selection import Selector, as_selectors


# -- patching forwards, with guaranteed removal ----------------------------------------------------
@contextlib.contextmanager
def patched_forwards(
    modules: dict[str, nn.Module], wrap: Callable[[str, nn.Module, Callable], Callable]
) -> Iterator:
    """Replace ``module.forward`` by ``wrap(name, module, forward)`` while the block runs."""
    saved = []
    try:
        for name, module in modules.items():
            saved.append((module, module.__dict__.get("forward")))
            module.forward = wrap(name, module, module.forward)
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


@contextlib.contextmanager
def forward_hooks(modules: dict[str, nn.Module], hook: Callable[[str], Callable]) -> Iterator:
    """Register ``hook(name)`` as each module's forward hook while the block runs."""
    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_fired(fired: dict[str, int], who: str, what: str) -> None:
    """A selected module that never ran is an error: a perturbed branch never silently equals ``cond``."""
    idle = [name for name, count in fired.items() if count == 0]
    if idle:
        raise GuidanceError(f"{who}: {what} never happened in {idle[0]} during the forward pass{_more(idle)}")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


@dataclass(frozen=True)
class LayerPerturbation:
    """Base of the perturbations: ``layers`` (selectors; ``None`` for the method's default).

    ``perturbation(module, sample)`` returns the context manager ``_run(module, sample)`` of the
    subclass; ``module`` is the denoiser's ``nn.Module`` as its ModelCall declares it, ``sample``
    the forward pass's sample.

    ``part`` names the denoiser part the perturbation acts on by default (``"time_embedding"``
    for TSG); a pipeline family that declares where that part is (``Family.parts``, e.g. Stable
    Audio's ``timestep_proj``) has the adapter build the perturbation ``on`` those modules."""

    layers: tuple[Selector, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", as_selectors(self.layers, f"{self.who}.layers"))

    who = "perturbation"
    part: ClassVar[str | None] = None

    def on(self, names: tuple[str, ...]) -> LayerPerturbation:
        """This perturbation on the named modules (a family's declared ``part``)."""
        return dataclasses.replace(self, layers=tuple(names))

    def __call__(self, module: nn.Module, sample: Tensor) -> contextlib.AbstractContextManager:
        return self._run(module, sample)

    def targets(self, module: nn.Module) -> dict[str, nn.Module]:
        """The modules of ``module`` this perturbation acts on (a one-line error when none match).
        Adapters call it before any work starts, so a guider the model cannot serve fails early."""
        raise NotImplementedError

    def _run(self, module: nn.Module, sample: Tensor) -> contextlib.AbstractContextManager:
        raise NotImplementedError


class Seeded:
    """A perturbation that draws from its own ``generator`` (a field), seeded with its ``seed`` field
    when made and again by ``reseed()`` (a guider's ``reset``), so runs are reproducible."""

    def __post_init__(self):
        super().__post_init__()
        self.reseed()

    def reseed(self) -> None:
        self.generator.manual_seed(int(self.seed))
