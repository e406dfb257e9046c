"""Shared pieces of the benchmark recipes (the ``bench-*`` kinds of :mod:`omniguide.bench`).

* **configs and checks**: the small UNet (:class:`UNetConfig`), the timing rounds
  (:class:`TimingConfig`), the fields every UNet benchmark has (:class:`UNetBenchConfig`), and the
  device / dtype names (:func:`pick_device`, :func:`pick_dtype`);
* **the measured step**: the small diffusers UNet (:func:`build_unet`) and one guided step of it set
  up the way a sampler reaches it (:func:`unet_step`);
* **timing**: interleaved repetitions (:func:`interleaved`), their summaries (:func:`summary`) and
  ratios of medians (:func:`median_ratio`), with ``torch.cuda.synchronize`` around every timing;
* **reports**: the environment (:func:`environment`), markdown tables and the lines every report
  shares.

torch, diffusers and the core are imported inside the functions: the config dataclasses load
without them (``omniguide show`` imports every runner, and the runners' schemas extend these).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipes import errors

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from ..core.guider import GuidanceStep
    from ..core.schedulers import SchedulerView

DTYPES = ("float32", "float16", "bfloat16")   # names of torch dtypes
DEVICES = ("auto", "cpu", "cuda")


# -- configs and checks ------------------------------------------------------------------------------
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


@dataclass
class UNetBenchConfig:
    """The fields of a benchmark that times one guided step of the small UNet."""

    model: UNetConfig = field(default_factory=UNetConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    batch: int = 1  # samples per branch
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float16 | bfloat16
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    scheduler: str = "ddim"
    steps: int = 30  # the schedule the measured step belongs to
    step_index: int = -1  # which step is measured; -1 = the middle one


def pick_device(name: str, path: str = "device") -> torch.device:
    """The torch device ``name`` asks for (``auto``: CUDA when torch sees one)."""
    import torch

    if name not in DEVICES:
        raise errors.ConfigError(path, f"unknown device '{name}'; valid: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise errors.ConfigError(path, "cuda was asked for but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(name)


def pick_dtype(name: str, path: str = "dtype") -> torch.dtype:
    """The torch dtype named ``name`` (one of :data:`DTYPES`)."""
    import torch

    if name not in DTYPES:
        raise errors.ConfigError(path, f"unknown dtype '{name}'; valid: {', '.join(DTYPES)}")
    return getattr(torch, name)


def check_unet(cfg: UNetConfig, path: str = "model") -> None:
    if not cfg.block_out_channels:
        raise errors.ConfigError(f"{path}.block_out_channels", "empty; give one width per level, e.g. [32, 64]")
    for i, width in enumerate(cfg.block_out_channels):
        if width <= 0 or width % cfg.norm_num_groups:
            raise errors.ConfigError(f"{path}.block_out_channels.{i}",
                                     f"{width} must be a positive multiple of norm_num_groups={cfg.norm_num_groups}")
    if cfg.sample_size % (2 ** (len(cfg.block_out_channels) - 1)):
        raise errors.ConfigError(f"{path}.sample_size",
                                 f"{cfg.sample_size} is not divisible by the UNet's downsampling")
    for key in ("layers_per_block", "cross_attention_dim", "attention_head_dim", "channels", "tokens"):
        if getattr(cfg, key) < 1:
            raise errors.ConfigError(f"{path}.{key}", f"must be >= 1, got {getattr(cfg, key)}")


def check_unet_bench(cfg: UNetBenchConfig) -> None:
    """The checks every UNet benchmark shares: model, device, dtype and scheduler."""
    from ..core.schedulers import build_scheduler

    check_unet(cfg.model)
    pick_device(cfg.device)
    pick_dtype(cfg.dtype)
    build_scheduler(cfg.scheduler, "scheduler")


def load_guider_modules() -> dict[str, str]:
    """Import every module under :mod:`omniguide.core.methods` so that every guider present in the tree
    is registered; returns ``{module: error}`` for those that fail to import (work in progress)."""
    from ..core import methods

    failed = {}
    for info in pkgutil.iter_modules(methods.__path__):
        try:
            importlib.import_module(f"{methods.__name__}.{info.name}")
        except Exception as err:  # another engineer's half-written method must not stop a benchmark
            failed[info.name] = describe_error(err)
    return failed


def first_line(err: BaseException) -> str:
    """The first line of an error's message ('' for none)."""
    lines = str(err).splitlines()
    return lines[0] if lines else ""


def describe_error(err: BaseException) -> str:
    """``Type: first line of the message``: why something was skipped, in one line."""
    return f"{type(err).__name__}: {first_line(err)}"


# -- the measured step -------------------------------------------------------------------------------
def build_unet(cfg: UNetConfig, device: torch.device, dtype: torch.dtype):
    """The small diffusers UNet of ``cfg`` in eval mode on ``device`` / ``dtype``."""
    import torch
    from diffusers import UNet2DConditionModel

    levels = len(cfg.block_out_channels)
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups)
    return unet.eval().to(device=device, dtype=dtype)


