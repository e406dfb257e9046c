"""``kind: bench-video-history`` -- what history guidance changes in long rollouts of the zoo's sprite
model, measured against the known physics, and peak memory against video length.

For every method (conditional sampling; vanilla, fractional and temporal history guidance at
several weights) the same videos (random captions and starts from ``seed``) are rolled out from
``history`` ground-truth frames for ``windows`` windows of ``chunk`` new frames. Reported per
method: the sprite position error (pixels) in windows 1, 4 and 16 against the true trajectory, the
share of sprites still found, background flicker between consecutive frames (frame-to-frame
consistency), the motion ratio (estimated over true per-frame displacement: 0 is a frozen video),
NFE per generated frame and seconds; two reference rows without a model (the true frames, and the
last given frame repeated). Then one rollout per length in ``memory.lengths``, each in its
own process, with its peak resident memory, side by side. Writes ``metrics.json`` and ``table.md``.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.runners.rollout import RolloutConfig, build_subject, check_histories, make_rollout
from ..recipes.schema import option
from .kit import markdown_table, torch_threads


@dataclass
class Method:
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "history", "scheme": "conditional"})
    label: str | None = None


@dataclass
class MemoryConfig:
    lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    guider: dict[str, Any] = field(default_factory=lambda: {"name": "history", "scheme": "vanilla", "scale": 2.0})
    videos: int = option(1, ge=1)


@dataclass
class VideoHistoryBenchConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "video-denoiser"})
    videos: int = option(8, ge=1)
    history: int = option(4, ge=1)
    windows: int = option(16, ge=1)
    context: int = option(4, ge=1)
    chunk: int = option(4, ge=1)
    steps: int = option(10, ge=1)
    stabilization: Any = 0.02
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "flow-euler"})
    methods: list[Method] = field(default_factory=list)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    seed: int = 0
    threads: int | None = option(1, ge=1)


def method_label(method: Method) -> str:
    """The row label of a method: its own, or the scheme and its numbers."""
    if method.label:
        return method.label
    g = method.guider
    parts = [str(g.get("scheme", g.get("name")))]
    for key in ("scale", "k", "weights", "subsets"):
        if key in g:
            parts.append(f"{key}={g[key]}")
    return " ".join(parts)


def rollout_config(cfg: VideoHistoryBenchConfig, guider: dict, frames: int, videos: int) -> RolloutConfig:
    return RolloutConfig(model=cfg.model, history=cfg.history, frames=frames, context=cfg.context, chunk=cfg.chunk,
                         steps=cfg.steps, scheduler=cfg.scheduler, stabilization=cfg.stabilization, guider=guider,
                         samples=videos, seed=cfg.seed, progress=False)


def check_bench(cfg: VideoHistoryBenchConfig) -> None:
    from ..core.registry import build_guider
    if not cfg.methods:
        raise errors.ConfigError("methods", "empty; list {guider: {name: history, ...}} entries")
    subject = build_subject(cfg.model)
    for i, method in enumerate(cfg.methods):
        guider = build_guider(method.guider, f"methods.{i}.guider")
        rc = rollout_config(cfg, method.guider, cfg.history + cfg.windows * cfg.chunk, cfg.videos)
        check_histories(rc, make_rollout(rc, subject, guider=guider))
    for length in cfg.memory.lengths:
        if length <= cfg.history:
            raise errors.ConfigError("memory.lengths",
                                     f"{length} frames leaves nothing to generate after {cfg.history}")
    build_guider(cfg.memory.guider, "memory.guider")


def run_method(cfg: VideoHistoryBenchConfig, subject: Any, guider_cfg: dict) -> dict:
    """One method on the bench's videos: the physics metrics and the work."""
    import torch

    from ..core.registry import build_guider
    from ..zoo.sprites import random_state, render, trajectory

    world = subject.world
    state = random_state(world, cfg.videos, torch.Generator().manual_seed(cfg.seed))
    given = render(world, state, trajectory(world, state, cfg.history)) * 2 - 1
    total = cfg.history + cfg.windows * cfg.chunk
    rc = rollout_config(cfg, guider_cfg, total, cfg.videos)
    roll = make_rollout(rc, subject, guider=build_guider(guider_cfg, "guider"))
    roll.conditions = {"caption": state.attributes.clone(), "stride": 1}
    score = subject.score(state)
    start = time.perf_counter()
    with torch.no_grad():
        result = roll(given, total, score, torch.Generator().manual_seed(cfg.seed + 1))
    out = score.summary(cfg.history, cfg.chunk)
    out.update(nfe_per_frame=result.nfe_per_frame, passes_per_frame=result.forward_passes / max(result.generated, 1),
               seconds=time.perf_counter() - start)
    return out


