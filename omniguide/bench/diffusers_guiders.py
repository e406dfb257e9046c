"""Benchmark (issue 3): the guided step of omniguide guiders against diffusers' guiders, on the same
small diffusers UNet, measured side by side in one run.

*diffusers* is driven the way its modular denoise loops drive a guider
(``modular_pipelines/stable_diffusion_xl/denoise.py``)::

    guider.set_state(step=i, num_inference_steps=N, timestep=t)
    batches = guider.prepare_inputs({"encoder_hidden_states": (cond, uncond)})
    for b in batches:                      # one forward per pass
        guider.prepare_models(unet); b.noise_pred = unet(x, t, b.encoder_hidden_states)[0]
        guider.cleanup_models(unet)
    pred = guider(batches).pred

*omniguide* through the core's guided step, as its sampler does (``evaluate_guider``: the executor runs
``guider.branches(step)``, branches that share a model and a perturbation batched into one forward,
then ``guider.combine(preds, step)``). The
scheduler step is the same for both and left out. Each method is configured to do the same math
on both sides where the libraries allow it; the largest difference between the two guided outputs
is reported next to the timing (informative: some methods are defined differently, see ``notes``).

Writes ``metrics.json`` and ``report.md`` (ratio = omniguide / diffusers median; target <= 1.0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..recipes import errors
from ..recipes.registry import register_recipe
from ..recipes.run import RunContext
from . import kit

if TYPE_CHECKING:   # torch, diffusers and the core are imported inside the functions (cheap schema import)
    from torch import Tensor

    from ..core.branch import BranchExecutor
    from ..core.guider import GuidanceStep, Guider

METHODS = ("cfg", "apg", "tcfg", "cfg-zero-star", "fdg", "pag", "skip-layer", "seg")
NOTES = {
    "apg": "omniguide form='paper' (c + (w-1) upd) = diffusers use_original_formulation=True with w-1",
    "pag": "with CFG on both compute u + w(c-u) + s(c-p) (without CFG diffusers' native PAG is p + s(c-p))",
    "seg": "diffusers 0.42.1 never registers its SEG hook (its perturbed pass is a plain conditional pass), "
    "so its time does not include blurring the queries",
    "fdg": "diffusers uses kornia's Laplacian pyramid; omniguide its own pyramid",
}


# diffusers' guiders with a perturbed pass: class, prefix of its scale / start / stop keywords, layer keyword
PERTURBED = {
    "pag": ("PerturbedAttentionGuidance", "perturbed_guidance", "perturbed_guidance_config"),
    "skip-layer": ("SkipLayerGuidance", "skip_layer_guidance", "skip_layer_config"),
    "seg": ("SmoothedEnergyGuidance", "seg_guidance", "seg_guidance_config"),
}


@dataclass
class BenchDiffusersConfig(kit.UNetBenchConfig):
    """The UNet benchmark fields (:class:`~omniguide.recipes.kit.UNetBenchConfig`), then these."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    scale: float = 5.0  # CFG scale w (u + w (c - u)) on both sides
    perturbed_scale: float = 2.8  # PAG / SEG / skip-layer scale s
    # where perturbations act: omniguide selector and the diffusers LayerSkipConfig fqn / indices
    layers: str = "mid"
    diffusers_fqn: str = "mid_block.attentions.0.transformer_blocks"
    diffusers_indices: list[int] = field(default_factory=lambda: [0])
    target: float = 1.0


def check_bench_diffusers(cfg: BenchDiffusersConfig) -> None:
    kit.check_unet_bench(cfg)
    for i, name in enumerate(cfg.methods):
        if name not in METHODS:
            raise errors.ConfigError(f"methods.{i}", f"'{name}' has no diffusers counterpart here; "
                                     f"valid: {', '.join(METHODS)}")
    if cfg.batch < 1 or cfg.steps < 1:
        raise errors.ConfigError("batch" if cfg.batch < 1 else "steps", "must be >= 1")
    if not -1 <= cfg.step_index < cfg.steps:
        raise errors.ConfigError("step_index", f"must be in [0, {cfg.steps - 1}] or -1, got {cfg.step_index}")
    if cfg.timing.repeats < 1 or cfg.timing.warmup < 0:
        raise errors.ConfigError("timing", "repeats >= 1 and warmup >= 0 are required")


# -- the two sides of one method ---------------------------------------------------------------------
def ours_config(name: str, cfg: BenchDiffusersConfig) -> dict[str, Any]:
    w, s = cfg.scale, cfg.perturbed_scale
    configs = {
        "cfg": {"name": "cfg", "scale": w},
        "apg": {"name": "apg", "scale": w, "eta": 0.0, "norm_threshold": 15.0, "momentum": -0.5, "space": "eps"},
        "tcfg": {"name": "tcfg", "scale": w},
        "cfg-zero-star": {"name": "cfg-zero-star", "scale": w, "zero_init_steps": 1, "space": None},
        "fdg": {"name": "fdg", "scale": w, "scale_high": 2 * w, "levels": 2},
    }
    for perturbed in PERTURBED:
        configs[perturbed] = {"name": perturbed, "scale": w, "perturbed_scale": s, "layers": cfg.layers}
    return configs[name]


