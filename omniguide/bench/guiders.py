"""Benchmark (issue 3): every registered guider on the analytic Gaussian-mixture testbed, over a sweep
of scales, against the exact conditional distribution.

For each testbed (a 2-D and an 8-D ring by default), method and scale it samples the same noise
with the same scheduler and measures (``omniguide.zoo.metrics``): ``swd`` (sliced Wasserstein
distance to exact samples of the true conditional), ``precision``, ``coverage``, ``overshoot``
(samples past their class mode, in component stds) and ``nfe`` (branch evaluations per sample,
the sampler's ``SampleOutput.nfe``; CFG costs ``2 x steps``).

Then it checks, and prints, what the papers claim where it applies in low dimension:

* ``overshoot``: APG and CFG-rescale cut overshoot at high scales compared with CFG at the same scale;
* ``matched quality``: the pass-saving methods (adaptive, interval, cfg-cache) save at least
  ``min_saving`` of CFG's evaluations while their swd stays within ``swd_tolerance`` of CFG's
  at the same scale. Every setting is reported, not only the best.

Methods whose declared needs the mixture does not meet (a module to perturb, video history, several
conditions: :func:`omniguide.core.registry.guiders_served`) are reported as not applicable.
Autoguidance's weak model is the exact mixture with every component std multiplied by
``weak_std_factor`` (the 2-D toy idea of EDM2's autoguidance paper), run as
``Branch("weak", base="cond", model=weak)``.

This module samples and measures; judging the results (matched quality, the claims), writing
``metrics.json``, ``table.md`` and ``plot.png`` and the recipe kind itself live in
:mod:`omniguide.bench.guiders_report`, which imports this one (never the other way round).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from ..recipes import errors
from ..recipes.run import RunContext
from ..recipes.schema import MixtureSection
from .kit import first_line, load_guider_modules

if TYPE_CHECKING:   # torch, the core and the zoo are imported inside the functions (cheap schema import)
    from torch import Tensor

    from ..zoo import GaussianMixture


@dataclass
class Testbed(MixtureSection):
    name: str = "2d"


@dataclass
class SamplerSection:
    scheduler: str = "ddim"
    steps: int = 30
    samples: int = 1000
    label: int = 0  # the class asked for
    chunk: int = 0  # samples per sampler batch (0: all at once); NFE is reported per batch


@dataclass
class MethodSweep:
    """One table row group: a guider config, the dotted field ``key`` swept over ``scales``.
    ``family`` groups pass-saving variants compared with the baseline at matched quality; ``tied``
    moves other fields with the sweep (FDG: ``{scale_high: 2}`` keeps the high band at twice the low)."""

    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg"})
    key: str = "scale"
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0, 8.0])
    label: str | None = None
    family: str | None = None
    tied: dict[str, float] = field(default_factory=dict)  # other fields set to factor x the swept value
    steps: int | None = None   # sampler steps of this row (None: the sampler's); equal-NFE comparisons


@dataclass
class BenchGuidersConfig:
    testbeds: list[Testbed] = field(default_factory=lambda: [Testbed(), Testbed(name="8d", dim=8)])
    sampler: SamplerSection = field(default_factory=SamplerSection)
    methods: list[MethodSweep] = field(default_factory=list)
    baseline: str = "cfg"  # the label the claims compare against
    axes: str = "BD"
    seed: int = 0
    weak_std_factor: float = 1.5  # autoguidance's weak model: component stds x this
    auto_scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0, 8.0])  # unlisted guiders
    high_scales: float = 5.0  # 'high scale' for the overshoot claims: scale >= this
    overshoot_methods: list[str] = field(default_factory=lambda: ["apg", "cfg-rescale"])
    swd_tolerance: float = 0.03  # matched quality: swd <= baseline swd + this
    min_saving: float = 0.25  # the claimed saving of evaluations


def check_bench_guiders(cfg: BenchGuidersConfig) -> None:
    """Every setting and every configured guider of the sweep, built without sampling."""
    from ..core.schedulers import build_scheduler
    from ..recipes.components import make_guider
    from ..zoo.scorers import bind_testbed

    load_guider_modules()
    if not cfg.testbeds:
        raise errors.ConfigError("testbeds", "empty; give at least one {name, dim, ...}")
    for i, tb in enumerate(cfg.testbeds):
        if tb.dim < 2 or tb.classes < 1 or tb.per_class < 1 or tb.std <= 0:
            raise errors.ConfigError(f"testbeds.{i}", "needs dim >= 2, classes >= 1, per_class >= 1 and std > 0")
        if not 0 <= cfg.sampler.label < tb.classes:
            raise errors.ConfigError("sampler.label", f"must be a class of testbed '{tb.name}' (0..{tb.classes - 1})")
    if len({tb.name for tb in cfg.testbeds}) != len(cfg.testbeds):
        raise errors.ConfigError("testbeds", "testbed names must be unique")
    build_scheduler(cfg.sampler.scheduler, "sampler.scheduler")
    if cfg.sampler.steps < 1 or cfg.sampler.samples < 2 or cfg.sampler.chunk < 0:
        raise errors.ConfigError("sampler", "needs steps >= 1, samples >= 2 and chunk >= 0")
    if cfg.weak_std_factor <= 0:
        raise errors.ConfigError("weak_std_factor", f"must be > 0, got {cfg.weak_std_factor}")
    labels = [row_label(m) for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise errors.ConfigError("methods", f"two rows share a label ({labels}); give 'label' to tell them apart")
    if cfg.methods and cfg.baseline not in labels:
        raise errors.ConfigError("baseline", f"'{cfg.baseline}' is not a method label; labels: {', '.join(labels)}")
    for i, sweep in enumerate(cfg.methods):
        if not sweep.scales:
            raise errors.ConfigError(f"methods.{i}.scales", "empty")
        if sweep.steps is not None and sweep.steps < 1:
            raise errors.ConfigError(f"methods.{i}.steps", f"must be >= 1, got {sweep.steps}")
        for value in sweep.scales:
            make_guider(bind_testbed(guider_config(sweep, value), cfg.testbeds[0]), f"methods.{i}.guider")


def guider_config(sweep: MethodSweep, value: float) -> dict:
    cfg = OmegaConf.create(dict(sweep.guider))
    OmegaConf.update(cfg, sweep.key, value, merge=True)
    for key, factor in sweep.tied.items():
        OmegaConf.update(cfg, key, factor * value, merge=True)
    return OmegaConf.to_container(cfg)


def guider_names(spec: Any) -> list[str]:
    """Every guider name in a (nested) guider config."""
    names = []
    while isinstance(spec, Mapping) and "name" in spec:
        names.append(spec["name"])
        spec = spec.get("guider")
    return names


def row_label(sweep: MethodSweep) -> str:
    if sweep.label:
        return sweep.label
    names = guider_names(sweep.guider)
    return "(".join(names) + ")" * (len(names) - 1)


def plan(cfg: BenchGuidersConfig) -> tuple[list[MethodSweep], dict[str, str], dict[str, str]]:
    """The rows to run (configured ones, then one default row per registered guider nobody listed),
    the not-applicable guiders and the ones that cannot be built with defaults."""
    from ..core.needs import NEEDS
    from ..core.registry import GUIDERS, guider_needs, guiders_served, with_needs
    from ..recipes.components import make_guider
    from ..zoo.scorers import TESTBED_PROVIDES, bind_testbed, testbed_supplies

    rows = list(cfg.methods)
    covered = {n for m in rows for n in guider_names(m.guider)}
    served = set(guiders_served(TESTBED_PROVIDES))
    not_applicable, not_run = {}, {}
    for name in GUIDERS.names():
        if name in covered:
            continue
        if name not in served:
            unmet = {k: why for k, why in guider_needs(name).items() if k in NEEDS and k not in TESTBED_PROVIDES}
            not_applicable[name] = "; ".join(f"needs {NEEDS[k]} ({why})" for k, why in unmet.items()) + \
                "; the mixture has none"
            continue
        sweep = MethodSweep(guider=with_needs({"name": name}, testbed_supplies(cfg.sampler.label)),
                            scales=list(cfg.auto_scales))
        try:
            for value in sweep.scales:
                make_guider(bind_testbed(guider_config(sweep, value), cfg.testbeds[0]), name)
        except Exception as err:
            not_run[name] = f"not in the config and not buildable with defaults: {first_line(err)}"
            continue
        rows.append(sweep)
    return rows, not_applicable, not_run


def weak_mixture(mixture: GaussianMixture, factor: float) -> GaussianMixture:
    """The same mixture with wider components: a 'bad version' of the exact model."""
    from ..zoo import GaussianMixture

    stds = mixture.stds * factor
    return GaussianMixture(mixture.means.clone(), stds, mixture.weights.clone(), mixture.labels.clone())


def run_one(guider_cfg: dict, path: str, mixture: GaussianMixture, weak: GaussianMixture, noise: Tensor,
            cfg: BenchGuidersConfig, steps: int | None = None) -> tuple[Tensor, float, float]:
    """Samples of one guider, and its NFE and forward passes per sampler batch."""
    import torch

    from ..core.sampler import sample
    from ..core.schedulers import build_scheduler
    from ..recipes.components import make_guider
    from ..zoo import denoiser_for, label_branches

    chunk = cfg.sampler.chunk or len(noise)
    xs, nfe, passes, batches = [], 0, 0, 0
    for start in range(0, len(noise), chunk):
        part = noise[start : start + chunk]
        labels = torch.full((len(part),), cfg.sampler.label, dtype=torch.long)
        scheduler = build_scheduler(cfg.sampler.scheduler, "sampler.scheduler")
        model = denoiser_for(mixture, scheduler)
        branches = label_branches(labels, weak_model=denoiser_for(weak, scheduler), classes=len(mixture.classes))
        guider = make_guider(guider_cfg, path)
        steps = steps or cfg.sampler.steps
        out = sample(model, scheduler, guider, part, branches, num_steps=steps, axes=cfg.axes, progress=False)
        xs.append(out.sample)
        nfe, passes, batches = nfe + out.nfe, passes + out.forward_passes, batches + 1
    return torch.cat(xs), nfe / batches, passes / batches


def run_testbed(tb: Testbed, rows: list[MethodSweep], cfg: BenchGuidersConfig, run: RunContext) -> dict:
    """Every row at every scale on one testbed: metrics per setting, and each one's distance to the
    baseline's samples at the same scale."""
    import torch

    from ..core.errors import OmniguideError
    from ..zoo.metrics import all_metrics, sliced_wasserstein
    from ..zoo.scorers import bind_testbed

    mixture = tb.mixture()
    weak = weak_mixture(mixture, cfg.weak_std_factor)
    n, label = cfg.sampler.samples, cfg.sampler.label
    reference = mixture.sample(n, label, torch.Generator().manual_seed(cfg.seed + 1))
    exact = mixture.sample(n, label, torch.Generator().manual_seed(cfg.seed + 2))
    noise = torch.randn(n, tb.dim, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)
    out: dict[str, Any] = {"reference": all_metrics(exact, mixture, label, reference), "methods": {}}
    samples: dict[tuple[str, float], Tensor] = {}
    for i, sweep in enumerate(rows):
        label_i = row_label(sweep)
        entry: dict[str, Any] = {"guider": sweep.guider, "key": sweep.key, "family": sweep.family, "scales": {}}
        out["methods"][label_i] = entry
        for value in sweep.scales:
            t0 = time.perf_counter()
            try:
                guider_cfg = bind_testbed(guider_config(sweep, value), tb)
                x, nfe, passes = run_one(guider_cfg, f"methods.{i}.guider", mixture, weak, noise, cfg, sweep.steps)
            except OmniguideError as err:  # a method that cannot run on this testbed (e.g. FDG on 2 entries)
                entry["error"] = first_line(err)
                break
            m = all_metrics(x, mixture, label, reference)
            m.update(nfe=nfe, forward_passes=passes, seconds=time.perf_counter() - t0)
            samples[(label_i, value)] = x
            entry["scales"][f"{value:g}"] = m
        if "error" in entry:
            run.log(f"[{tb.name}] {label_i}: cannot run here: {entry['error']}")
            continue
        scales = entry["scales"].items()
        scores = (f"{k}: swd {v['swd']:.3f} ov {v['overshoot']:+.2f} nfe {v['nfe']:g}" for k, v in scales)
        run.log(f"[{tb.name}] {label_i}: " + ", ".join(scores))
    # distance of every run to the baseline's samples at the same scale (how closely it reproduces CFG)
    base = cfg.baseline
    for (label_i, value), x in samples.items():
        if (base, value) in samples:
            row = out["methods"][label_i]["scales"][f"{value:g}"]
            row["swd_to_baseline"] = sliced_wasserstein(x, samples[(base, value)])
    return out