def unet_inputs(cfg: UNetConfig, batch: int, device, dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(noise [B, C, H, W], cond embeddings [B, L, D], uncond embeddings [B, L, D])``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.channels, cfg.sample_size, cfg.sample_size)
    noise = torch.randn(shape, generator=gen)
    cond = torch.randn(batch, cfg.tokens, cfg.cross_attention_dim, generator=gen)
    uncond = torch.zeros_like(cond)
    return tuple(t.to(device=device, dtype=dtype) for t in (noise, cond, uncond))


@dataclass
class UNetStep:
    """One guided step of the small UNet, set up as a sampler reaches step ``index`` of ``steps``."""

    device: torch.device
    dtype: torch.dtype
    unet: Any
    cond: Tensor  # condition embeddings
    uncond: Tensor
    branches: dict[str, dict[str, Tensor]]  # cond / uncond -> the UNet's keyword inputs
    scheduler: Any
    view: SchedulerView
    index: int
    x: Tensor  # the sample at the step
    point: Any  # view.point(x, index): model input, noise level and timestep
    step: GuidanceStep


def unet_step(cfg: UNetBenchConfig, axes: str) -> UNetStep:
    """Build the UNet of ``cfg`` and its inputs, and place them at the measured step."""
    from ..core.axes import as_axes
    from ..core.sampler import step_at
    from ..core.schedulers import SchedulerView, build_scheduler

    device, dtype = pick_device(cfg.device), pick_dtype(cfg.dtype)
    unet = build_unet(cfg.model, device, dtype)
    noise, cond, uncond = unet_inputs(cfg.model, cfg.batch, device, dtype, cfg.model.seed)
    branches = {"cond": {"encoder_hidden_states": cond}, "uncond": {"encoder_hidden_states": uncond}}
    scheduler = build_scheduler(cfg.scheduler, "scheduler")
    view = SchedulerView(scheduler, cfg.steps, device=device)
    index = cfg.steps // 2 if cfg.step_index < 0 else cfg.step_index
    x = noise * view.init_noise_sigma
    point, step = step_at(view, x, index, as_axes(axes))   # as the sampler reaches step index
    return UNetStep(device, dtype, unet, cond, uncond, branches, scheduler, view, index, x, point, step)


@contextlib.contextmanager
def unet_bench(cfg: UNetBenchConfig, axes: str) -> Iterator[tuple[dict[str, str], UNetStep]]:
    """Inside ``cfg.threads`` torch threads: every guider module imported (``{module: error}`` for
    those that failed) and the measured step of ``cfg`` (:func:`unet_step`)."""
    with torch_threads(cfg.threads):
        failed_imports = load_guider_modules()
        yield failed_imports, unet_step(cfg, axes)


# -- timing ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave them), then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timing covers it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int,
                inner: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin (order rotated every round) after
    ``warmup`` untimed rounds. ``inner[name]`` calls are timed together and averaged."""
    import torch

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


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The ratio of the medians of two timings (the side-by-side comparison every benchmark reports)."""
    return statistics.median(numerator) / statistics.median(denominator)


def rounds_text(timing: TimingConfig) -> str:
    """``'N interleaved rounds after M warm-up'`` for the logs."""
    return f"{timing.repeats} interleaved rounds after {timing.warmup} warm-up"


# -- reports -----------------------------------------------------------------------------------------
def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Where a benchmark ran: device, dtype, library versions, threads, CPU (and GPU), load."""
    import diffusers
    import torch

    env = {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):  # other work on the machine makes CPU timings noisy: say how busy it was
        env["load_average_1min"] = os.getloadavg()[0]
    return env


def unet_setup(cfg: UNetBenchConfig, index: int, model: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``setup`` section of a UNet benchmark's metrics; ``extra`` goes before the timing fields."""
    return {"model": model, "batch": cfg.batch, "scheduler": cfg.scheduler, "steps": cfg.steps, "step_index": index,
            **extra, "warmup": cfg.timing.warmup, "repeats": cfg.timing.repeats}


def environment_text(env: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    """The opening of a UNet benchmark report: where it ran, and the UNet (with its parameter count
    when ``model`` has one) and sample shape."""
    where = env.get("gpu", env["cpu"]) + (f", {env['threads']} threads" if env["device"] == "cpu" else "")
    params = f" ({model['parameters']:,} parameters)" if "parameters" in model else ""
    return (f"{env['device']} ({where}), {env['dtype']}, torch {env['torch']}, diffusers {env['diffusers']}. "
            f"UNet2DConditionModel {model['block_out_channels']}{params}, sample "
            f"{model['channels']}x{model['sample_size']}x{model['sample_size']}")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
