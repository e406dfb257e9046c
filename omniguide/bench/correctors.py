"""Benchmark (issue 11): do CFG, predictor-corrector guidance and Feynman-Kac correctors sample the
tempered distribution ``p(x|c)^gamma p(x)^(1-gamma)``?

On a 2-D Gaussian mixture whose classes overlap (on the default ring the tempered density is within
~5e-5 total variation of ``p(x|c)``, so no sampler could be told apart there), the tempered density is
computed exactly on a grid (normalised over the cells). For each ``gamma`` it samples, from the same
noise:

* ``cfg-ddim``, ``cfg-ddpm``: ``CFG(scale=gamma)`` with DDIM and with DDPM (Bradley & Nakkiran: neither
  samples the tempered target);
* ``pcg(K)``: DDIM with the conditional model as predictor and ``K`` Langevin corrector steps on the
  tempered target after every step (:class:`~omniguide.core.correctors.PCG`);
* ``fkc(P)``: ``CFG(scale=gamma)`` with DDPM plus Feynman-Kac weights and SMC resampling in groups of
  ``P`` particles (:class:`~omniguide.core.correctors.FKC`),

and reports, per method and ``gamma``, two distances to the tempered target: the **sliced
Wasserstein distance** to exact samples drawn from the grid density (cell drawn by its mass, uniform
position inside it) and the **total variation** between the samples' histogram on a coarser grid and
the target's mass on the same bins; the noise floor of both is their mean over ``floor_draws`` exact
sample sets of the same size. Plus NFE per sample and, for FKC, the smallest effective sample size.
``table.md`` states whether the papers' claims hold here (judged on both distances), whichever way it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.schema import option
from .kit import markdown_table

if TYPE_CHECKING:   # torch, the core and the zoo are imported inside the functions (omniguide show stays light)
    import torch
    from torch import Tensor

    from ..zoo import GaussianMixture

METHODS = ("cfg-ddim", "cfg-ddpm", "pcg", "fkc")


@dataclass
class MixtureComponents:
    """An explicit mixture: one row per component (2-D means), with std, weight and class label."""

    means: list[list[float]] = field(default_factory=lambda: [[-1.0, 0.0], [1.2, 0.8], [0.4, -0.3], [-0.6, -1.3]])
    stds: list[float] = field(default_factory=lambda: [0.8, 0.5, 0.7, 0.5])
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    labels: list[int] = field(default_factory=lambda: [0, 0, 1, 1])

    def mixture(self) -> GaussianMixture:
        import torch

        from ..zoo import GaussianMixture

        return GaussianMixture(torch.tensor(self.means, dtype=torch.float64), torch.tensor(self.stds),
                               torch.tensor(self.weights), torch.tensor(self.labels))


@dataclass
class GridSection:
    limit: float = option(5.0, gt=0)          # the square [-limit, limit]^2
    size: int = option(400, ge=10)            # cells per side for the exact density
    bins: int = option(16, ge=2)              # cells per side for the total variation


@dataclass
class BenchCorrectorsConfig:
    mixture: MixtureComponents = field(default_factory=MixtureComponents)
    label: int = 0
    gammas: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    samples: int = option(2000, ge=16)
    steps: int = option(30, ge=2)
    pcg_steps: list[int] = field(default_factory=lambda: [1, 4])
    pcg_step_size: float = option(1.0, gt=0)
    fkc_particles: list[int] = field(default_factory=lambda: [8, 100, 1000])
    fkc_threshold: float = option(0.5, ge=0, le=1)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    grid: GridSection = field(default_factory=GridSection)
    floor_draws: int = option(8, ge=1)        # exact sample sets averaged for the noise floor
    seed: int = 0


def check_bench_correctors(cfg: BenchCorrectorsConfig) -> None:
    mixture = cfg.mixture
    k = len(mixture.means)
    if not k or any(len(m) != 2 for m in mixture.means):
        raise errors.ConfigError("mixture.means", "give 2-D means, one per component")
    for name in ("stds", "weights", "labels"):
        if len(getattr(mixture, name)) != k:
            raise errors.ConfigError(f"mixture.{name}", f"needs one entry per component ({k})")
    if cfg.label not in mixture.labels:
        raise errors.ConfigError("label", f"{cfg.label} is not a class of the mixture ({sorted(set(mixture.labels))})")
    for i, m in enumerate(cfg.methods):
        if m not in METHODS:
            raise errors.ConfigError(f"methods.{i}", f"unknown method '{m}'; valid: {', '.join(METHODS)}")
    for i, p in enumerate(cfg.fkc_particles):
        if p < 2 or cfg.samples % p:
            raise errors.ConfigError(f"fkc_particles.{i}", f"{p} must be >= 2 and divide samples ({cfg.samples})")
    if not cfg.gammas or any(g < 1 for g in cfg.gammas):
        raise errors.ConfigError("gammas", "give guidance strengths gamma >= 1")


# -- the exact tempered target on a grid --------------------------------------------------------------------
def grid_points(limit: float, size: int) -> tuple[Tensor, float]:
    import torch

    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 * limit - limit
    xx, yy = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), (2 * limit / size) ** 2


def tempered_log_density(mixture: GaussianMixture, label: int, gamma: float, points: Tensor) -> Tensor:
    """``gamma log p(x|c) + (1 - gamma) log p(x)`` (unnormalised) at ``points``."""
    from ..zoo.scorers import component_log_density

    comp = component_log_density(mixture, points)
    log_joint = comp.logsumexp(1)
    log_cond = comp[:, mixture.labels == label].logsumexp(1)
    return gamma * log_cond + (1 - gamma) * log_joint


def grid_mass(log_density: Tensor) -> Tensor:
    """Cell masses (normalised to 1 over the grid) from log densities at the cell centres."""
    import torch

    return torch.softmax(log_density, 0)


def sample_grid(mass: Tensor, limit: float, size: int, n: int, generator: torch.Generator) -> Tensor:
    """Exact samples of the gridded density: a cell by its mass, a uniform point inside it."""
    import torch

    cells = torch.multinomial(mass, n, replacement=True, generator=generator)
    width = 2 * limit / size
    i, j = cells // size, cells % size
    corner = torch.stack([i, j], 1).double() * width - limit
    return corner + torch.rand(n, 2, generator=generator, dtype=torch.float64) * width


def binned(mass: Tensor, size: int, bins: int) -> Tensor:
    """Grid masses summed into ``bins x bins`` coarser cells."""
    factor = size // bins
    return mass.reshape(size, size)[: bins * factor, : bins * factor].reshape(bins, factor, bins, factor).sum((1, 3))


def histogram(x: Tensor, limit: float, bins: int) -> Tensor:
    """Share of ``x`` in each of ``bins x bins`` cells of the square (points outside count as lost mass)."""
    import torch

    idx = ((x + limit) / (2 * limit) * bins).floor().long()
    inside = ((idx >= 0) & (idx < bins)).all(1)
    flat = idx[inside, 0] * bins + idx[inside, 1]
    return torch.bincount(flat, minlength=bins * bins).double().reshape(bins, bins) / len(x)


def total_variation(x: Tensor, target_bins: Tensor, limit: float, bins: int) -> float:
    h = histogram(x, limit, bins)
    outside = 1.0 - float(h.sum())
    return 0.5 * (float((h - target_bins).abs().sum()) + outside)


# -- sampling ----------------------------------------------------------------------------------------------
def run_method(method: str, setting: int | None, gamma: float, mixture: GaussianMixture, noise: Tensor,
               cfg: BenchCorrectorsConfig) -> tuple[Tensor, float, dict]:
    import torch

    from ..core.correctors import FKC, PCG
    from ..core.methods import CFG
    from ..core.sampler import sample
    from ..core.schedulers import build_scheduler
    from ..zoo import denoiser_for, label_branches

    labels = torch.full((len(noise),), cfg.label, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    corrector, guider, scheduler = None, CFG(scale=gamma), "ddpm"
    if method == "cfg-ddim":
        scheduler = "ddim"
    elif method == "pcg":
        guider, scheduler = CFG(scale=1.0), "ddim"
        corrector = PCG(gamma=gamma, steps=int(setting), step_size=cfg.pcg_step_size, seed=cfg.seed)
    elif method == "fkc":
        corrector = FKC(gamma=gamma, particles=int(setting), threshold=cfg.fkc_threshold, collapse=0.0,
                        seed=cfg.seed)
    s = build_scheduler(scheduler)
    out = sample(denoiser_for(mixture, s), s, guider, noise, label_branches(labels), num_steps=cfg.steps,
                 axes="BD", progress=False, generator=gen, corrector=corrector)
    return out.sample, float(out.nfe), out.report


def row_name(method: str, setting: int | None) -> str:
    return {"pcg": f"pcg(K={setting})", "fkc": f"fkc(P={setting})"}.get(method, method)


def plan(cfg: BenchCorrectorsConfig) -> list[tuple[str, int | None]]:
    rows = []
    for m in cfg.methods:
        if m == "pcg":
            rows += [("pcg", k) for k in cfg.pcg_steps]
        elif m == "fkc":
            rows += [("fkc", p) for p in cfg.fkc_particles]
        else:
            rows.append((m, None))
    return rows


@register_recipe("bench-correctors", BenchCorrectorsConfig, check=check_bench_correctors)
def run_bench_correctors(cfg: BenchCorrectorsConfig, run: RunContext) -> dict:
    """Benchmark: CFG (DDIM, DDPM), PCG and FKC samples against the exact tempered density on a grid."""
    import torch

    from ..zoo.metrics import sliced_wasserstein

    check_bench_correctors(cfg)
    start = time.perf_counter()
    mixture = cfg.mixture.mixture()
    g = cfg.grid
    points, _ = grid_points(g.limit, g.size)
    noise = torch.randn(cfg.samples, 2, generator=torch.Generator().manual_seed(cfg.seed), dtype=torch.float64)
    cond_mass = grid_mass(tempered_log_density(mixture, cfg.label, 1.0, points))
    results: dict[str, Any] = {}
    for gamma in cfg.gammas:
        mass = grid_mass(tempered_log_density(mixture, cfg.label, gamma, points))
        target_bins = binned(mass, g.size, g.bins)
        reference = sample_grid(mass, g.limit, g.size, cfg.samples, torch.Generator().manual_seed(cfg.seed + 1))
        exact = [sample_grid(mass, g.limit, g.size, cfg.samples, torch.Generator().manual_seed(cfg.seed + 2 + k))
                 for k in range(cfg.floor_draws)]
        entry = {
            "tv_target_vs_conditional": 0.5 * float((mass - cond_mass).abs().sum()),
            "floor": {"swd": sum(sliced_wasserstein(e, reference) for e in exact) / len(exact),
                      "tv": sum(total_variation(e, target_bins, g.limit, g.bins) for e in exact) / len(exact)},
            "methods": {},
        }
        for method, setting in plan(cfg):
            t0 = time.perf_counter()
            x, nfe, details = run_method(method, setting, gamma, mixture, noise, cfg)
            m = {"swd": sliced_wasserstein(x, reference), "tv": total_variation(x, target_bins, g.limit, g.bins),
                 "nfe": nfe, "seconds": time.perf_counter() - t0}
            if "fkc" in details:
                ess = details["fkc"]["ess_fraction_per_step"]
                m["min_ess_fraction"] = min(ess) if ess else 1.0
                m["resamplings"] = len(details["fkc"]["resampled_steps"])
            entry["methods"][row_name(method, setting)] = m
            run.log(f"gamma {gamma:g} {row_name(method, setting)}: swd {m['swd']:.3f} tv {m['tv']:.3f} nfe {nfe:g}")
        results[f"{gamma:g}"] = entry
    claims = check_claims(results, cfg)
    metrics = {"setup": {"mixture": cfg.mixture.__dict__, "label": cfg.label, "samples": cfg.samples,
                         "steps": cfg.steps, "grid": g.__dict__, "pcg_step_size": cfg.pcg_step_size,
                         "fkc_threshold": cfg.fkc_threshold, "seed": cfg.seed},
               "gammas": results, "claims": claims, "seconds": time.perf_counter() - start}
    run.write_text("table.md", report(metrics))
    with run.atomic("plot.png") as tmp:
        plot(tmp, cfg, mixture, points, noise)
    for claim in claims:
        run.log(f"{'HOLDS ' if claim['holds'] else 'FAILS '} {claim['claim']}: {claim['detail']}")
    return metrics


# -- verdicts and output -------------------------------------------------------------------------------------
def _closer(a: dict, b: dict) -> bool:
    """``a`` is closer to the target than ``b`` by both distances."""
    return a["tv"] < b["tv"] and a["swd"] < b["swd"]


def _both(m: dict) -> str:
    return f"tv {m['tv']:.3f} / swd {m['swd']:.3f}"


def check_claims(results: dict, cfg: BenchCorrectorsConfig) -> list[dict]:
    """The papers' claims, each judged on *both* distances (it holds only when both agree)."""
    claims = []
    sharp = {k: v for k, v in results.items() if float(k) > 1}
    for gamma, entry in sharp.items():
        methods, floor = entry["methods"], entry["floor"]
        for name in ("cfg-ddim", "cfg-ddpm"):
            if name in methods:
                m = methods[name]
                claims.append({"claim": f"{name} does not sample the tempered target (gamma {gamma})",
                               "holds": m["tv"] > 2 * floor["tv"] and m["swd"] > 2 * floor["swd"],
                               "detail": f"{_both(m)} vs exact-sample floor {_both(floor)}"})
        pcg = sorted((int(n[6:-1]), m) for n, m in methods.items() if n.startswith("pcg("))
        if len(pcg) > 1:
            claims.append({"claim": f"more Langevin corrector steps bring PCG closer (gamma {gamma})",
                           "holds": _closer(pcg[-1][1], pcg[0][1]),
                           "detail": ", ".join(f"K={k}: {_both(m)}" for k, m in pcg)})
        if pcg and "cfg-ddim" in methods:
            claims.append({"claim": f"PCG is closer than CFG-DDIM (gamma {gamma})",
                           "holds": _closer(pcg[0][1], methods["cfg-ddim"]),
                           "detail": f"pcg(K={pcg[0][0]}) {_both(pcg[0][1])} vs cfg-ddim {_both(methods['cfg-ddim'])}"})
        fkc = sorted((int(n[6:-1]), m) for n, m in methods.items() if n.startswith("fkc("))
        if fkc and "cfg-ddpm" in methods:
            best = fkc[-1][1]
            claims.append({"claim": f"FKC (most particles) is closer than CFG-DDPM (gamma {gamma})",
                           "holds": _closer(best, methods["cfg-ddpm"]),
                           "detail": f"fkc(P={fkc[-1][0]}) {_both(best)} vs cfg-ddpm {_both(methods['cfg-ddpm'])}"})
        if len(fkc) > 1:
            claims.append({"claim": f"FKC improves with more particles (gamma {gamma})",
                           "holds": _closer(fkc[-1][1], fkc[0][1]),
                           "detail": ", ".join(f"P={p}: {_both(m)}" for p, m in fkc)})
    return claims


