"""Benchmark: guiders and scales on the zoo's small text-to-audio model, through the pipeline adapter.

For each method (a guider config or a preset) and scale it generates every prompt with the same
seeds and measures, with the analytic scorer (:mod:`omniguide.zoo.toy_audio_data`):

* ``accuracy`` -- share of clips whose every attribute named by the prompt is measured as named;
* ``diversity`` -- spread across the clips of one prompt of the scorer's features (pitch in
  semitones, chirp slope, flatness, harmonic ratios, envelope), mean over prompts;
* ``peak``, ``rms``, ``crest``, ``flatness``, ``clipped`` -- clipping and over-saturation;
* ``nfe`` -- branch evaluations per generated clip batch (CFG: 2 x steps), and ``audio_per_second``
  -- seconds of audio per second of wall time (generation + Griffin-Lim decoding).

Then two comparisons, printed whichever way they go:

* **vs CFG at equal peak** -- for every other setting, CFG's accuracy linearly interpolated at that
  setting's peak level over the CFG sweep, and the difference (positive: the method beats CFG at
  equal clipping / loudness); settings outside CFG's peak range are marked as such;
* **adapter overhead** -- ``pipe(guidance_scale=s)`` against ``guide(pipe, CFG(s))`` at the same
  NFE, timed interleaved; the ratio of medians (target < 1.05) and the largest output difference.

Writes ``metrics.json`` and ``table.md``. Torch, the core and the zoo are imported inside the
functions (``omniguide show`` imports every runner).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from ..recipes.schema import option
from .kit import environment, interleaved, markdown_table, median_ratio, summary, torch_threads


@dataclass
class AudioMethod:
    """A guider config (``{name: ...}`` or ``{preset: ...}``) with its ``key`` swept over ``scales``."""

    guider: dict[str, Any] = field(default_factory=dict)   # no default name: a preset must not merge with one
    key: str = "scale"
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 5.0])
    label: str | None = None
    tied: dict[str, float] = field(default_factory=dict)   # other fields set to factor x the swept value


@dataclass
class OverheadSection:
    scale: float = 3.0
    prompts: int = 2          # the first N prompts, in one call
    warmup: int = 1
    repeats: int = 5


@dataclass
class BenchAudioGuidersConfig:
    """Every guider over scales on the small text-to-audio model."""

    path: str = "omniguide/zoo/weights/toy_audio"     # a ToyAudioPipeline folder
    prompts: list[str] = field(default_factory=list)
    samples: int = option(4, ge=2)                     # clips per prompt (seeds), for the diversity
    steps: int = option(20, ge=1)
    seed: int = 0
    threads: int = option(2, ge=1)
    baseline: str = "cfg"                              # the label of the reference sweep
    methods: list[AudioMethod] = field(default_factory=list)
    overhead: OverheadSection = field(default_factory=OverheadSection)


def label_of(method: AudioMethod) -> str:
    if method.label:
        return method.label
    g = method.guider
    return str(g.get("name") or g.get("preset"))


def configs_of(method: AudioMethod, where: str) -> list[dict]:
    """The guider config of each scale (``key`` is a dotted field, e.g. ``guider.scale``)."""
    out = []
    for scale in method.scales:
        cfg = OmegaConf.create(dict(method.guider))
        try:
            OmegaConf.update(cfg, method.key, float(scale), force_add=True)
            for key, factor in method.tied.items():
                OmegaConf.update(cfg, key, float(scale) * float(factor), force_add=True)
        except Exception as err:
            raise errors.ConfigError(f"{where}.key", f"cannot set '{method.key}': {err}") from None
        out.append(OmegaConf.to_container(cfg))
    return out


def load_pipeline(cfg: BenchAudioGuidersConfig):
    from ..recipes.sample_models import check_pipeline_folder
    from ..zoo.toy_audio import ToyAudioPipeline

    folder = check_pipeline_folder(cfg.path, "path")
    pipe = ToyAudioPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_bench_audio(cfg: BenchAudioGuidersConfig) -> None:
    from ..recipes.components import make_guider

    if not cfg.prompts:
        raise errors.ConfigError("prompts", "give at least one prompt")
    if not cfg.methods:
        raise errors.ConfigError("methods", "give at least one method")
    labels = [label_of(m) for m in cfg.methods]
    if cfg.baseline not in labels:
        raise errors.ConfigError("baseline", f"'{cfg.baseline}' is not a method label; labels: {', '.join(labels)}")
    for i, method in enumerate(cfg.methods):
        for guider in configs_of(method, f"methods.{i}"):
            make_guider(guider, f"methods.{i}.guider")
    if cfg.overhead.prompts > len(cfg.prompts):
        raise errors.ConfigError("overhead.prompts", f"only {len(cfg.prompts)} prompts")
    load_pipeline(cfg)


def measure(pipe, guider_cfg: dict, cfg: BenchAudioGuidersConfig, scorer) -> dict:
    """One setting over every prompt: scorer metrics averaged over prompts, NFE, audio per second."""
    import torch

    from ..modalities.base import guide
    from ..recipes.components import make_guider

    rows, nfe, seconds, audio_seconds = [], [], 0.0, 0.0
    for p, prompt in enumerate(cfg.prompts):
        guider = make_guider(guider_cfg)
        generator = torch.Generator().manual_seed(cfg.seed + p)
        start = time.perf_counter()
        with guide(pipe, guider) as handle:
            audio = pipe(prompt, num_inference_steps=cfg.steps, num_waveforms_per_prompt=cfg.samples,
                         generator=generator, output_type="pt").audios
        seconds += time.perf_counter() - start
        audio_seconds += audio.shape[0] * audio.shape[-1] / pipe.sample_rate
        nfe.append(handle.nfe)
        rows.append(scorer(audio, prompt, rate=pipe.sample_rate))
    keys = ("accuracy", "diversity", "peak", "rms", "crest", "flatness", "clipped")
    out = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    for k in ("accuracy_kind", "accuracy_pitch", "accuracy_timbre", "accuracy_envelope"):
        values = [r[k] for r in rows if k in r]
        if values:
            out[k] = statistics.fmean(values)
    out.update({"nfe": statistics.fmean(nfe), "audio_per_second": audio_seconds / seconds, "seconds": seconds})
    return out


def versus_baseline(results: dict, baseline: str) -> None:
    """Add ``cfg_accuracy_at_peak`` and ``delta_accuracy`` (vs the baseline interpolated at equal peak)."""
    base = sorted((r["peak"], r["accuracy"]) for r in results[baseline]["settings"])
    peaks = [p for p, _ in base]
    for label, method in results.items():
        for r in method["settings"]:
            if label == baseline or not peaks or not peaks[0] <= r["peak"] <= peaks[-1]:
                r["cfg_accuracy_at_peak"] = r["delta_accuracy"] = None
                continue
            k = next(i for i in range(1, len(base)) if peaks[i] >= r["peak"]) if len(base) > 1 else 0
            (p0, a0), (p1, a1) = base[max(k - 1, 0)], base[k]
            ref = a0 if p1 == p0 else a0 + (a1 - a0) * (r["peak"] - p0) / (p1 - p0)
            r["cfg_accuracy_at_peak"], r["delta_accuracy"] = ref, r["accuracy"] - ref


def overhead(pipe, cfg: BenchAudioGuidersConfig) -> dict:
    """Bare pipeline CFG vs the adapter's CFG at the same NFE, interleaved."""
    import torch

    from ..core.methods import CFG
    from ..modalities.base import guide

    prompts, s = cfg.prompts[: cfg.overhead.prompts], cfg.overhead.scale
    kwargs = dict(num_inference_steps=cfg.steps, num_waveforms_per_prompt=cfg.samples, output_type="latent")

    def bare():
        return pipe(prompts, guidance_scale=s, generator=torch.Generator().manual_seed(0), **kwargs).audios

    def adapter():
        with guide(pipe, CFG(scale=s)):
            return pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).audios

    diff = float((bare() - adapter()).abs().max())
    times = interleaved({"pipeline": bare, "adapter": adapter}, torch.device("cpu"), cfg.overhead.warmup,
                        cfg.overhead.repeats)
    ratio = median_ratio(times["adapter"], times["pipeline"])
    return {"pipeline": summary(times["pipeline"]), "adapter": summary(times["adapter"]), "ratio": ratio,
            "target": 1.05, "meets_target": ratio < 1.05, "max_output_difference": diff,
            "nfe_per_step": 2, "batch": len(prompts) * cfg.samples, "scale": s}


