"""How a denoiser is called: one small description the executor and the perturbations read.

Denoisers disagree on their calling convention. diffusers UNets take ``unet(sample, timestep,
encoder_hidden_states=...)``, its transformers ``hidden_states=`` and ``timestep=``, Flux feeds
``timestep / 1000``, outputs come as tensors, ``.sample`` or tuples, and some models predict a
learned variance next to the noise. A :class:`ModelCall` says all of it explicitly:

    ModelCall(unet)                                                  # unet(sample, t, **inputs)
    ModelCall(transformer, sample="hidden_states", timestep="timestep",
              shared={"img_ids", "txt_ids"})                         # Flux-style keywords
    ModelCall(lambda x, t, **k: net(x, t, **k), module=net)          # any callable + its module

``module`` is the ``nn.Module`` that perturbations (PAG, SEG, skip-layer) hook; it is the callable
itself when that is a module, and must be given otherwise -- nothing is found by searching
closures. ``shared`` names inputs that never carry a batch dimension (so the executor never
concatenates them when it batches branches, even when their first size equals the batch).

``assemble(sample, inputs) -> (model input, inputs)`` builds the denoiser's input from the sample
the guider reasons about when they differ: Stable Video Diffusion concatenates the conditioning
image latents to the noisy latents on the channel axis, so its branches carry ``image_latents``
as an ordinary (per-branch, batchable) input and the executor and the guiders see the latents alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .errors import GuidanceError


def default_output(out: Any) -> Tensor:
    """The prediction inside a model's output: a tensor, diffusers' ``.sample``, or a tuple's first item."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise GuidanceError(f"model returned {type(out).__name__}, expected a tensor, '.sample' or a tuple")


@dataclass(frozen=True, eq=True)
class ModelCall:
    """A denoiser and its calling convention (see the module docstring).

    ``sample`` / ``timestep``: the keyword that takes each (``None``: positional, sample first);
    ``timestep_scale``: the model's timestep per unit of the sampler's (Flux: ``1/1000``), used when
    a noise level is turned into a timestep; ``output``: picks the prediction from the raw output;
    ``module``: what perturbations hook; ``shared``: inputs without a batch dimension;
    ``fixed``: keyword arguments passed on every call (e.g. ``return_dict=False``); ``assemble``:
    builds the model input from the sample and the inputs (see the module docstring)."""

    fn: Callable
    sample: str | None = None
    timestep: str | None = None
    timestep_scale: float = 1.0
    output: Callable[[Any], Tensor] = default_output
    module: nn.Module | None = None
    shared: frozenset[str] = frozenset()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    assemble: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None

    def __post_init__(self):
        if self.sample is not None and self.timestep is None:
            raise GuidanceError("ModelCall: a keyword sample needs a keyword timestep (positional order is sample, t)")
        if self.module is None and isinstance(self.fn, nn.Module):
            object.__setattr__(self, "module", self.fn)
        object.__setattr__(self, "shared", frozenset(self.shared))

    def __call__(self, sample: Tensor, timestep: Any, inputs: Mapping[str, Any]) -> Tensor:
        """Run the model on one (possibly batched) set of inputs and return its prediction."""
        args: list[Any] = []
        kwargs = {**self.fixed, **inputs}
        if self.assemble is not None:
            sample, kwargs = self.assemble(sample, kwargs)
        if self.sample is None:
            args.append(sample)
        else:
            kwargs[self.sample] = sample
        if self.timestep is None:
            args.append(timestep)
        else:
            kwargs[self.timestep] = timestep
        return self.output(self.fn(*args, **kwargs))

    def require_module(self, who: str) -> nn.Module:
        """The module perturbations act on; a one-line error when the call has none."""
        if self.module is None:
            raise GuidanceError(
                f"{who}: the model {getattr(self.fn, '__name__', type(self.fn).__name__)} is not a torch module; "
                "describe it as ModelCall(fn, module=<the denoiser nn.Module>) so perturbations know what to hook"
            )
        return self.module


def as_model_call(model: Callable | ModelCall) -> ModelCall:
    """A :class:`ModelCall` for ``model``: itself, or the default convention ``model(sample, t, **inputs)``."""
    return model if isinstance(model, ModelCall) else ModelCall(model)
