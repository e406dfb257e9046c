"""``kind: bench-audio-continuation`` -- what history guidance changes when the zoo's text-to-audio model
continues audio past one window, measured against the known signal.

For every prompt (sustained tones at named pitches and timbres) ``samples`` clips of the known signal
are synthesized (:func:`omniguide.zoo.audio_rollout.known_signal`); the model is given the first
``history`` latent frames (one window of real audio) and continues them for ``windows`` windows of
``chunk`` frames, each window seeing the newest ``context`` frames, with every method (text CFG
alone -- conditional sampling -- and vanilla, fractional and temporal history guidance at a couple
of weights, all with the same text CFG composed in). Every continuation is decoded whole and scored
per window (:func:`omniguide.zoo.audio_rollout.continuation_metrics`): pitch error (semitones from
the prompt's pitch) overall and in the last window, share of windows within half a semitone, timbre
still measured as the signal's, level relative to the given history (dB) overall and in the last
window, the seam ratio (spectral flux into each window's first frame over the flux inside windows),
the largest generated latent value, NFE per window and seconds. Two reference rows without a model
on the same clips: the known signal itself (the measurement floor) and the history's last chunk
looped (a copy: what the metrics cannot tell from a good continuation). Writes ``metrics.json``
and ``table.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.runners.rollout import RolloutConfig, build_subject, check_histories, make_rollout
from ..recipes.schema import option
from .kit import markdown_table, torch_threads
from .video_history import Method, method_label


@dataclass
class AudioContinuationBenchConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "toy-audio"})
    prompts: list[str] = field(default_factory=lambda: ["a pure A4 tone, sustained", "a bright C5 tone, sustained"])
    samples: int = option(4, ge=1)                # clips per prompt
    history: int = option(64, ge=4)               # given frames: one window of the known signal
    windows: int = option(6, ge=1)                # generated windows after it
    context: int = option(32, ge=4)
    chunk: int = option(32, ge=4)
    steps: int = option(20, ge=1)
    stabilization: Any = 0.02
    scheduler: dict[str, Any] = field(default_factory=dict)   # no name: the model's own sampler
    methods: list[Method] = field(default_factory=list)
    seed: int = 0
    threads: int | None = option(1, ge=1)


def rollout_config(cfg: AudioContinuationBenchConfig, guider: dict, prompt: str) -> RolloutConfig:
    return RolloutConfig(model=cfg.model, prompt=prompt, history=cfg.history, frames=total_frames(cfg),
                         context=cfg.context, chunk=cfg.chunk, steps=cfg.steps, scheduler=cfg.scheduler,
                         stabilization=cfg.stabilization, guider=guider, samples=cfg.samples, seed=cfg.seed,
                         progress=False)


def total_frames(cfg: AudioContinuationBenchConfig) -> int:
    return cfg.history + cfg.windows * cfg.chunk


def check_bench(cfg: AudioContinuationBenchConfig) -> None:
    from ..core.registry import build_guider

    if not cfg.methods:
        raise errors.ConfigError("methods", "empty; list {guider: {name: history, ...}} entries")
    if not cfg.prompts:
        raise errors.ConfigError("prompts", "empty; list prompts such as 'a pure A4 tone, sustained'")
    labels = [method_label(m) for m in cfg.methods]
    if len(set(labels)) != len(labels):
        raise errors.ConfigError("methods", f"two rows share a label ({labels}); give 'label' to tell them apart")
    subject = build_subject(cfg.model)
    for i, prompt in enumerate(cfg.prompts):
        subject.check_prompt(prompt, f"prompts.{i}")
    for i, method in enumerate(cfg.methods):
        guider = build_guider(method.guider, f"methods.{i}.guider")
        rc = rollout_config(cfg, method.guider, cfg.prompts[0])
        check_histories(rc, make_rollout(rc, subject, guider=guider))


def known_clips(cfg: AudioContinuationBenchConfig, subject: Any, prompt: str):
    """The known signal of ``prompt`` over the whole length ``[samples, bins, frames]`` and its attributes."""
    return subject.start(prompt, cfg.samples, total_frames(cfg), cfg.seed)


def run_method(cfg: AudioContinuationBenchConfig, subject: Any, guider_cfg: dict, prompt: str) -> dict:
    """One method on one prompt's clips: the continuation metrics and the work."""
    import torch

    from ..core.registry import build_guider

    truth, attributes = known_clips(cfg, subject, prompt)
    given = truth[..., :cfg.history]
    rc = rollout_config(cfg, guider_cfg, prompt)
    roll = make_rollout(rc, subject, guider=build_guider(guider_cfg, "guider"))
    score = subject.score(attributes)
    start = time.perf_counter()
    with torch.no_grad():
        result = roll(given, rc.frames, score, torch.Generator().manual_seed(cfg.seed + 1))
    seconds = time.perf_counter() - start
    out = score.summary(cfg.history, cfg.chunk)
    out.update(nfe_per_window=result.nfe / result.windows, passes_per_window=result.forward_passes / result.windows,
               nfe_per_frame=result.nfe_per_frame, seconds=seconds)
    return out


