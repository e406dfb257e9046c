"""Scorers, in two meanings, each with its own registry:

* **guidance scorers** (:data:`GUIDANCE_SCORERS`, ``omniguide list guidance-scorers``): the plugins of
  gradient and gradient-free scorer guidance, run on the denoised estimate while sampling;
* **output scorers** (:data:`OUTPUT_SCORERS`, ``omniguide list output-scorers``): score a generated
  output against its prompt after sampling (``model: {scorer: ...}`` of a sample recipe, the image
  bench). ``scorer(data, prompt[, rate=])`` returns metrics; one with ``clip_scores(data, prompt[,
  rate])`` (one score per output) can also re-rank. Each registers itself where it lives (the zoo,
  the audio modality).

Guidance scorers:

* a **scorer** maps a denoised estimate ``x0 [B, ...]`` to one differentiable scalar per sample ``[B]``
  (higher is better: a log-likelihood, a reward, a negative loss) -- ``scorer-guidance`` follows its
  gradient, ``scale-search`` ranks candidate scales with it;
* a **classifier** maps ``x0`` to class logits ``[B, K]`` -- ``gfcg`` runs it in inference mode only.

Any callable works in code; configs name one registered with ``@register_scorer`` (the testbed's
analytic ones live in :mod:`omniguide.zoo.scorers`). :func:`check_scores` turns a bad plugin into a
one-line error: a non-scalar output, or one with no gradient when a gradient is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from ..io.config import Registry
from .errors import ConfigError, GuidanceError

GUIDANCE_SCORERS = Registry("scorer")
SCORERS = GUIDANCE_SCORERS              # its name before output scorers got a registry
OUTPUT_SCORERS = Registry("output scorer")
Scorer = Callable[[Tensor], Tensor]


def register_scorer(name: str) -> Callable:
    """Decorator: a guidance scorer or classifier class (or factory) buildable by name from a config."""
    return GUIDANCE_SCORERS.register(name)


def register_output_scorer(name: str) -> Callable:
    """Decorator: a factory (or class) of an output scorer, built by name from ``{name: ..., **arguments}``."""
    return OUTPUT_SCORERS.register(name)


def build_scorer(spec: Any, path: str = "scorer") -> Scorer:
    """A scorer from a callable (returned as is), a registered name, or ``{name: ..., **arguments}``."""
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        return spec
    if not isinstance(spec, (str, Mapping)):
        raise ConfigError(path, f"expected a scorer (a callable, a name or {{name: ...}}), got {type(spec).__name__}")
    return GUIDANCE_SCORERS.build(spec, path)


def check_scores(values: Any, batch: int, who: str, gradient: bool = False) -> Tensor:
    """``values`` as ``[batch]`` scores; a one-line error naming ``who`` otherwise (and, with
    ``gradient=True``, when they carry no gradient)."""
    if not isinstance(values, Tensor):
        raise GuidanceError(f"{who}: the scorer returned {type(values).__name__}; expected a tensor of one score "
                            f"per sample [{batch}]")
    if values.shape != (batch,):
        raise GuidanceError(f"{who}: the scorer returned shape {tuple(values.shape)}; expected one scalar per "
                            f"sample [{batch}]")
    if gradient and not values.requires_grad:
        raise GuidanceError(f"{who}: the scorer's output has no gradient with respect to its input (detached, "
                            "computed under torch.no_grad, or not differentiable)")
    return values


def check_logits(values: Any, batch: int, who: str) -> Tensor:
    """``values`` as ``[batch, classes]`` logits; a one-line error otherwise."""
    if not isinstance(values, Tensor) or values.ndim != 2 or values.shape[0] != batch:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise GuidanceError(f"{who}: the classifier returned {shape}; expected logits [{batch}, classes]")
    return values
