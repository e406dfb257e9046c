"""Independent condition guidance (ICG; Sadat et al. 2025, "No Training, No Problem: Rethinking
Classifier-Free Guidance for Diffusion Models", arXiv:2407.02687, Sec. 4 and App. G).

A conditional model given a condition drawn independently of the sample predicts (approximately) the
unconditional score, since ``grad log p(z_t | y^) ~ grad log p(z_t)`` for ``y^`` independent of ``z_t``.
So a model trained *without* condition dropout still guides:

    pred = D(x, y^) + w (D(x, y) - D(x, y^))        y^ drawn afresh at every step (App. G's loop)

The independent branch (``branch``, default ``independent``) is the conditional branch with its
condition replaced, per sample, by

* ``pool``: a random row of a table of conditions (``{"labels": [0, 1, 2]}`` -- random class labels;
  ``{"encoder_hidden_states": E}`` -- embeddings of other prompts, e.g. random token strings run
  through the text encoder, the paper's text variant), the same row index for every listed input;
* ``gaussian`` inputs: Gaussian noise with the standard deviation of the conditional value
  (the paper's ``randn_like(emb) * emb.std()``), by default the inputs the driver names as the
  prompt embeddings (``step.embeddings``: the pipeline adapter gives its family's -- AudioLDM's CLAP
  ``class_labels``, both of AudioLDM2's cross-attention contexts), else ``encoder_hidden_states``.

Inputs are model keywords, dotted into mappings (``added_cond_kwargs.text_embeds``). ``seed`` seeds the
run's generator (re-seeded by ``reset()``: a run is reproducible). The paper's scales: 1.4 (DiT,
random class), 3.0 (Stable Diffusion, random text), 1.05-1.25 (EDM, EDM2).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..branch import Branch
from ..errors import ConfigError, GuidanceError
from ..guider import GuidanceStep
from ..prediction import Guided, Prediction
from ..registry import register_guider
from ..scale import Scale
from .common import CFGFamily, cfg_against, cfg_branches


def get_path(inputs: Mapping[str, Any], path: str) -> Any:
    key, _, rest = path.partition(".")
    if key not in inputs:
        return None
    return get_path(inputs[key], rest) if rest else inputs[key]


def set_path(inputs: Mapping[str, Any], path: str, value: Any) -> dict:
    """A copy of ``inputs`` with ``path`` (dotted into mappings) set; the originals are not mutated."""
    key, _, rest = path.partition(".")
    out = dict(inputs)
    out[key] = set_path(inputs[key], rest, value) if rest else value
    return out


def float_inputs(inputs: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """The names of the float tensor inputs (dotted into mappings), for error messages."""
    for key, value in inputs.items():
        if isinstance(value, Mapping):
            yield from float_inputs(value, f"{prefix}{key}.")
        elif isinstance(value, Tensor) and value.is_floating_point():
            yield f"{prefix}{key}"


@dataclass(frozen=True)
class IndependentCondition:
    """The draw of an ICG branch (a :class:`~omniguide.core.branch.Branch` ``draw``): per sample, a random
    row of ``pool`` (one index for every pooled input) and Gaussian noise for the ``gaussian`` inputs."""

    pool: Mapping[str, Tensor]
    gaussian: tuple[str, ...] | None
    generator: torch.Generator

    def __call__(self, step: GuidanceStep, inputs: dict) -> dict:
        batch = step.x.shape[0]
        if self.pool:
            size = len(next(iter(self.pool.values())))
            index = torch.randint(size, (batch,), generator=self.generator)
            for path, table in self.pool.items():
                current = get_path(inputs, path)
                device = current.device if isinstance(current, Tensor) else step.x.device
                inputs = set_path(inputs, path, table[index].to(device))
        gaussian = self.gaussian
        if gaussian is None:
            gaussian = () if self.pool else (step.embeddings or ("encoder_hidden_states",))
        for path in gaussian:
            value = get_path(inputs, path)
            if not isinstance(value, Tensor) or not value.is_floating_point():
                floats = ", ".join(float_inputs(inputs)) or "none"
                raise GuidanceError(f"icg: input '{path}' of the conditional branch is not a float tensor "
                                    f"({type(value).__name__}; its float inputs: {floats}); name the condition "
                                    "in gaussian=(...) or give a pool of conditions")
            noise = torch.randn(value.shape, generator=self.generator, dtype=torch.float32)
            inputs = set_path(inputs, path, (noise.to(value) * value.float().std().to(value.dtype)))
        return inputs


@register_guider("icg")
@dataclass
class ICG(CFGFamily):
    """``D(x, y^) + w (D(x, y) - D(x, y^))`` with ``y^`` a condition drawn independently at every step
    (arXiv:2407.02687); see the module docstring."""

    scale: Scale = 3.0
    pool: Mapping[str, Any] | None = None
    gaussian: tuple[str, ...] | None = None
    seed: int = 0
    branch: str = "independent"
    form: str = "u+w(c-u)"
    generator: torch.Generator = field(default_factory=torch.Generator, repr=False, compare=False,
                                         metadata={"config": False})

    def __post_init__(self):
        super().__post_init__()
        pool = {k: torch.as_tensor(v) for k, v in (self.pool or {}).items()}
        if pool and len({len(v) for v in pool.values()}) != 1:
            raise ConfigError("pool", "every pooled input needs the same number of rows (one row = one condition)")
        if any(len(v) == 0 for v in pool.values()):
            raise ConfigError("pool", "an empty pool of conditions")
        self._pool = pool
        self._gaussian = tuple(self.gaussian) if self.gaussian is not None else None   # None: the step's embeddings
        if not pool and self._gaussian == ():
            raise ConfigError("pool", "give a pool of conditions or gaussian inputs to draw the independent condition")
        self.reset()

    def reset(self) -> None:
        self.generator.manual_seed(int(self.seed))

    def branch_defaults(self) -> dict:
        draw = IndependentCondition(self._pool, self._gaussian, self.generator)
        return {self.branch: Branch(self.branch, base="cond", draw=draw)}

    def branches(self, step: GuidanceStep) -> tuple[str, ...]:
        return cfg_branches(self, step, self.branch)

    def combine(self, preds: Mapping[str, Prediction], step: GuidanceStep) -> Guided:
        return cfg_against(preds, step, self.branch, self.scale, self.form)
