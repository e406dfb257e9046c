"""The quickstart: sample the 2-D Gaussian-mixture testbed with every guider and measure each.

Writes ``gallery.png`` (one panel per guider and scale, the true conditional overlaid, each
titled with its swd, overshoot and NFE) and ``metrics.json`` (per guider and scale: distance to
the true conditional, precision, coverage, overshoot, NFE and forward passes; plus ``reference``,
two exact sample sets compared, and ``better``, which direction is better for each metric).

torch, the core and the zoo are imported inside the functions: importing this module (``omniguide
show`` imports every runner) only defines the schema.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from ... import errors
from ..registry import register_recipe
from ..run import RunContext
from ..schema import MixtureSection

# metrics.json's "better" entry: which way each metric improves (it is not a guider row)
BETTER = {"swd": "lower", "precision": "higher", "coverage": "higher", "overshoot": "closer to 0",
          "nfe": "lower", "forward_passes": "lower", "seconds": "lower"}


@dataclass
class TestbedConfig(MixtureSection):
    weak_std_factor: float = 1.5   # autoguidance's "bad version": the same mixture, blurrier


@dataclass
class SamplerConfig:
    scheduler: str = "ddim"
    steps: int = 30
    samples: int = 1000
    label: int = 0          # the class every sample is asked to be
    batch: bool = True      # batch branches that share a model into one forward pass


@dataclass
class GuiderSweep:
    """One gallery row: a guider config and the scales that ``key`` (a dotted field path) sweeps over."""

    guider: dict[str, Any] = field(default_factory=lambda: {"name": "cfg"})
    key: str = "scale"
    scales: list[float] = field(default_factory=lambda: [1.0, 3.0, 7.0])
    label: str | None = None


@dataclass
class QuickstartConfig:
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    guiders: list[GuiderSweep] = field(default_factory=list)
    seed: int = 0
    axes: str = "BD"


def _guider_cfg(sweep: GuiderSweep, value: float) -> dict:
    cfg = OmegaConf.create(sweep.guider)  # a copy; the sweep itself stays untouched
    OmegaConf.update(cfg, sweep.key, value, merge=True)
    return OmegaConf.to_container(cfg)


def _names(sweep: GuiderSweep) -> list[str]:
    names, g = [], sweep.guider
    while isinstance(g, Mapping) and "name" in g:
        names.append(g["name"])
        g = g.get("guider")
    return names


def _row_label(sweep: GuiderSweep) -> str:
    names = _names(sweep)
    return sweep.label or "(".join(names) + ")" * (len(names) - 1)


def rows(cfg: QuickstartConfig) -> list[GuiderSweep]:
    """The configured rows, then a default row for every registered guider that no row names and
    whose needs the testbed meets (:data:`~omniguide.zoo.scorers.TESTBED_PROVIDES`): a new guider
    shows up without an edit here."""
    from ...core.registry import guiders_served, with_needs
    from ...zoo.scorers import TESTBED_PROVIDES, testbed_supplies

    shown = {name for sweep in cfg.guiders for name in _names(sweep)}
    supplies = testbed_supplies(cfg.sampler.label)
    return [*cfg.guiders, *(GuiderSweep(guider=with_needs({"name": name}, supplies))
                            for name in guiders_served(TESTBED_PROVIDES) if name not in shown)]


def check_quickstart(cfg: QuickstartConfig) -> None:
    """Every setting and every guider of the sweep, built without sampling. (The loader has already
    checked that every scale of ``scales`` is a finite number.)"""
    from ...core.schedulers import build_scheduler
    from ...zoo.scorers import bind_testbed
    from ..components import make_guider

    if cfg.testbed.weak_std_factor <= 0:
        raise errors.ConfigError("testbed.weak_std_factor", f"must be > 0, got {cfg.testbed.weak_std_factor}")
    if cfg.sampler.steps < 1:
        raise errors.ConfigError("sampler.steps", f"must be >= 1, got {cfg.sampler.steps}")
    if cfg.sampler.samples < 2:
        raise errors.ConfigError("sampler.samples", f"must be >= 2, got {cfg.sampler.samples}")
    if not 0 <= cfg.sampler.label < cfg.testbed.classes:
        raise errors.ConfigError("sampler.label", f"must be a class in [0, {cfg.testbed.classes - 1}]")
    build_scheduler(cfg.sampler.scheduler, "sampler.scheduler")
    if not cfg.guiders:
        raise errors.ConfigError("guiders", "empty; list at least one {guider: {name: ...}, scales: [...]}")
    for i, sweep in enumerate(rows(cfg)):
        if not sweep.scales:
            raise errors.ConfigError(f"guiders.{i}.scales", "empty")
        for value in sweep.scales:
            make_guider(bind_testbed(_guider_cfg(sweep, value), cfg.testbed), f"guiders.{i}.guider")


@register_recipe("quickstart", QuickstartConfig, check=check_quickstart)
def run_quickstart(cfg: QuickstartConfig, run: RunContext) -> dict:
    """Sample the 2-D mixture with every guider; write gallery.png and metrics.json."""
    import torch

    from ...core.sampler import sample
    from ...core.schedulers import build_scheduler
    from ...zoo import UNCOND, GaussianMixture, denoiser_for, label_branches
    from ...zoo.metrics import all_metrics
    from ...zoo.scorers import bind_testbed
    from ..components import make_guider

    tb = cfg.testbed
    mixture = tb.mixture()
    n, label = cfg.sampler.samples, cfg.sampler.label
    labels = torch.full((n,), label, dtype=torch.long)
    weak = GaussianMixture(mixture.means, mixture.stds * tb.weak_std_factor, mixture.weights, mixture.labels)
    reference = mixture.sample(n, label, torch.Generator().manual_seed(cfg.seed + 1))
    noise = torch.randn(n, tb.dim, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)

    metrics: dict[str, dict[str, Any]] = {"reference": {"exact": all_metrics(
        mixture.sample(n, label, torch.Generator().manual_seed(cfg.seed + 2)), mixture, label, reference)}}
    panels = []
    for i, sweep in enumerate(rows(cfg)):
        row = _row_label(sweep)
        metrics[row] = {}
        for value in sweep.scales:
            guider = make_guider(bind_testbed(_guider_cfg(sweep, value), tb), f"guiders.{i}.guider")
            scheduler = build_scheduler(cfg.sampler.scheduler, "sampler.scheduler")
            model = denoiser_for(mixture, scheduler)
            branches = label_branches(labels, weak_model=denoiser_for(weak, scheduler), classes=len(mixture.classes))
            start = time.perf_counter()
            out = sample(model, scheduler, guider, noise, branches, num_steps=cfg.sampler.steps, axes=cfg.axes,
                         batch=cfg.sampler.batch, progress=False)
            entry = all_metrics(out.sample, mixture, label, reference)
            entry.update(nfe=out.nfe, forward_passes=out.forward_passes, seconds=time.perf_counter() - start)
            metrics[row][f"{value:g}"] = entry
            panels.append((row, value, out.sample, entry))
            run.log(f"{row} {sweep.key}={value:g}: swd {entry['swd']:.3f} precision {entry['precision']:.2f} "
                    f"overshoot {entry['overshoot']:+.2f} nfe {out.nfe}")
    with run.atomic("gallery.png") as tmp:
        everything = mixture.sample(n, UNCOND, torch.Generator().manual_seed(cfg.seed + 3))
        _gallery(tmp, panels, reference, everything, cfg)
    metrics["better"] = dict(BETTER)
    return metrics


def _gallery(path, panels, reference, everything, cfg: QuickstartConfig) -> None:
    """One panel per guider and scale (a row per guider), titled with its numbers. A header strip
    above the panels holds the title, the key to the numbers and the legend -- outside every axes,
    so that the legend covers no panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(p[0] for p in panels))
    cols = max(sum(1 for p in panels if p[0] == r) for r in rows)
    header = 0.75   # inches: title, key, legend
    height = 2.75 * len(rows) + header
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, height), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    lim = 1.6 * cfg.testbed.radius
    counters = dict.fromkeys(rows, 0)
    for row, value, x, entry in panels:
        r, c = rows.index(row), counters[row]
        counters[row] += 1
        ax = axes[r][c]
        ax.set_axis_on()
        ax.scatter(everything[:, 0], everything[:, 1], s=1, c="#dddddd", linewidths=0, label="all classes")
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="#7f8c8d", alpha=0.6, linewidths=0,
                   label="true conditional")
        ax.scatter(x[:, 0].float(), x[:, 1].float(), s=1, c="#c0392b", alpha=0.6, linewidths=0,
                   label=f"guided samples (class {cfg.sampler.label})")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_panel_title(row, value, entry), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - header / height))
    fig.text(0.5, 1 - 0.08 / height, "omniguide quickstart: every guider on the 2-D Gaussian-mixture testbed",
             ha="center", va="top", fontsize=10)
    fig.text(0.5, 1 - 0.3 / height, _metrics_key(), ha="center", va="top", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.45 / height), ncol=len(labels),
               fontsize=8, markerscale=6, frameon=False, borderaxespad=0.0)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _panel_title(row: str, value: float, entry: Mapping[str, Any]) -> str:
    """``cfg 4`` over ``swd 0.26  overshoot +0.94  nfe 60``."""
    return (f"{row} {value:g}\n"
            f"swd {entry['swd']:.2f}  overshoot {entry['overshoot']:+.2f}  nfe {entry['nfe']}")


def _metrics_key() -> str:
    """What the numbers in the panel titles mean, and which way is better."""
    return ("swd: distance to the true conditional (lower is better); overshoot: samples past the class mode, "
            "in component stds (0 is the truth); nfe: model evaluations per sample")