@register_recipe("bench-audio-guiders", BenchAudioGuidersConfig, check=check_bench_audio)
def run_bench_audio_guiders(cfg: BenchAudioGuidersConfig, run: RunContext) -> dict:
    """Benchmark: guiders x scales on the small text-to-audio model (accuracy, diversity, clipping, NFE)."""
    import torch

    from ..zoo.toy_audio_data import ToyAudioScorer

    check_bench_audio(cfg)
    scorer = ToyAudioScorer()
    with torch_threads(cfg.threads), torch.inference_mode():
        pipe = load_pipeline(cfg)
        results: dict[str, dict] = {}
        for i, method in enumerate(cfg.methods):
            label = label_of(method)
            settings = []
            for scale, guider_cfg in zip(method.scales, configs_of(method, f"methods.{i}")):
                row = {"scale": float(scale), **measure(pipe, guider_cfg, cfg, scorer)}
                settings.append(row)
                run.log(f"{label} {scale:g}: accuracy {row['accuracy']:.3f} peak {row['peak']:.3f} "
                        f"nfe {row['nfe']:.0f} ({row['seconds']:.1f}s)")
            results[label] = {"guider": dict(method.guider), "key": method.key, "settings": settings}
        versus_baseline(results, cfg.baseline)
        cost = overhead(pipe, cfg)
    metrics = {"methods": results, "overhead": cost, "baseline": cfg.baseline, "prompts": list(cfg.prompts),
               "samples": cfg.samples, "steps": cfg.steps, "environment": environment(torch.device("cpu"),
                                                                                      torch.float32)}
    with run.atomic("table.md") as tmp:
        tmp.write_text(report(metrics))
    return metrics


