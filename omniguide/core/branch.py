"""Branches and the executor that runs them.

A *branch* is one named model evaluation, defined by input overrides: condition embeddings or
labels (any model keyword), a replacement ``sample`` (noised history) or ``timestep`` (per-token
noise levels), a perturbation applied while it runs (attention hooks, model kwargs), or another
model altogether (autoguidance's weak model). A branch may inherit another's inputs (``base``).

The executor runs the branches a guider asks for at a step:

1. resolves each branch's inputs and merges branches whose resolved inputs are identical;
2. batches those that share a model and a perturbation into one forward pass (``batch=True``);
3. runs the rest in sequence, each inside its perturbation context;
4. checks every output (shape, finiteness) and names the branch and step when one is bad.

Branch identity is the name, never a call counter (diffusers infers it from a counter, which is
how its SEG never applies its hook).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .errors import GuidanceError
from .guider import GuidanceStep
from .prediction import Prediction, check_parameterization


class Perturbation(Protocol):
    """Applied to a model only while one branch runs: ``with perturbation(model): model(...)``."""

    def __call__(self, model: Any) -> contextlib.AbstractContextManager: ...


@dataclass(frozen=True)
class Branch:
    """One named model evaluation (see the module docstring)."""

    name: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None
    model: Callable | None = None
    perturbation: Perturbation | None = None
    parameterization: str | None = None


BranchTable = Mapping[str, "Branch | Mapping[str, Any]"]


def as_branches(table: BranchTable | None) -> dict[str, Branch]:
    """Accept ``{"cond": {"labels": y}, "uncond": Branch(...)}``; plain dicts are input overrides."""
    out = {}
    for name, spec in (table or {}).items():
        out[name] = spec if isinstance(spec, Branch) else Branch(name=name, inputs=dict(spec))
    return out


def _call(model: Callable, sample: Tensor, timestep: Any, inputs: Mapping[str, Any]) -> Tensor:
    out = model(sample, timestep, **inputs)
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):  # diffusers model outputs
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    raise GuidanceError(f"model returned {type(out).__name__}, expected a tensor")


@dataclass
class _Job:
    names: list[str]
    model: Callable
    perturbation: Perturbation | None
    kind: str
    sample: Tensor
    timestep: Any
    inputs: dict[str, Any]

    def merge_key(self) -> tuple:
        def ident(v):
            return ("tensor", id(v)) if isinstance(v, Tensor) else ("value", repr(v))
        return (
            id(self.model), id(self.perturbation), self.kind, ident(self.sample), ident(self.timestep),
            tuple(sorted((k, ident(v)) for k, v in self.inputs.items())),
        )


class BranchExecutor:
    """Runs named branches of ``model(sample, timestep, **inputs)`` and counts the work.

    ``nfe`` counts branch evaluations per sample (a batched cond+uncond pass is 2),
    ``forward_passes`` counts model calls (the same pass is 1). Both are kept per step in
    ``nfe_per_step`` / ``passes_per_step`` (one entry per executor call)."""

    def __init__(
        self,
        model: Callable,
        branches: BranchTable | None = None,
        parameterization: str = "eps",
        batch: bool = True,
        check_finite: bool = True,
    ):
        self.model = model
        self.branches = as_branches(branches)
        self.parameterization = check_parameterization(parameterization)
        self.batch = batch
        self.check_finite = check_finite
        self.reset_counts()

    def reset_counts(self) -> None:
        self.nfe_per_step: list[int] = []
        self.passes_per_step: list[int] = []

    @property
    def nfe(self) -> int:
        return sum(self.nfe_per_step)

    @property
    def forward_passes(self) -> int:
        return sum(self.passes_per_step)

    def with_defaults(self, defaults: Mapping[str, Branch]) -> None:
        """Add branches a guider defines itself, unless the user defined them."""
        for name, branch in defaults.items():
            self.branches.setdefault(name, branch)

    # -- resolution -------------------------------------------------------------------------
    def resolve(self, name: str, sample: Tensor, timestep: Any, step: GuidanceStep) -> _Job:
        chain, branch = [], self.branches.get(name)
        if branch is None:
            known = ", ".join(sorted(self.branches)) or "none"
            raise GuidanceError(f"branch '{name}' is needed at {step.where} but not defined (defined: {known})")
        while branch is not None:
            if branch.name in [b.name for b in chain]:
                raise GuidanceError(f"branch '{name}': 'base' cycle through {[b.name for b in chain]}")
            chain.append(branch)
            if branch.base is None:
                break
            if branch.base not in self.branches:
                raise GuidanceError(f"branch '{branch.name}': base branch '{branch.base}' is not defined")
            branch = self.branches[branch.base]
        inputs: dict[str, Any] = {}
        model, perturbation, kind = self.model, None, self.parameterization
        for b in reversed(chain):  # the named branch overrides its bases
            inputs.update(b.inputs)
            model = b.model or model
            perturbation = b.perturbation or perturbation
            kind = check_parameterization(b.parameterization, f"branch '{b.name}'") if b.parameterization else kind
        sample = inputs.pop("sample", sample)
        timestep = inputs.pop("timestep", timestep)
        return _Job([name], model, perturbation, kind, sample, timestep, inputs)

    # -- execution --------------------------------------------------------------------------
    def __call__(
        self, names: Sequence[str], sample: Tensor, timestep: Any, step: GuidanceStep
    ) -> dict[str, Prediction]:
        jobs: dict[tuple, _Job] = {}
        for name in dict.fromkeys(names):
            job = self.resolve(name, sample, timestep, step)
            key = job.merge_key()
            if key in jobs:
                jobs[key].names.append(name)
            else:
                jobs[key] = job
        groups = _group(list(jobs.values())) if self.batch else [[j] for j in jobs.values()]
        preds: dict[str, Prediction] = {}
        for group in groups:
            outs = self._run(group, step)
            for job, out in zip(group, outs):
                self._check(job, out, step)
                for name in job.names:
                    preds[name] = Prediction(out, job.kind, job.sample, step.noise)
        self.nfe_per_step.append(len(jobs))
        self.passes_per_step.append(len(groups))
        return preds

    def _run(self, group: list[_Job], step: GuidanceStep) -> list[Tensor]:
        first = group[0]
        context = first.perturbation(first.model) if first.perturbation is not None else contextlib.nullcontext()
        label = "+".join(n for j in group for n in j.names)
        try:
            with context:
                if len(group) == 1:
                    return [_call(first.model, first.sample, first.timestep, first.inputs)]
                sizes = [j.sample.shape[0] for j in group]
                sample = torch.cat([j.sample for j in group])
                timestep = _cat_timesteps([j.timestep for j in group], sizes)
                inputs = {k: _cat_input([j.inputs[k] for j in group], sizes) for k in first.inputs}
                out = _call(first.model, sample, timestep, inputs)
                return list(out.split(sizes))
        except GuidanceError:
            raise
        except Exception as err:  # a model failure: say which branch and step, keep the cause
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise GuidanceError(f"branch '{label}' at {step.where}: model call failed: {msg}") from err

    def _check(self, job: _Job, out: Tensor, step: GuidanceStep) -> None:
        name = "+".join(job.names)
        if out.shape != job.sample.shape:
            raise GuidanceError(
                f"branch '{name}' at {step.where}: prediction shape {tuple(out.shape)} does not match the "
                f"sample {tuple(job.sample.shape)}"
            )
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise GuidanceError(f"branch '{name}' at {step.where}: the prediction has non-finite values")


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _can_join(a: _Job, b: _Job) -> bool:
    """Two jobs share one forward pass when they use the same model and perturbation, and every
    input either is a per-sample tensor of the same trailing shape, or is the same object."""
    if a.model is not b.model or a.perturbation is not b.perturbation or a.kind != b.kind:
        return False
    if a.sample.shape[1:] != b.sample.shape[1:] or a.inputs.keys() != b.inputs.keys():
        return False
    for key in a.inputs:
        va, vb = a.inputs[key], b.inputs[key]
        per_sample = (
            isinstance(va, Tensor) and isinstance(vb, Tensor) and va.ndim > 0 and vb.ndim > 0
            and va.shape[0] == a.sample.shape[0] and vb.shape[0] == b.sample.shape[0]
            and va.shape[1:] == vb.shape[1:] and va.dtype == vb.dtype
        )
        if not per_sample and not _same(va, vb):
            return False
    return _timestep_joinable(a, b)


def _per_sample_timestep(t: Any, n: int) -> Tensor | None:
    """The timestep as one row per sample (``[n, ...]``), or None when it cannot be."""
    if isinstance(t, Tensor) and t.ndim > 0 and t.shape[0] == n:
        return t
    if isinstance(t, (int, float)) or isinstance(t, Tensor) and t.numel() == 1:
        return torch.as_tensor(t).reshape(1).expand(n)
    return None


def _timestep_joinable(a: _Job, b: _Job) -> bool:
    if _same(a.timestep, b.timestep):
        return True
    ta = _per_sample_timestep(a.timestep, a.sample.shape[0])
    tb = _per_sample_timestep(b.timestep, b.sample.shape[0])
    return ta is not None and tb is not None and ta.shape[1:] == tb.shape[1:]


def _group(jobs: list[_Job]) -> list[list[_Job]]:
    groups: list[list[_Job]] = []
    for job in jobs:
        for group in groups:
            if all(_can_join(job, other) for other in group):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


def _cat_input(values: list[Any], sizes: list[int]) -> Any:
    """Per-sample tensors are concatenated; anything else is shared (``_can_join`` checked it)."""
    if all(isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == n for v, n in zip(values, sizes)):
        return torch.cat(values)
    return values[0]


def _cat_timesteps(values: list[Any], sizes: list[int]) -> Any:
    """One shared scalar timestep stays shared; otherwise one row per sample, concatenated."""
    first = values[0]
    shared_scalar = not (isinstance(first, Tensor) and first.ndim > 0)
    if shared_scalar and all(_same(v, first) for v in values[1:]):
        return first
    return torch.cat([_per_sample_timestep(v, n) for v, n in zip(values, sizes)])
