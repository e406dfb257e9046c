"""Benchmark (issue 2): the cost of guidance on a small diffusers UNet, measured side by side in one run.

Two measurements, each with warm-up and interleaved repetitions (A, B, C, A, B, C, ... with the
order rotated every round), reported as medians and ratios of medians:

* **guidance math as a share of a guided step.** A guided step is what the sampler does at one
  step: a batched cond + uncond forward of the UNet, ``CFG.combine`` and the scheduler step. Next to
  it, ``guider.combine`` alone for every guider registered in :data:`omniguide.core.registry.GUIDERS`
  at run time (FFT-, pyramid- and SVD-based methods, ``spectral`` in the config, in their own group).
  Target: under 1% of a step.
* **batched two-branch evaluation.** The executor's batched cond + uncond call against the same two
  branches run in sequence (``BranchExecutor(batch=False)``) and against one pass (cond alone).
  Targets: batched / sequential <= 1.0 on a CPU, <= 0.8 on a GPU.

Writes ``metrics.json`` and ``report.md``. ``device: auto | cpu | cuda`` and ``dtype`` make the same
recipe run on a GPU (``torch.cuda.synchronize`` brackets every timing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from . import kit

if TYPE_CHECKING:   # torch and the core are imported inside the functions (cheap schema import)
    from torch import Tensor

    from ..core.guider import GuidanceStep, Guider
    from ..core.prediction import Prediction

BRANCH_CALLS = ("batched", "sequential", "single")  # the executor calls compared side by side


@dataclass
class BenchCoreConfig(kit.UNetBenchConfig):
    """The UNet benchmark fields (:class:`~omniguide.recipes.kit.UNetBenchConfig`), then these."""

    axes: str = "BCHW"
    # every registered guider is measured with its defaults; these override per name (wrappers need
    # an inner guider), 'extra' adds named variants, 'spectral' names the FFT / SVD group
    guiders: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    spectral: list[str] = field(default_factory=lambda: ["fdg", "tcfg"])
    skip: list[str] = field(default_factory=list)
    share_target: float = 0.01
    cpu_batched_target: float = 1.0
    gpu_batched_target: float = 0.8


def check_bench_core(cfg: BenchCoreConfig) -> None:
    from ..core.registry import with_needs

    kit.check_unet_bench(cfg)
    for key in ("batch", "steps"):
        if getattr(cfg, key) < 1:
            raise errors.ConfigError(key, f"must be >= 1, got {getattr(cfg, key)}")
    if not -1 <= cfg.step_index < cfg.steps:
        raise errors.ConfigError("step_index",
                                 f"must be in [0, {cfg.steps - 1}] (or -1 for the middle), got {cfg.step_index}")
    if cfg.timing.repeats < 1 or cfg.timing.warmup < 0 or cfg.timing.inner < 1:
        raise errors.ConfigError("timing", "repeats >= 1, warmup >= 0 and inner >= 1 are required")
    if cfg.threads < 0:
        raise errors.ConfigError("threads", f"must be >= 0, got {cfg.threads}")
    kit.load_guider_modules()
    for name, spec in cfg.guiders.items():
        if not isinstance(spec, Mapping):
            raise errors.ConfigError(f"guiders.{name}", "expected a mapping of guider fields (the key is the name)")
        make_guider(with_needs({"name": name, **spec}, step_supplies()), name, "guiders")
    for label, spec in cfg.extra.items():
        make_guider(extra_spec(spec), label, "extra")


def extra_spec(spec: Any) -> dict[str, Any]:
    """An ``extra`` entry as a guider config: a mapping, or a bare guider name."""
    return dict(spec) if isinstance(spec, Mapping) else {"name": spec}


def guider_specs(cfg: BenchCoreConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """``{label: guider config}`` for every registered guider (plus extras), and ``{label: why not}``.
    A guider that needs a scorer or a classifier gets the step's stand-ins (:func:`step_supplies`)."""
    from ..core.registry import GUIDERS, with_needs

    specs, skipped = {}, {}
    for name in GUIDERS.names():
        if name in cfg.skip:
            skipped[name] = "skipped by the config"
        else:
            specs[name] = with_needs({"name": name, **dict(cfg.guiders.get(name, {}))}, step_supplies())
    for label, spec in cfg.extra.items():
        specs[label] = extra_spec(spec)
    return specs, skipped