def diffusers_guider(name: str, cfg: BenchDiffusersConfig):
    """The diffusers guider doing the same thing (None with a reason when it cannot be built)."""
    import diffusers.guiders as g
    from diffusers.hooks import LayerSkipConfig

    w, s, idx, fqn = cfg.scale, cfg.perturbed_scale, list(cfg.diffusers_indices), cfg.diffusers_fqn
    if name == "cfg":
        return g.ClassifierFreeGuidance(guidance_scale=w)
    if name == "apg":
        return g.AdaptiveProjectedGuidance(guidance_scale=w - 1, eta=0.0, adaptive_projected_guidance_rescale=15.0,
                                           adaptive_projected_guidance_momentum=-0.5, use_original_formulation=True)
    if name == "tcfg":
        return g.TangentialClassifierFreeGuidance(guidance_scale=w)
    if name == "cfg-zero-star":
        return g.ClassifierFreeZeroStarGuidance(guidance_scale=w, zero_init_steps=1)
    if name == "fdg":
        return g.FrequencyDecoupledGuidance(guidance_scales=[2 * w, w])
    if name not in PERTURBED:
        raise errors.ConfigError("methods", f"unknown method '{name}'")
    if name == "pag":
        layer = LayerSkipConfig(idx, fqn=fqn, skip_attention=False, skip_attention_scores=True, skip_ff=False)
    elif name == "skip-layer":
        layer = LayerSkipConfig(idx, fqn=fqn, skip_attention=True, skip_ff=True)
    else:
        from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceConfig

        layer = SmoothedEnergyGuidanceConfig(idx, fqn=fqn)
    cls, prefix, layer_key = PERTURBED[name]
    # the perturbed pass and the guidance itself on at every step (start 0, stop 1)
    window = {f"{prefix}_start": 0.0, f"{prefix}_stop": 1.0, "start": 0.0, "stop": 1.0}
    return getattr(g, cls)(guidance_scale=w, **{f"{prefix}_scale": s, layer_key: layer}, **window)