def run_references(cfg: AudioContinuationBenchConfig, subject: Any, prompt: str) -> dict:
    """Rows without a model on the same clips: ``known signal`` (the truth: the floor of the
    measurements) and ``history looped`` (the given history's last chunk repeated)."""
    import torch

    from ..zoo.audio_rollout import continuation_metrics

    truth, attributes = known_clips(cfg, subject, prompt)
    last = truth[..., cfg.history - cfg.chunk:cfg.history]
    looped = torch.cat([truth[..., :cfg.history], last.repeat(1, 1, cfg.windows)], dim=-1)
    rows = {}
    for label, latent in (("known signal", truth), ("history looped (a copy)", looped)):
        metrics = continuation_metrics(latent, subject.decode(latent), attributes, cfg.history, cfg.chunk,
                                       subject.pipe.codec)
        rows[label] = {**metrics, "nfe_per_window": 0.0, "passes_per_window": 0.0, "nfe_per_frame": 0.0,
                       "seconds": 0.0}
    return rows


def average(rows: list[dict]) -> dict:
    """The mean over prompts of every number (NaN where a prompt has none, e.g. no pitch for noise)."""
    import math

    out = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)):
            values = [r[key] for r in rows if not math.isnan(r[key])]
            out[key] = sum(values) / len(values) if values else float("nan")
    return out


@register_recipe("bench-audio-continuation", AudioContinuationBenchConfig, check=check_bench)
def run_bench(cfg: AudioContinuationBenchConfig, run: RunContext) -> dict:
    """History guidance continuing the zoo's audio model past one window, against the known signal."""
    import torch

    subject = build_subject(cfg.model)
    per_prompt: dict[str, dict[str, dict]] = {}
    with torch_threads(cfg.threads):
        threads = torch.get_num_threads()
        for prompt in cfg.prompts:
            rows = run_references(cfg, subject, prompt)
            for method in cfg.methods:
                rows[method_label(method)] = run_method(cfg, subject, method.guider, prompt)
            per_prompt[prompt] = rows
    labels = list(next(iter(per_prompt.values())))
    methods = {label: average([per_prompt[p][label] for p in cfg.prompts]) for label in labels}
    for label, m in methods.items():
        run.log(f"{label}: pitch err {m['pitch_err']:.2f} st, timbre kept {m['timbre_kept']:.2f}, "
                f"level {m['level_db']:+.1f} dB, seam ratio {m['seam_ratio']:.2f}, "
                f"nfe/window {m['nfe_per_window']:.0f}")
    metrics = {"methods": methods, "prompts": per_prompt,
               "setup": {"prompts": list(cfg.prompts), "samples": cfg.samples, "history": cfg.history,
                         "windows": cfg.windows, "context": cfg.context, "chunk": cfg.chunk, "steps": cfg.steps,
                         "stabilization": cfg.stabilization, "threads": threads}}
    with run.atomic("table.md") as tmp:
        tmp.write_text(report(metrics))
    return metrics


def report(metrics: dict) -> str:
    """The markdown table: one row per method (means over prompts), the reference rows first."""
    def fmt(v, digits=2, sign=False):
        return "-" if v is None or v != v else (f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}")
    rows = [[label, fmt(m["pitch_err"]), fmt(m["pitch_err_last"]), fmt(m["pitch_kept"]), fmt(m["timbre_kept"]),
             fmt(m["level_db"], 1, True), fmt(m["level_db_last"], 1, True), fmt(m["seam_ratio"]),
             fmt(m["latent_max"]), fmt(m["nfe_per_window"], 0), fmt(m["seconds"], 1)]
            for label, m in metrics["methods"].items()]
    s = metrics["setup"]
    text = (f"# Audio continuation on the toy audio model ({len(s['prompts'])} prompts x {s['samples']} clips, "
            f"{s['history']} given frames, {s['windows']} windows of {s['chunk']} frames, context {s['context']}, "
            f"{s['steps']} steps, stabilization {s['stabilization']})\n\n")
    text += markdown_table(["method", "pitch err (st)", "last window", "pitch kept", "timbre kept", "level (dB)",
                            "last window", "seam ratio", "latent max", "NFE/window", "s"], rows)
    return text + "\n"