def run_baselines(cfg: VideoHistoryBenchConfig, subject: Any) -> dict:
    """Reference rows without a model, on the same videos: ``ground truth`` (the true frames: the floor
    of the position estimate) and ``frozen`` (the last given frame repeated: a model that stops)."""
    import torch

    from ..zoo.sprites import random_state, render, trajectory

    world = subject.world
    state = random_state(world, cfg.videos, torch.Generator().manual_seed(cfg.seed))
    total = cfg.history + cfg.windows * cfg.chunk
    truth = render(world, state, trajectory(world, state, total)) * 2 - 1
    last = truth[:, :, cfg.history - 1:cfg.history].expand(-1, -1, total - cfg.history, -1, -1)
    out = {}
    for label, generated in (("ground truth", truth[:, :, cfg.history:]), ("frozen (last given frame)", last)):
        score = subject.score(state)
        score(truth[:, :, :cfg.history], 0)
        score(generated, cfg.history)
        out[label] = {**score.summary(cfg.history, cfg.chunk), "nfe_per_frame": 0.0, "passes_per_frame": 0.0,
                      "seconds": 0.0}
    return out


def _memory_child(cfg: VideoHistoryBenchConfig, length: int, queue) -> None:
    """In a fresh process: one rollout of ``length`` frames (frames streamed to a sink that keeps
    nothing); reports the resident memory before the rollout and the process peak after it."""
    import torch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    subject = build_subject(cfg.model)
    rc = rollout_config(cfg, cfg.memory.guider, length, cfg.memory.videos)
    roll = make_rollout(rc, subject)
    given, _ = subject.start(rc.prompt, rc.samples, cfg.history, cfg.seed)
    with torch.no_grad():   # warm up allocations on a short rollout first, so the baseline includes them
        roll(given, cfg.history + cfg.chunk, lambda f, s: None, torch.Generator().manual_seed(0))
    page = resource.getpagesize()
    with open("/proc/self/statm") as f:
        baseline = int(f.read().split()[1]) * page
    start = time.perf_counter()
    with torch.no_grad():
        result = roll(given, length, lambda f, s: None, torch.Generator().manual_seed(cfg.seed))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"frames": result.frames, "windows": result.windows, "baseline_mb": baseline / 2**20,
               "peak_mb": peak / 2**20, "seconds": time.perf_counter() - start})


def run_memory(cfg: VideoHistoryBenchConfig) -> dict:
    context = mp.get_context("spawn")
    out = {}
    for length in cfg.memory.lengths:
        queue = context.Queue()
        process = context.Process(target=_memory_child, args=(cfg, length, queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"the memory rollout of {length} frames failed (exit code {process.exitcode})")
        out[str(length)] = queue.get()
    return out


@register_recipe("bench-video-history", VideoHistoryBenchConfig, check=check_bench)
def run_bench(cfg: VideoHistoryBenchConfig, run: RunContext) -> dict:
    """History guidance on the sprite model against the known physics; peak memory vs length."""
    import torch

    subject = build_subject(cfg.model)
    methods = {}
    with torch_threads(cfg.threads):
        threads = torch.get_num_threads()
        for method in cfg.methods:
            label = method_label(method)
            methods[label] = run_method(cfg, subject, method.guider)
            m = methods[label]
            errors = " ".join(f"w{k} {m.get(f'pos_err_w{k}', float('nan')):.2f}" for k in (1, 4, 16))
            run.log(f"{label}: pos err {errors} px, found {m['found']:.2f}, motion {m['motion_ratio']:.2f}, "
                    f"nfe/frame {m['nfe_per_frame']:.1f}")
        baselines = run_baselines(cfg, subject)
    memory = run_memory(cfg)
    for length, m in memory.items():
        run.log(f"memory: {length} frames: peak {m['peak_mb']:.0f} MB (before the rollout {m['baseline_mb']:.0f} MB)")
    metrics = {"methods": methods, "baselines": baselines, "memory": memory,
               "setup": {"videos": cfg.videos, "history": cfg.history, "windows": cfg.windows, "context": cfg.context,
                         "chunk": cfg.chunk, "steps": cfg.steps, "stabilization": cfg.stabilization,
                         "threads": threads}}
    with run.atomic("table.md") as tmp:
        tmp.write_text(report(metrics))
    return metrics


def report(metrics: dict) -> str:
    """The markdown tables: methods, then memory against length."""
    def fmt(v, digits=2):
        return "-" if v is None or v != v else f"{v:.{digits}f}"
    rows = [[label, fmt(m.get("pos_err_w1")), fmt(m.get("pos_err_w4")), fmt(m.get("pos_err_w16")), fmt(m["found"]),
             fmt(m["flicker"], 4), fmt(m["motion_ratio"]), fmt(m["nfe_per_frame"], 1), fmt(m["seconds"], 1)]
            for label, m in {**metrics.get("baselines", {}), **metrics["methods"]}.items()]
    s = metrics["setup"]
    text = (f"# History guidance on the sprite model ({s['videos']} videos, {s['history']} given frames, "
            f"{s['windows']} windows of {s['chunk']} frames, context {s['context']}, {s['steps']} steps, "
            f"stabilization {s['stabilization']})\n\n")
    text += markdown_table(["method", "pos err w1 (px)", "w4", "w16", "found", "flicker", "motion ratio",
                            "NFE/frame", "s"], rows)
    mem = metrics["memory"]
    text += "\n\n## Peak memory against length (one process per length)\n\n"
    text += markdown_table(["frames", "windows", "peak RSS (MB)", "RSS before the rollout (MB)", "s"],
                           [[k, v["windows"], fmt(v["peak_mb"], 0), fmt(v["baseline_mb"], 0), fmt(v["seconds"], 1)]
                            for k, v in mem.items()])
    return text + "\n"
