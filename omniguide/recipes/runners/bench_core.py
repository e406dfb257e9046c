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

import contextlib
import dataclasses
import importlib
import os
import pkgutil
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...core.axes import as_axes
from ...core.branch import BranchExecutor
from ...core.errors import ConfigError
from ...core.guider import GuidanceStep, Guider
from ...core.prediction import Prediction
from ...core.registry import GUIDERS, build_guider
from ...core.schedulers import SchedulerView, build_scheduler
from ..registry import register_recipe
from ..run import RunContext

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")


# -- shared with the other bench recipes ------------------------------------------------------------
@dataclass
class UNetConfig:
    """A small ``UNet2DConditionModel`` built in code (random weights): one level per entry of
    ``block_out_channels``; every level but the first has cross-attention (diffusers' test layout)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    channels: int = 4
    sample_size: int = 32
    tokens: int = 8  # condition tokens per prompt
    seed: int = 0


@dataclass
class TimingConfig:
    warmup: int = 3  # untimed rounds first
    repeats: int = 20  # timed rounds (interleaved)
    inner: int = 50  # combine calls per timing of the (fast) guidance math


def load_guider_modules() -> dict[str, str]:
    """Import every module under :mod:`omniguide.core.methods` so that every guider present in the tree
    is registered; returns ``{module: error}`` for those that fail to import (work in progress)."""
    from ...core import methods

    failed = {}
    for info in pkgutil.iter_modules(methods.__path__):
        try:
            importlib.import_module(f"{methods.__name__}.{info.name}")
        except Exception as err:  # another engineer's half-written method must not stop a benchmark
            failed[info.name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return failed


@contextlib.contextmanager
def torch_threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave them), then restore the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_device(name: str, path: str = "device") -> torch.device:
    if name not in DEVICES:
        raise ConfigError(path, f"unknown device '{name}'; valid: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(path, "cuda was asked for but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(name)


def pick_dtype(name: str, path: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(path, f"unknown dtype '{name}'; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def check_unet(cfg: UNetConfig, path: str = "model") -> None:
    if not cfg.block_out_channels:
        raise ConfigError(f"{path}.block_out_channels", "empty; give one width per level, e.g. [32, 64]")
    for i, width in enumerate(cfg.block_out_channels):
        if width <= 0 or width % cfg.norm_num_groups:
            raise ConfigError(
                f"{path}.block_out_channels.{i}",
                f"{width} must be a positive multiple of norm_num_groups={cfg.norm_num_groups}",
            )
    if cfg.sample_size % (2 ** (len(cfg.block_out_channels) - 1)):
        raise ConfigError(
            f"{path}.sample_size", f"{cfg.sample_size} is not divisible by the UNet's downsampling"
        )
    for key in ("layers_per_block", "cross_attention_dim", "attention_head_dim", "channels", "tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{path}.{key}", f"must be >= 1, got {getattr(cfg, key)}")


def build_unet(cfg: UNetConfig, device: torch.device, dtype: torch.dtype):
    """The small diffusers UNet of ``cfg`` in eval mode on ``device`` / ``dtype``."""
    from diffusers import UNet2DConditionModel

    levels = len(cfg.block_out_channels)
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.channels,
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )
    return unet.eval().to(device=device, dtype=dtype)


def unet_inputs(cfg: UNetConfig, batch: int, device, dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(noise [B, C, H, W], cond embeddings [B, L, D], uncond embeddings [B, L, D])``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.channels, cfg.sample_size, cfg.sample_size)
    noise = torch.randn(shape, generator=gen)
    cond = torch.randn(batch, cfg.tokens, cfg.cross_attention_dim, generator=gen)
    uncond = torch.zeros_like(cond)
    return tuple(t.to(device=device, dtype=dtype) for t in (noise, cond, uncond))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    device: torch.device,
    warmup: int,
    repeats: int,
    inner: Mapping[str, int] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin (order rotated every round) after
    ``warmup`` untimed rounds. ``inner[name]`` calls are timed together and averaged."""
    names = list(fns)
    inner = inner or {}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                for _ in range(inner.get(name, 1)):
                    fns[name]()
        sync(device)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                k = inner.get(name, 1)
                sync(device)
                start = time.perf_counter()
                for _ in range(k):
                    fns[name]()
                sync(device)
                times[name].append((time.perf_counter() - start) / k)
    return times


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and quartiles in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "n": len(ms)}


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import diffusers

    env = {
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):  # other work on the machine makes CPU timings noisy: say how busy it was
        env["load_average_1min"] = os.getloadavg()[0]
    return env


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- this recipe -------------------------------------------------------------------------------------
@dataclass
class BenchCoreConfig:
    model: UNetConfig = field(default_factory=UNetConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    batch: int = 1  # samples per branch
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float16 | bfloat16
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    scheduler: str = "ddim"
    steps: int = 30  # the schedule the measured step belongs to
    step_index: int = -1  # which step is measured; -1 = the middle one
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
    check_unet(cfg.model)
    pick_device(cfg.device)
    pick_dtype(cfg.dtype)
    build_scheduler(cfg.scheduler, "scheduler")
    for key in ("batch", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(key, f"must be >= 1, got {getattr(cfg, key)}")
    if not -1 <= cfg.step_index < cfg.steps:
        raise ConfigError(
            "step_index", f"must be in [0, {cfg.steps - 1}] (or -1 for the middle), got {cfg.step_index}"
        )
    if cfg.timing.repeats < 1 or cfg.timing.warmup < 0 or cfg.timing.inner < 1:
        raise ConfigError("timing", "repeats >= 1, warmup >= 0 and inner >= 1 are required")
    if cfg.threads < 0:
        raise ConfigError("threads", f"must be >= 0, got {cfg.threads}")
    load_guider_modules()
    for name, spec in cfg.guiders.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"guiders.{name}", "expected a mapping of guider fields (the key is the name)")
        make_guider({"name": name, **spec}, name, "guiders")
    for label, spec in cfg.extra.items():
        make_guider(dict(spec) if isinstance(spec, Mapping) else {"name": spec}, label, "extra")


def guider_specs(cfg: BenchCoreConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """``{label: guider config}`` for every registered guider (plus extras), and ``{label: why not}``."""
    specs, skipped = {}, {}
    for name in GUIDERS.names():
        if name in cfg.skip:
            skipped[name] = "skipped by the config"
        elif name in cfg.guiders:
            specs[name] = {"name": name, **dict(cfg.guiders[name])}
        else:
            specs[name] = {"name": name}
    for label, spec in cfg.extra.items():
        specs[label] = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
    return specs, skipped


def make_guider(spec: Mapping[str, Any], label: str, section: str = "guiders") -> Guider:
    """Build; a wrapper that needs an inner guider gets CFG when the config gave none."""
    try:
        return build_guider(dict(spec), f"{section}.{label}")
    except ConfigError as err:
        if "guider" in spec or "'guider'" not in str(err):
            raise
        return build_guider({**spec, "guider": {"name": "cfg"}}, f"{section}.{label}")


def synthetic_preds(
    names: tuple[str, ...], real: Mapping[str, Prediction], seed: int = 1
) -> dict[str, Prediction]:
    """The real UNet predictions where they exist; other branches (perturbed, weak) as the conditional
    prediction plus a little noise, which is all the guidance math needs to be timed."""
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


def steady_state(guider: Guider, step: GuidanceStep, real: Mapping[str, Prediction]) -> dict[str, Prediction]:
    """Run ``guider`` one step before ``step`` (so momentum, caches and agreement masks exist), then
    return the predictions it asks for at ``step``: the path a sampler takes there."""
    guider.reset()
    if step.index:
        before = dataclasses.replace(step, index=step.index - 1)
        with torch.inference_mode():
            guider.combine(synthetic_preds(tuple(guider.branches(before)), real), before)
    preds = synthetic_preds(tuple(guider.branches(step)), real)
    with torch.inference_mode():
        guider.combine(preds, step)  # fail here, not in the timing loop
    return preds


@register_recipe("bench-core", BenchCoreConfig, check=check_bench_core)
def run_bench_core(cfg: BenchCoreConfig, run: RunContext) -> dict:
    """Benchmark: guidance math as a share of a guided UNet step; batched vs sequential branches."""
    check_bench_core(cfg)
    with torch_threads(cfg.threads):
        return _bench_core(cfg, run)


def _bench_core(cfg: BenchCoreConfig, run: RunContext) -> dict:
    failed_imports = load_guider_modules()
    device, dtype = pick_device(cfg.device), pick_dtype(cfg.dtype)
    unet = build_unet(cfg.model, device, dtype)
    noise, cond_emb, uncond_emb = unet_inputs(cfg.model, cfg.batch, device, dtype, cfg.model.seed)
    branches = {"cond": {"encoder_hidden_states": cond_emb}, "uncond": {"encoder_hidden_states": uncond_emb}}
    scheduler = build_scheduler(cfg.scheduler, "scheduler")
    view = SchedulerView(scheduler, cfg.steps, device=device)
    index = cfg.steps // 2 if cfg.step_index < 0 else cfg.step_index
    x = noise * view.init_noise_sigma
    point = view.point(x, index)
    step = GuidanceStep(
        point.model_input, point.model_noise.to(x), point.timestep, index, cfg.steps, as_axes(cfg.axes)
    )
    batched = BranchExecutor(unet, branches, view.parameterization, batch=True)
    sequential = BranchExecutor(unet, branches, view.parameterization, batch=False)
    with torch.inference_mode():
        real = batched(("cond", "uncond"), point.model_input, point.timestep, step)
    cfg_guider = build_guider({"name": "cfg", "scale": 7.5})

    def guided_step() -> Tensor:
        preds = batched(("cond", "uncond"), point.model_input, point.timestep, step)
        result = cfg_guider.combine(preds, step)
        if hasattr(scheduler, "_step_index"):
            scheduler._step_index = index  # stateful schedulers: step the same index again
        return view.step(result, point, x)

    fns: dict[str, Callable] = {
        "step": guided_step,
        "batched": lambda: batched(("cond", "uncond"), point.model_input, point.timestep, step),
        "sequential": lambda: sequential(("cond", "uncond"), point.model_input, point.timestep, step),
        "single": lambda: batched(("cond",), point.model_input, point.timestep, step),
    }
    inner: dict[str, int] = {}
    specs, skipped = guider_specs(cfg)
    info: dict[str, dict[str, Any]] = {}
    for label, spec in specs.items():
        try:
            guider = make_guider(spec, label)
            preds = steady_state(guider, step, real)
        except Exception as err:
            skipped[label] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        fns[f"combine:{label}"] = _combine_fn(guider, preds, step)
        inner[f"combine:{label}"] = cfg.timing.inner
        group = "spectral" if spec.get("name") in cfg.spectral or label in cfg.spectral else "elementwise"
        info[label] = {"group": group, "branches": sorted(preds), "config": guider.config()}
    run.log(
        f"bench-core on {device.type} ({dtype}), batch {cfg.batch}, {len(info)} guiders, "
        f"{cfg.timing.repeats} interleaved rounds after {cfg.timing.warmup} warm-up"
    )
    times = interleaved(fns, device, cfg.timing.warmup, cfg.timing.repeats, inner)
    metrics = _metrics(cfg, device, dtype, unet, times, info, skipped, failed_imports, index)
    run.write_text("report.md", _report(metrics))
    run.write_json("metrics.json", metrics)
    _print_summary(metrics, run)
    return metrics


def _combine_fn(guider: Guider, preds: Mapping[str, Prediction], step: GuidanceStep) -> Callable[[], Any]:
    def call():
        return guider.combine(preds, step)

    return call


def _metrics(cfg, device, dtype, unet, times, info, skipped, failed_imports, index) -> dict[str, Any]:
    step = summary(times["step"])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    combine = {}
    for label, meta in info.items():
        share = med[f"combine:{label}"] / med["step"]
        combine[label] = {
            **meta,
            **summary(times[f"combine:{label}"]),
            "share_of_step": share,
            "meets_target": share < cfg.share_target,
        }
    target = cfg.gpu_batched_target if device.type == "cuda" else cfg.cpu_batched_target
    ratio = med["batched"] / med["sequential"]
    elementwise = [v["share_of_step"] for v in combine.values() if v["group"] == "elementwise"]
    spectral = [v["share_of_step"] for v in combine.values() if v["group"] == "spectral"]
    return {
        "environment": environment(device, dtype),
        "setup": {
            "model": {**cfg.model.__dict__, "parameters": sum(p.numel() for p in unet.parameters())},
            "batch": cfg.batch,
            "scheduler": cfg.scheduler,
            "steps": cfg.steps,
            "step_index": index,
            "warmup": cfg.timing.warmup,
            "repeats": cfg.timing.repeats,
            "inner": cfg.timing.inner,
        },
        "step": step,
        "combine": combine,
        "combine_summary": {
            "share_target": cfg.share_target,
            "elementwise_max_share": max(elementwise, default=float("nan")),
            "spectral_max_share": max(spectral, default=float("nan")),
            "elementwise_meet_target": all(s < cfg.share_target for s in elementwise),
        },
        "branches": {
            "batched": summary(times["batched"]),
            "sequential": summary(times["sequential"]),
            "single": summary(times["single"]),
            "batched_over_sequential": ratio,
            "batched_over_single": med["batched"] / med["single"],
            "sequential_over_single": med["sequential"] / med["single"],
            "target": target,
            "meets_target": ratio <= target,
        },
        "skipped": skipped,
        "failed_imports": failed_imports,
    }


def _report(m: dict[str, Any]) -> str:
    env, setup, br = m["environment"], m["setup"], m["branches"]
    model = setup["model"]
    where = env.get("gpu", env["cpu"]) + (f", {env['threads']} threads" if env["device"] == "cpu" else "")
    lines = [
        "# bench-core: the cost of guidance on a small diffusers UNet",
        "",
        f"{env['device']} ({where}), {env['dtype']}, torch {env['torch']}, diffusers {env['diffusers']}. "
        f"UNet2DConditionModel {model['block_out_channels']} ({model['parameters']:,} parameters), sample "
        f"{model['channels']}x{model['sample_size']}x{model['sample_size']}, "
        f"batch {setup['batch']} per branch, "
        f"{setup['scheduler']} step {setup['step_index']} of {setup['steps']}. Medians of {setup['repeats']} "
        f"interleaved rounds after {setup['warmup']} warm-up; combine timed over {setup['inner']} "
        "calls per round.",
        "",
        "## Batched two-branch evaluation",
        "",
        markdown_table(
            ["call", "median ms", "p25 ms", "p75 ms"],
            [
                [name, br[name]["median_ms"], br[name]["p25_ms"], br[name]["p75_ms"]]
                for name in ("batched", "sequential", "single")
            ],
        ),
        "",
        f"batched / sequential = **{br['batched_over_sequential']:.3f}** (target <= {br['target']}: "
        f"{'met' if br['meets_target'] else 'NOT met'}); batched / single = {br['batched_over_single']:.3f}; "
        f"sequential / single = {br['sequential_over_single']:.3f}.",
        "",
        "## Guidance math as a share of a guided step",
        "",
        f"Guided step (batched cond+uncond forward + CFG combine + scheduler step): "
        f"**{m['step']['median_ms']:.3f} ms** median (p25 {m['step']['p25_ms']:.3f}, "
        f"p75 {m['step']['p75_ms']:.3f}).",
        "",
    ]
    target = m["combine_summary"]["share_target"]
    for group, title in (
        ("elementwise", "Element-wise and reduction methods"),
        ("spectral", "FFT / pyramid / SVD methods (reported separately)"),
    ):
        rows = [
            [
                label,
                ", ".join(v["branches"]),
                v["median_ms"] * 1e3,
                100 * v["share_of_step"],
                "yes" if v["meets_target"] else "no",
            ]
            for label, v in sorted(m["combine"].items())
            if v["group"] == group
        ]
        if rows:
            lines += [
                f"### {title}",
                "",
                markdown_table(
                    ["guider", "branches", "combine median µs", "% of step", f"< {100 * target:g}%"], rows
                ),
                "",
            ]
    if m["skipped"]:
        lines += ["Not measured: " + "; ".join(f"{k} ({v})" for k, v in sorted(m["skipped"].items())), ""]
    if m["failed_imports"]:
        lines += [
            "Method modules that failed to import: "
            + "; ".join(f"{k} ({v})" for k, v in sorted(m["failed_imports"].items())),
            "",
        ]
    return "\n".join(lines)


def _print_summary(m: dict[str, Any], run: RunContext) -> None:
    br = m["branches"]
    run.log(
        f"guided step {m['step']['median_ms']:.3f} ms; "
        f"batched/sequential {br['batched_over_sequential']:.3f} "
        f"(target <= {br['target']}), batched/single {br['batched_over_single']:.3f}"
    )
    for label, v in sorted(m["combine"].items(), key=lambda kv: (kv[1]["group"], kv[0])):
        run.log(
            f"  {v['group']:<11} {label:<16} combine {v['median_ms'] * 1e3:8.1f} µs = "
            f"{100 * v['share_of_step']:.3f}% of a step"
        )
    for label, why in sorted(m["skipped"].items()):
        run.log(f"  not measured: {label}: {why}")