def report(metrics: dict) -> str:
    s = metrics["setup"]
    lines = [
        "# bench-correctors: distance to the tempered target p(x|c)^gamma p(x)^(1-gamma)",
        "",
        f"2-D mixture with overlapping classes ({len(s['mixture']['means'])} components), class {s['label']}, "
        f"{s['samples']} samples, {s['steps']} steps. Target computed exactly on a {s['grid']['size']}^2 grid over "
        f"[-{s['grid']['limit']:g}, {s['grid']['limit']:g}]^2. **swd**: sliced Wasserstein distance to exact samples "
        f"of the gridded target; **tv**: total variation between the samples' histogram and the target's mass on "
        f"{s['grid']['bins']}^2 bins (mass outside the square counts as error). *floor*: the same distances for "
        "exact sample sets of the same size (mean of several draws). NFE per sample.",
        "",
    ]
    for gamma, entry in metrics["gammas"].items():
        lines += [f"## gamma = {gamma}", "",
                  f"TV(tempered target, p(x|c)) = {entry['tv_target_vs_conditional']:.3f}; "
                  f"floor: swd {entry['floor']['swd']:.3f}, tv {entry['floor']['tv']:.3f}", ""]
        rows = []
        for name, m in entry["methods"].items():
            extra = f"{m['min_ess_fraction']:.2f} / {m['resamplings']}" if "min_ess_fraction" in m else ""
            rows.append([name, f"{m['swd']:.3f}", f"{m['tv']:.3f}", f"{m['nfe']:g}", extra, f"{m['seconds']:.1f}"])
        lines += [markdown_table(["method", "swd", "tv", "NFE", "FKC min ESS / resamplings", "s"], rows), ""]
    lines += ["## Claims (each judged on both distances)", ""]
    lines += [f"- {'HOLDS' if c['holds'] else 'FAILS'}: {c['claim']} ({c['detail']})" for c in metrics["claims"]]
    return "\n".join(lines) + "\n"


def plot(path, cfg: BenchCorrectorsConfig, mixture: GaussianMixture, points: Tensor, noise: Tensor) -> None:
    """The target density and each method's samples at the largest gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gamma = max(cfg.gammas)
    rows = [(m, s) for m, s in plan(cfg)]
    cols = len(rows) + 1
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.8), squeeze=False)
    g = cfg.grid
    dens = grid_mass(tempered_log_density(mixture, cfg.label, gamma, points)).reshape(g.size, g.size)
    extent = [-g.limit, g.limit, -g.limit, g.limit]
    axes[0, 0].imshow(dens.T.numpy(), origin="lower", extent=extent, cmap="magma")
    axes[0, 0].set_title(f"target, gamma={gamma:g}", fontsize=8)
    for ax, (method, setting) in zip(axes[0, 1:], rows):
        x, _, _ = run_method(method, setting, gamma, mixture, noise[:500] if method != "fkc" or 500 % setting == 0
                             else noise, cfg)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_title(row_name(method, setting), fontsize=8)
    for ax in axes[0]:
        ax.set_xlim(-g.limit, g.limit)
        ax.set_ylim(-g.limit, g.limit)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