@contextlib.contextmanager
def quiet_diffusers():
    """Silence diffusers' 'guiders are experimental' warnings while guiders are built."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def diffusers_step(guider, unet, sample: Tensor, timestep, cond: Tensor, uncond: Tensor, index: int,
                   steps: int) -> Callable[[], Tensor]:
    def call() -> Tensor:
        guider.set_state(step=index, num_inference_steps=steps, timestep=timestep)
        batches = guider.prepare_inputs({"encoder_hidden_states": (cond, uncond)})
        for b in batches:
            guider.prepare_models(unet)
            b.noise_pred = unet(sample, timestep, encoder_hidden_states=b.encoder_hidden_states, return_dict=False)[0]
            guider.cleanup_models(unet)
        return guider(batches).pred

    return call


def ours_step(guider: Guider, executor: BranchExecutor, step: GuidanceStep, kind: str) -> Callable[[], Tensor]:
    from ..core.sampler import evaluate_guider

    def call() -> Tensor:
        return evaluate_guider(guider, executor, step.x, step.timestep, step)[1].to(kind)

    return call


def both_sides(name: str, cfg: BenchDiffusersConfig, s: kit.UNetStep, entry: dict[str, Any]) -> dict:
    """``{'omniguide:name': step, 'diffusers:name': step}``, each run once; ``entry`` gets why not
    (``status``) or the difference of their outputs and their forward passes."""
    import torch

    from ..core.branch import BranchExecutor
    from ..core.registry import GUIDERS
    from ..recipes.components import make_guider

    if name not in GUIDERS:
        entry["status"] = "missing"
        return {}
    try:
        with quiet_diffusers():
            theirs = diffusers_guider(name, cfg)
    except Exception as err:  # e.g. FDG without kornia
        entry["status"] = f"diffusers guider unavailable: {kit.describe_error(err)}"
        return {}
    ours = make_guider(ours_config(name, cfg), f"methods.{name}")
    ours.reset()
    executor = BranchExecutor(s.unet, s.branches, s.view.parameterization, defaults=ours.branch_defaults())
    mine = ours_step(ours, executor, s.step, s.view.parameterization)
    other = diffusers_step(theirs, s.unet, s.point.model_input, s.point.timestep, s.cond, s.uncond, s.index, cfg.steps)
    try:
        with torch.inference_mode():
            a, b = mine(), other()
            executor.reset_counts()
            mine()
    except Exception as err:
        entry["status"] = f"failed: {kit.describe_error(err)}"
        return {}
    entry.update(status="ok", max_abs_diff=float((a.float() - b.float()).abs().max()),
                 output_scale=float(b.float().abs().max()), omniguide_forward_passes=executor.forward_passes,
                 diffusers_forward_passes=theirs.num_conditions, omniguide=ours.config())
    return {f"omniguide:{name}": mine, f"diffusers:{name}": other}


# -- the recipe --------------------------------------------------------------------------------------
@register_recipe("bench-diffusers", BenchDiffusersConfig, check=check_bench_diffusers)
def run_bench_diffusers(cfg: BenchDiffusersConfig, run: RunContext) -> dict:
    """Benchmark: omniguide vs diffusers guiders, step time on the same small UNet (ratio per method)."""
    check_bench_diffusers(cfg)
    with kit.unet_bench(cfg, "BCHW") as (failed_imports, s):
        fns: dict[str, Callable[[], Tensor]] = {}
        status: dict[str, dict[str, Any]] = {}
        for name in cfg.methods:
            status[name] = {"note": NOTES.get(name, "")}
            fns.update(both_sides(name, cfg, s, status[name]))
        ok = sum(e["status"] == "ok" for e in status.values())
        run.log(f"bench-diffusers on {s.device.type}: {ok} methods, {kit.rounds_text(cfg.timing)}")
        kit.sync(s.device)
        times = kit.interleaved(fns, s.device, cfg.timing.warmup, cfg.timing.repeats)
        for name, entry in status.items():
            if entry["status"] != "ok":
                continue
            ours_t, theirs_t = times[f"omniguide:{name}"], times[f"diffusers:{name}"]
            ratio = kit.median_ratio(ours_t, theirs_t)
            entry.update(omniguide=kit.summary(ours_t) | {"config": entry["omniguide"]},
                         diffusers=kit.summary(theirs_t), ratio=ratio, meets_target=ratio <= cfg.target)
        ratios = [e["ratio"] for e in status.values() if e["status"] == "ok"]
        metrics = {"environment": kit.environment(s.device, s.dtype),
                   "setup": kit.unet_setup(cfg, s.index, dict(cfg.model.__dict__), scale=cfg.scale,
                                           perturbed_scale=cfg.perturbed_scale),
                   "methods": status, "target": cfg.target, "max_ratio": max(ratios, default=float("nan")),
                   "all_meet_target": bool(ratios) and all(r <= cfg.target for r in ratios),
                   "failed_imports": failed_imports}
        run.write_text("report.md", _report(metrics))
        _print_summary(status, run)
    return metrics


def _print_summary(status: dict[str, dict[str, Any]], run: RunContext) -> None:
    for name, e in status.items():
        if e["status"] == "ok":
            run.log(f"  {name:<14} omniguide {e['omniguide']['median_ms']:8.2f} ms  diffusers "
                    f"{e['diffusers']['median_ms']:8.2f} ms  ratio {e['ratio']:.3f}  "
                    f"passes {e['omniguide_forward_passes']} vs {e['diffusers_forward_passes']}")
        else:
            run.log(f"  {name:<14} {e['status']}")


def _report(m: dict[str, Any]) -> str:
    setup = m["setup"]
    rows = []
    for name, e in m["methods"].items():
        if e["status"] != "ok":
            rows.append([name, "-", "-", e["status"], "-", "-"])
            continue
        rows.append([name, e["omniguide"]["median_ms"], e["diffusers"]["median_ms"], f"**{e['ratio']:.3f}**",
                     f"{e['omniguide_forward_passes']} / {e['diffusers_forward_passes']}",
                     f"{e['max_abs_diff']:.2g} (of {e['output_scale']:.2g})"])
    header = ["method", "omniguide ms", "diffusers ms", "ratio"]
    header += ["forward passes (ours / theirs)", "max |difference| of outputs"]
    notes = [f"- {name}: {e['note']}" for name, e in m["methods"].items() if e.get("note")]
    return "\n".join([
        "# bench-diffusers: omniguide vs diffusers guiders on one small UNet", "",
        f"{kit.environment_text(m['environment'], setup['model'])}, batch {setup['batch']}, "
        f"{setup['scheduler']} step {setup['step_index']} of {setup['steps']}, w = {setup['scale']}, "
        f"s = {setup['perturbed_scale']}. One guided step without the scheduler step; medians of "
        f"{setup['repeats']} interleaved rounds after {setup['warmup']} warm-up.", "",
        kit.markdown_table(header, rows), "",
        f"Target: ratio <= {m['target']} for every method; largest ratio {m['max_ratio']:.3f}.", "",
        "Notes:", *notes, "",
    ])
