"""Branches and the executor that runs them.

A *branch* is one named model evaluation, defined by input overrides: condition embeddings or
labels (any model keyword), a replacement ``sample`` (noised history) or ``timestep`` (per-token
noise levels), a perturbation applied while it runs (attention hooks, model kwargs), or another
model altogether (autoguidance's weak model). A branch may inherit another's inputs (``base``).
A branch that overrides the sample or the timestep carries its own noise level (``noise``, or the
executor's ``noise_of(timestep)``), and its prediction converts between parameterizations with
that level, not the step's.

The executor runs the branches a guider asks for at a step:

1. resolves each branch's inputs and merges branches whose resolved inputs are all the same
   object or equal by value (tensors by ``torch.equal``, mappings and sequences item by item);
2. batches those that share a model and a perturbation into one forward pass (``batch=True``),
   concatenating per-sample inputs (also inside mappings such as SDXL's ``added_cond_kwargs``);
3. runs the rest in sequence, each inside its perturbation context;
4. checks every output (shape, finiteness) and names the branch and step when one is bad.

Branch identity is the name, never a call counter (diffusers infers it from a counter, which is
how its SEG never applies its hook).

Three additions serve methods whose branch changes from step to step or spans rows of a batch:

* ``Branch.draw(step, inputs) -> inputs`` -- inputs drawn afresh at every step (ICG's random
  condition); applied after the branch's own ``inputs``, before merging, so merging compares the
  drawn values;
* :class:`StepPerturbation` -- a perturbation that depends on the step (TSG's noise level): the
  executor uses ``perturbation.at(step)``;
* :class:`RowsPerturbation` -- one perturbation over the rows of several branches batched into one
  forward pass (NAG, VSF: the negative branch's rows feed the positive branch's attention); it is
  entered with ``{branch name: rows}`` so it never guesses which rows are which.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .errors import GuidanceError
from .guider import GuidanceStep
from .model_call import ModelCall, as_model_call
from .noise import NoiseLevel
from .prediction import Prediction, check_parameterization


class Perturbation(Protocol):
    """Applied to a model only while one branch runs: ``with perturbation(module, sample): model(...)``.

    ``module`` is the model's ``nn.Module`` (from its :class:`~omniguide.core.model_call.ModelCall`),
    ``sample`` the (possibly batched) sample of the forward pass, for perturbations that need its
    layout (SEG's token grid)."""

    def __call__(self, module: nn.Module, sample: Tensor) -> contextlib.AbstractContextManager: ...


class StepPerturbation:
    """A perturbation that depends on the step: ``at(step)`` returns the :class:`Perturbation` to apply
    (time-step guidance scales its noise by ``t``). The executor calls it when it resolves the branch,
    so merging and batching compare the per-step perturbations."""

    def at(self, step: GuidanceStep) -> Perturbation:
        raise NotImplementedError


class RowsPerturbation:
    """A perturbation that needs to know which rows of the forward pass belong to which branch: the
    executor enters ``for_rows(module, sample, rows)`` with ``rows = {branch name: slice}`` over the
    batched sample (branches merged as identical share a slice). Used when one branch's rows feed
    another's computation inside the pass (NAG's and VSF's negative context)."""

    def for_rows(
        self, module: nn.Module, sample: Tensor, rows: Mapping[str, slice]
    ) -> contextlib.AbstractContextManager:
        raise NotImplementedError


Draw = Callable[[GuidanceStep, dict], dict]


@dataclass(frozen=True)
class Branch:
    """One named model evaluation (see the module docstring). ``noise`` is the noise level of a
    branch that overrides ``sample`` or ``timestep`` in ``inputs``; ``draw(step, inputs)`` returns
    inputs drawn afresh at each step (applied after ``inputs``)."""

    name: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None
    model: Callable | ModelCall | None = None
    perturbation: Perturbation | StepPerturbation | RowsPerturbation | None = None
    parameterization: str | None = None
    noise: NoiseLevel | None = None
    draw: Draw | None = None


BranchTable = Mapping[str, "Branch | Mapping[str, Any]"]
NoiseOf = Callable[[Any], NoiseLevel]


def as_branches(table: BranchTable | None) -> dict[str, Branch]:
    """Accept ``{"cond": {"labels": y}, "uncond": Branch(...)}``; plain dicts are input overrides."""
    return {name: spec if isinstance(spec, Branch) else Branch(name=name, inputs=dict(spec))
            for name, spec in (table or {}).items()}


def same_value(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same object or equal by value: tensors of the same shape,
    dtype and device with equal entries, mappings and sequences item by item, anything else by ``==``.
    Never by ``repr``, which elides the middle of large tensors."""
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and bool(torch.equal(a, b)))
    if isinstance(a, NoiseLevel) and isinstance(b, NoiseLevel):
        return all(same_value(x, y) for x, y in ((a.alpha, b.alpha), (a.sigma, b.sigma), (a.t, b.t)))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
                and all(same_value(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b)))
    try:
        return bool(a == b)
    except Exception:
        return False


@dataclass
class _Job:
    names: list[str]
    model: ModelCall
    perturbation: Perturbation | None
    kind: str
    sample: Tensor
    timestep: Any
    noise: NoiseLevel | None
    inputs: dict[str, Any]

    def same_as(self, other: _Job) -> bool:
        """Identical evaluations: every input is the same object or equal by value."""
        return (self.model == other.model and same_value(self.perturbation, other.perturbation)
                and self.kind == other.kind and same_value(self.sample, other.sample)
                and same_value(self.timestep, other.timestep) and same_value(self.noise, other.noise)
                and same_value(self.inputs, other.inputs))


class BranchExecutor:
    """Runs named branches of a model (a callable ``model(sample, timestep, **inputs)`` or a
    :class:`~omniguide.core.model_call.ModelCall`) and counts the work.

    Configured here only: ``branches`` is the standing table, ``defaults`` a guider's own branches
    (a standing one of the same name wins), ``undefined`` the fix named when a needed branch is not
    defined. What changes per call is an argument: ``branches=`` overlays the standing table and
    ``model=`` runs the branches that have no model of their own, for that call only.

    ``noise_of(timestep)`` gives the noise level of a branch that overrides the timestep without
    its own ``noise`` (the adapter passes its model's training schedule). ``nfe`` counts branch
    evaluations per sample (a batched cond+uncond pass is 2), ``forward_passes`` counts model calls
    (the same pass is 1). Both are kept per step in ``nfe_per_step`` / ``passes_per_step``."""

    def __init__(
        self,
        model: Callable | ModelCall,
        branches: BranchTable | None = None,
        parameterization: str = "eps",
        batch: bool = True,
        check_finite: bool = True,
        noise_of: NoiseOf | None = None,
        defaults: BranchTable | None = None,
        undefined: str = "",
    ):
        self.model = as_model_call(model)
        self.branches = {**as_branches(defaults), **as_branches(branches)}
        self.parameterization = check_parameterization(parameterization)
        self.batch = batch
        self.check_finite = check_finite
        self.noise_of = noise_of
        self.undefined = undefined
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

    # -- resolution -------------------------------------------------------------------------
    def chain(self, name: str, step: GuidanceStep, table: Mapping[str, Branch] | None = None) -> list[Branch]:
        """The branch and its bases in ``table`` (default: the standing one), the named branch first."""
        table = self.branches if table is None else table
        chain, branch = [], table.get(name)
        if branch is None:
            known = ", ".join(sorted(table)) or "none"
            raise GuidanceError(f"branch '{name}' is needed at {step.where} but not defined (defined: {known})"
                                f"{self.undefined}")
        while branch is not None:
            if branch.name in [b.name for b in chain]:
                raise GuidanceError(f"branch '{name}': 'base' cycle through {[b.name for b in chain]}")
            chain.append(branch)
            if branch.base is None:
                break
            if branch.base not in table:
                raise GuidanceError(f"branch '{branch.name}': base branch '{branch.base}' is not defined")
            branch = table[branch.base]
        return chain

    def resolve(self, name: str, sample: Tensor, timestep: Any, step: GuidanceStep,
                table: Mapping[str, Branch] | None = None, model: ModelCall | None = None) -> _Job:
        inputs: dict[str, Any] = {}
        model, perturbation, kind, noise = model or self.model, None, self.parameterization, None
        for b in reversed(self.chain(name, step, table)):  # the named branch overrides its bases
            inputs.update(b.inputs)
            if b.draw is not None:
                inputs = dict(b.draw(step, inputs))
            model = as_model_call(b.model) if b.model is not None else model
            perturbation = b.perturbation or perturbation
            kind = check_parameterization(b.parameterization, f"branch '{b.name}'") if b.parameterization else kind
            noise = b.noise or noise
        if isinstance(perturbation, StepPerturbation):
            perturbation = perturbation.at(step)
        own_sample, own_timestep = "sample" in inputs, "timestep" in inputs
        sample = inputs.pop("sample", sample)
        timestep = inputs.pop("timestep", timestep)
        noise = noise or self._noise(name, own_sample, own_timestep, timestep, step)
        noise = None if noise is None else noise.to(sample)    # None: no noise level (logits)
        return _Job([name], model, perturbation, kind, sample, timestep, noise, inputs)

    def _noise(
        self, name: str, own_sample: bool, own_timestep: bool, timestep: Any, step: GuidanceStep
    ) -> NoiseLevel | None:
        if not own_timestep:
            return step.noise   # same level; an overridden sample (e.g. a replaced region) keeps it
        if self.noise_of is None:
            raise GuidanceError(f"branch '{name}' at {step.where} overrides the timestep but has no noise level: give "
                                "Branch(noise=NoiseLevel(...)) so its prediction converts at its own level")
        return self.noise_of(timestep)

    # -- execution --------------------------------------------------------------------------
    def __call__(
        self, names: Sequence[str], sample: Tensor, timestep: Any, step: GuidanceStep, accumulate: bool = False,
        branches: BranchTable | None = None, model: Callable | ModelCall | None = None,
    ) -> dict[str, Prediction]:
        """Predictions of ``names`` at this step. ``accumulate=True`` adds the work to the step's
        counts instead of starting a new step (a guider's second round, a corrector's evaluations);
        ``branches`` and ``model`` hold for this call only (see the class docstring)."""
        table = self.branches if branches is None else {**self.branches, **as_branches(branches)}
        model = None if model is None else as_model_call(model)
        jobs: list[_Job] = []
        for name in dict.fromkeys(names):
            job = self.resolve(name, sample, timestep, step, table, model)
            twin = next((j for j in jobs if j.same_as(job)), None)
            if twin is not None:
                twin.names.append(name)
            else:
                jobs.append(job)
        groups = _group(jobs) if self.batch else [[j] for j in jobs]
        preds: dict[str, Prediction] = {}
        for group in groups:
            outs = self._run(group, step)
            for job, out in zip(group, outs):
                self._check(job, out, step)
                for name in job.names:
                    preds[name] = Prediction(out, job.kind, job.sample, job.noise)
        if accumulate and self.nfe_per_step:
            self.nfe_per_step[-1] += len(jobs)
            self.passes_per_step[-1] += len(groups)
        else:
            self.nfe_per_step.append(len(jobs))
            self.passes_per_step.append(len(groups))
        return preds

    def _run(self, group: list[_Job], step: GuidanceStep) -> list[Tensor]:
        first = group[0]
        label = "+".join(n for j in group for n in j.names)
        try:
            if len(group) == 1:
                sample, timestep, inputs = first.sample, first.timestep, first.inputs
            else:
                sizes = [j.sample.shape[0] for j in group]
                sample = torch.cat([j.sample for j in group])
                timestep = _cat_timesteps([j.timestep for j in group], sizes)
                inputs = {k: _cat_input([j.inputs[k] for j in group], sizes, k in first.model.shared)
                          for k in first.inputs}
            context = contextlib.nullcontext()
            if isinstance(first.perturbation, RowsPerturbation):
                module = first.model.require_module(f"branch '{label}'")
                context = first.perturbation.for_rows(module, sample, _rows(group))
            elif first.perturbation is not None:
                context = first.perturbation(first.model.require_module(f"branch '{label}'"), sample)
            with context:
                out = first.model(sample, timestep, inputs)
            return [out] if len(group) == 1 else list(out.split([j.sample.shape[0] for j in group]))
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


def _rows(group: list[_Job]) -> dict[str, slice]:
    """``{branch name: slice}`` of each job's rows in the group's concatenated batch."""
    rows, start = {}, 0
    for job in group:
        stop = start + job.sample.shape[0]
        rows.update(dict.fromkeys(job.names, slice(start, stop)))
        start = stop
    return rows


def _per_sample(value: Any, n: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n


def _joinable(va: Any, vb: Any, na: int, nb: int, shared: bool) -> bool:
    """Two branches' values of one input can share a forward pass: equal (passed once), or
    per-sample tensors of the same trailing shape (concatenated), or mappings of such values."""
    if not shared and isinstance(va, Mapping) and isinstance(vb, Mapping):
        return va.keys() == vb.keys() and all(_joinable(va[k], vb[k], na, nb, False) for k in va)
    if not shared and _per_sample(va, na) and _per_sample(vb, nb):
        return va.shape[1:] == vb.shape[1:] and va.dtype == vb.dtype
    return same_value(va, vb)


def _can_join(a: _Job, b: _Job) -> bool:
    """Two jobs share one forward pass when they use the same model and perturbation, and every
    input is joinable (see :func:`_joinable`)."""
    if a.model != b.model or not same_value(a.perturbation, b.perturbation) or a.kind != b.kind:
        return False
    if a.sample.shape[1:] != b.sample.shape[1:] or a.inputs.keys() != b.inputs.keys():
        return False
    na, nb = a.sample.shape[0], b.sample.shape[0]
    if not all(_joinable(a.inputs[k], b.inputs[k], na, nb, k in a.model.shared) for k in a.inputs):
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
    if same_value(a.timestep, b.timestep):
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


def _cat_input(values: list[Any], sizes: list[int], shared: bool) -> Any:
    """Per-sample tensors are concatenated (inside mappings too); anything else is passed once
    (``_can_join`` checked that the values are equal)."""
    if not shared and all(isinstance(v, Mapping) for v in values):
        return {k: _cat_input([v[k] for v in values], sizes, False) for k in values[0]}
    if not shared and all(_per_sample(v, n) for v, n in zip(values, sizes)):
        return torch.cat(values)
    return values[0]


def _cat_timesteps(values: list[Any], sizes: list[int]) -> Any:
    """One shared scalar timestep stays shared; otherwise one row per sample, concatenated."""
    first = values[0]
    shared_scalar = not (isinstance(first, Tensor) and first.ndim > 0)
    if shared_scalar and all(same_value(v, first) for v in values[1:]):
        return first
    return torch.cat([_per_sample_timestep(v, n) for v, n in zip(values, sizes)])