def step_supplies() -> dict[str, Callable]:
    """What the measured step gives the guiders that need a scorer or a classifier: cheap stand-ins
    on the latent ``x0 [B, C, H, W]``, enough to time their math -- the score ``-mean(x0^2)`` per
    sample, and one class logit per channel (its mean)."""
    from ..core.needs import CLASSIFIER, SCORER

    return {SCORER: lambda x0: -x0.flatten(1).pow(2).mean(1), CLASSIFIER: lambda x0: x0.flatten(2).mean(2)}


def make_guider(spec: Mapping[str, Any], label: str, section: str = "guiders") -> Guider:
    """Build (values checked as in every recipe); a wrapper that needs an inner guider gets CFG when
    the config gave none."""
    from ..recipes.components import make_guider as build

    try:
        return build(dict(spec), f"{section}.{label}")
    except errors.ConfigError as err:
        if "guider" in spec or "'guider'" not in str(err):
            raise
        return build({**spec, "guider": {"name": "cfg"}}, f"{section}.{label}")


def synthetic_preds(names: tuple[str, ...], real: Mapping[str, Prediction], seed: int = 1) -> dict[str, Prediction]:
    """The real UNet predictions where they exist; other branches (perturbed, weak) as the conditional
    prediction plus a little noise, which is all the guidance math needs to be timed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        if name in real:
            out[name] = real[name]
        else:
            base = real["cond"]
            jitter = 0.1 * torch.randn(base.value.shape, generator=gen).to(base.value)
            out[name] = base.with_value(base.value + jitter)
    return out


def steady_state(guider: Guider, step: GuidanceStep, real: Mapping[str, Prediction],
                 run: Callable[[tuple[str, ...], Mapping], dict[str, Prediction]] | None = None,
                 ) -> dict[str, Prediction]:
    """Run ``guider`` one step before ``step`` (so momentum, caches and agreement masks exist), then
    return the predictions it asks for at ``step`` with its follow-up branches: the path a sampler
    takes there. A guider with follow-ups (SAG reads the attention it recorded) gets its first round
    from ``run(names, its branch table)``, the real UNet; one that needs autograd (scorer guidance)
    runs outside inference mode, on ordinary tensors."""
    import torch

    from ..core.guider import FOLLOW_UP

    needs, grad = guider.requires(), autograd(guider)

    def one_round(at: GuidanceStep) -> dict[str, Prediction]:
        names = tuple(guider.branches(at))
        first = run(names, guider.branch_defaults()) if FOLLOW_UP in needs and run else synthetic_preds(names, real)
        preds = {**first, **synthetic_preds(tuple(guider.follow_up(first, at)), real)}
        if grad:
            preds = {name: p.with_value(p.value.clone()) for name, p in preds.items()}
        guider.combine(preds, at)  # fail here, not in the timing loop
        return preds

    guider.reset()
    with torch.inference_mode(not grad):
        if step.index:
            one_round(dataclasses.replace(step, index=step.index - 1))
        return one_round(step)


def step_calls(s: kit.UNetStep) -> tuple[dict[str, Callable], dict[str, Prediction]]:
    """The UNet calls timed side by side (the guided step, batched / sequential / single branch
    evaluation) and the real cond / uncond predictions at the step."""
    import torch

    from ..core.branch import BranchExecutor
    from ..core.registry import build_guider
    from ..core.sampler import evaluate_guider

    point, step = s.point, s.step
    batched = BranchExecutor(s.unet, s.branches, s.view.parameterization, batch=True)
    sequential = BranchExecutor(s.unet, s.branches, s.view.parameterization, batch=False)

    def forward(executor: BranchExecutor, names: tuple[str, ...]) -> Callable[[], dict[str, Prediction]]:
        return lambda: executor(names, point.model_input, point.timestep, step)

    both = forward(batched, ("cond", "uncond"))
    with torch.inference_mode():
        real = both()
    cfg_guider = build_guider({"name": "cfg", "scale": 7.5})

    def guided_step() -> Tensor:
        _, result = evaluate_guider(cfg_guider, batched, point.model_input, point.timestep, step)
        if hasattr(s.scheduler, "_step_index"):
            s.scheduler._step_index = s.index  # stateful schedulers: step the same index again
        return s.view.step(result, point, s.x)

    fns: dict[str, Callable] = {"step": guided_step, "batched": both,
                                "sequential": forward(sequential, ("cond", "uncond")),
                                "single": forward(batched, ("cond",))}
    return fns, real


def real_round(s: kit.UNetStep, names: tuple[str, ...], table: Mapping) -> dict[str, Prediction]:
    """The UNet's predictions of ``names`` at the step, with a guider's own branches in the table."""
    from ..core.branch import BranchExecutor

    executor = BranchExecutor(s.unet, {**table, **s.branches}, s.view.parameterization, batch=True)
    return executor(names, s.point.model_input, s.point.timestep, s.step)


@register_recipe("bench-core", BenchCoreConfig, check=check_bench_core)
def run_bench_core(cfg: BenchCoreConfig, run: RunContext) -> dict:
    """Benchmark: guidance math as a share of a guided UNet step; batched vs sequential branches."""
    check_bench_core(cfg)
    with kit.unet_bench(cfg, cfg.axes) as (failed_imports, s):
        fns, real = step_calls(s)
        inner: dict[str, int] = {}
        specs, skipped = guider_specs(cfg)
        info: dict[str, dict[str, Any]] = {}
        for label, spec in specs.items():
            try:
                guider = make_guider(spec, label)
                preds = steady_state(guider, s.step, real, lambda names, table: real_round(s, names, table))
            except Exception as err:
                skipped[label] = kit.describe_error(err)
                continue
            fns[f"combine:{label}"] = _combine_fn(guider, preds, s.step)
            inner[f"combine:{label}"] = cfg.timing.inner
            group = "spectral" if spec.get("name") in cfg.spectral or label in cfg.spectral else "elementwise"
            info[label] = {"group": group, "branches": sorted(preds), "config": guider.config()}
        run.log(f"bench-core on {s.device.type} ({s.dtype}), batch {cfg.batch}, {len(info)} guiders, "
                + kit.rounds_text(cfg.timing))
        times = kit.interleaved(fns, s.device, cfg.timing.warmup, cfg.timing.repeats, inner)
        metrics = _metrics(cfg, s, times, info, skipped, failed_imports)
        run.write_text("report.md", _report(metrics))
        _print_summary(metrics, run)
    return metrics


def autograd(guider: Guider) -> bool:
    """Whether ``guider`` differentiates (through the model, or a scorer it needs) and so runs
    outside inference mode."""
    from ..core.guider import GRADIENT
    from ..core.needs import SCORER

    return GRADIENT in guider.requires() or SCORER in guider.needs


def _combine_fn(guider: Guider, preds: Mapping[str, Prediction], step: GuidanceStep) -> Callable[[], Any]:
    import torch

    def call():
        return guider.combine(preds, step)

    def call_with_autograd():   # outside the timing's inference mode
        with torch.inference_mode(False):
            return guider.combine(preds, step)

    return call_with_autograd if autograd(guider) else call


def _metrics(cfg: BenchCoreConfig, s: kit.UNetStep, times, info, skipped, failed_imports) -> dict[str, Any]:
    combine = {}
    for label, meta in info.items():
        share = kit.median_ratio(times[f"combine:{label}"], times["step"])
        combine[label] = {**meta, **kit.summary(times[f"combine:{label}"]), "share_of_step": share,
                          "meets_target": share < cfg.share_target}
    target = cfg.gpu_batched_target if s.device.type == "cuda" else cfg.cpu_batched_target
    ratio = kit.median_ratio(times["batched"], times["sequential"])
    shares = {g: [v["share_of_step"] for v in combine.values() if v["group"] == g] for g in ("elementwise", "spectral")}
    model = {**cfg.model.__dict__, "parameters": sum(p.numel() for p in s.unet.parameters())}
    return {
        "environment": kit.environment(s.device, s.dtype),
        "setup": {**kit.unet_setup(cfg, s.index, model), "inner": cfg.timing.inner},
        "step": kit.summary(times["step"]),
        "combine": combine,
        "combine_summary": {"share_target": cfg.share_target,
                            "elementwise_max_share": max(shares["elementwise"], default=float("nan")),
                            "spectral_max_share": max(shares["spectral"], default=float("nan")),
                            "elementwise_meet_target": all(x < cfg.share_target for x in shares["elementwise"])},
        "branches": {**{name: kit.summary(times[name]) for name in BRANCH_CALLS}, "batched_over_sequential": ratio,
                     "batched_over_single": kit.median_ratio(times["batched"], times["single"]),
                     "sequential_over_single": kit.median_ratio(times["sequential"], times["single"]),
                     "target": target, "meets_target": ratio <= target},
        "skipped": skipped,
        "failed_imports": failed_imports,
    }


def _listing(title: str, why: Mapping[str, str]) -> list[str]:
    """``title: a (why); b (why)`` as report lines, or nothing when ``why`` is empty."""
    return [f"{title}: " + "; ".join(f"{k} ({v})" for k, v in sorted(why.items())), ""] if why else []


def _report(m: dict[str, Any]) -> str:
    env, setup, br = m["environment"], m["setup"], m["branches"]
    lines = [
        "# bench-core: the cost of guidance on a small diffusers UNet", "",
        f"{kit.environment_text(env, setup['model'])}, batch {setup['batch']} per branch, "
        f"{setup['scheduler']} step {setup['step_index']} of {setup['steps']}. Medians of {setup['repeats']} "
        f"interleaved rounds after {setup['warmup']} warm-up; combine timed over {setup['inner']} "
        "calls per round.", "",
        "## Batched two-branch evaluation", "",
        kit.markdown_table(["call", "median ms", "p25 ms", "p75 ms"],
                           [[name, br[name]["median_ms"], br[name]["p25_ms"], br[name]["p75_ms"]]
                            for name in BRANCH_CALLS]), "",
        f"batched / sequential = **{br['batched_over_sequential']:.3f}** (target <= {br['target']}: "
        f"{'met' if br['meets_target'] else 'NOT met'}); batched / single = {br['batched_over_single']:.3f}; "
        f"sequential / single = {br['sequential_over_single']:.3f}.", "",
        "## Guidance math as a share of a guided step", "",
        f"Guided step (batched cond+uncond forward + CFG combine + scheduler step): "
        f"**{m['step']['median_ms']:.3f} ms** median (p25 {m['step']['p25_ms']:.3f}, "
        f"p75 {m['step']['p75_ms']:.3f}).", "",
    ]
    target, yes = m["combine_summary"]["share_target"], kit.yes_no
    header = ["guider", "branches", "combine median µs", "% of step", f"< {100 * target:g}%"]
    for group, title in (("elementwise", "Element-wise and reduction methods"),
                         ("spectral", "FFT / pyramid / SVD methods (reported separately)")):
        rows = [[label, ", ".join(v["branches"]), v["median_ms"] * 1e3, 100 * v["share_of_step"],
                 yes(v["meets_target"])] for label, v in sorted(m["combine"].items()) if v["group"] == group]
        if rows:
            lines += [f"### {title}", "", kit.markdown_table(header, rows), ""]
    lines += _listing("Not measured", m["skipped"])
    lines += _listing("Method modules that failed to import", m["failed_imports"])
    return "\n".join(lines)


def _print_summary(m: dict[str, Any], run: RunContext) -> None:
    br = m["branches"]
    run.log(f"guided step {m['step']['median_ms']:.3f} ms; batched/sequential {br['batched_over_sequential']:.3f} "
            f"(target <= {br['target']}), batched/single {br['batched_over_single']:.3f}")
    for label, v in sorted(m["combine"].items(), key=lambda kv: (kv[1]["group"], kv[0])):
        run.log(f"  {v['group']:<11} {label:<16} combine {v['median_ms'] * 1e3:8.1f} µs = "
                f"{100 * v['share_of_step']:.3f}% of a step")
    for label, why in sorted(m["skipped"].items()):
        run.log(f"  not measured: {label}: {why}")