def _f(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report(m: dict) -> str:
    """The markdown table of every setting and the two comparisons."""
    lines = [f"# bench-audio-guiders: {len(m['prompts'])} prompts x {m['samples']} clips, {m['steps']} steps",
             "", "Accuracy: share of clips whose every named attribute is measured as named (analytic scorer). "
             f"Δ vs {m['baseline']}: accuracy minus {m['baseline']}'s accuracy interpolated at the same peak "
             "(positive: better at equal loudness / clipping; – outside the baseline's peak range).", ""]
    rows = []
    for label, method in m["methods"].items():
        for r in method["settings"]:
            rows.append([label, f"{r['scale']:g}", _f(r["accuracy"]), _f(r["delta_accuracy"]), _f(r["diversity"]),
                         _f(r["peak"]), _f(r["rms"]), _f(r["flatness"]), _f(r["clipped"], 4), f"{r['nfe']:.0f}",
                         _f(r["audio_per_second"], 2)])
    lines.append(markdown_table(["method", "scale", "accuracy", f"Δ vs {m['baseline']} at equal peak", "diversity",
                                 "peak", "rms", "flatness", "clipped", "NFE", "audio s / s"], rows))
    better = [(label, r) for label, method in m["methods"].items() for r in method["settings"]
              if r["delta_accuracy"] is not None and r["delta_accuracy"] > 0.02]
    worse = [(label, r) for label, method in m["methods"].items() for r in method["settings"]
             if r["delta_accuracy"] is not None and r["delta_accuracy"] < -0.02]
    lines += ["", f"Beat {m['baseline']} at equal peak by more than 0.02: "
              + (", ".join(f"{lab} {r['scale']:g} (+{r['delta_accuracy']:.3f})" for lab, r in better) or "none"),
              f"Below {m['baseline']} at equal peak by more than 0.02: "
              + (", ".join(f"{lab} {r['scale']:g} ({r['delta_accuracy']:.3f})" for lab, r in worse) or "none")]
    o = m["overhead"]
    lines += ["", "## Adapter overhead", "",
              f"`pipe(guidance_scale={o['scale']:g})` vs `guide(pipe, CFG(scale={o['scale']:g}))` at the same NFE "
              f"(2 per step), batch {o['batch']}: median "
              f"{o['pipeline']['median_ms']:.1f} ms vs {o['adapter']['median_ms']:.1f} ms, ratio "
              f"**{o['ratio']:.3f}** (target < {o['target']}: {'met' if o['meets_target'] else 'NOT met'}); "
              f"largest output difference {o['max_output_difference']:.2e}."]
    return "\n".join(lines) + "\n"
