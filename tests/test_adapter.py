"""The pipeline adapter on tiny diffusers pipelines of every image family (built from configs,
saved and reloaded with ``from_pretrained``): faithfulness to the pipelines' own CFG, every guider
on every family with its work counted, the core sampler's results reproduced through a pipeline,
exact restoration, and one-line errors."""

from __future__ import annotations

import copy

import pytest
import tiny_pipelines as TP
import torch

import omniguide
from omniguide import APG, CFG, CFGPlusPlus, GuidanceError, Interval, ModelCall, guide
from omniguide.core.methods import GFCG, NAG, PLADIS, VSF, PriorGuidance, ScaleSearch, ScorerGuidance
from omniguide.core.registry import GUIDERS, build_guider

PROMPTS, NEGATIVES = ["a red circle", "a blue square"], ["blurry", "low quality"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    return {name: TP.saved(build(), tmp_path_factory.mktemp(name)) for name, build in TP.BUILDERS.items()}


def run(pipe, name, steps=3, seed=0, **kwargs):
    kwargs = {**TP.CALL_KWARGS[name], "num_inference_steps": steps, "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def multistep(pipe, name):
    """A multistep solver swapped in for the family's default scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    if name == "sd3":
        return DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    if name == "flux":   # Flux passes a resolution-dependent shift (mu) to set_timesteps
        return DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                           use_dynamic_shifting=True, time_shift_type="exponential")
    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)


# -- faithfulness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["default", "multistep"])
@pytest.mark.parametrize("name", list(TP.BUILDERS))
def test_cfg_reproduces_the_pipelines_own_guidance(pipes, name, scheduler):
    """``guide(pipe, CFG(s))`` equals ``pipe(guidance_scale=s)``: a batch of prompts, two images per
    prompt, a negative prompt, same seed and scheduler (Flux: its true CFG, ``true_cfg_scale``)."""
    pipe = copy.copy(pipes[name])
    if scheduler == "multistep":
        pipe.scheduler = multistep(pipe, name)
    args = dict(prompt=PROMPTS, negative_prompt=NEGATIVES, num_images_per_prompt=2)
    theirs = run(pipe, name, **args, **{TP.CFG_KWARG[name]: 4.5})
    with guide(pipe, CFG(scale=4.5)) as handle:
        ours = run(pipe, name, **args)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert handle.nfe_per_step == [2, 2, 2] and handle.passes_per_step == [1, 1, 1]
    with guide(pipe, CFG(scale=4.5), negative_prompt=NEGATIVES):   # the negative given to guide() instead
        torch.testing.assert_close(run(pipe, name, prompt=PROMPTS, num_images_per_prompt=2), theirs,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["sd", "pixart"])
def test_default_negative_and_decoded_images_match(pipes, name):
    """No negative prompt: the pipeline's own default unconditional input; decoded images agree too."""
    pipe = pipes[name]
    kwargs = dict(prompt="a red circle", output_type="pt")
    theirs = run(pipe, name, **kwargs, guidance_scale=3.0)
    with guide(pipe, CFG(scale=3.0)):
        ours = run(pipe, name, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_flux_guidance_embedding_stays_the_users(pipes):
    pipe = pipes["flux"]
    with guide(pipe, CFG(scale=3.0), negative_prompt="blurry"):
        a = run(pipe, "flux", prompt="a red circle", guidance_scale=2.0)
        b = run(pipe, "flux", prompt="a red circle", guidance_scale=5.0)
    assert (a - b).abs().max() > 1e-4


# -- every guider on every family ---------------------------------------------------------------------
class LatentScorer:
    """A differentiable score per sample on any latent (stands in for a reward model)."""

    def __call__(self, x0):
        return -(x0.flatten(1) ** 2).mean(1)


class LatentClassifier:
    """Fixed random logits over 3 classes from any latent (stands in for a classifier)."""

    def __call__(self, x0):
        weight = torch.randn(x0[0].numel(), 3, generator=torch.Generator().manual_seed(0)).to(x0)
        return x0.flatten(1) @ weight


def guider_configs(weak, condition=None, key="encoder_hidden_states") -> dict[str, omniguide.Guider]:
    """One instance of every registered guider, with settings that guide on a 3-step run. ``condition``
    is the family's prompt embedding input ``key`` (for GFCG's per-class pool)."""
    from omniguide.modalities.base import load_families

    load_families()   # the modality packages register their guiders (history, stg, nested, multimodal)
    made = {
        "adaptive": build_guider({"name": "adaptive", "guider": {"name": "cfg", "scale": 3.0}}),
        "autoguidance": omniguide.AutoGuidance(scale=2.0, weak_model=weak),
        "cfg++": CFGPlusPlus(scale=0.5),
        "interval": build_guider({"name": "interval", "guider": {"name": "cfg", "scale": 3.0}, "t": [0.5, 1.0]}),
        "schedule": build_guider({"name": "schedule", "guider": {"name": "cfg", "scale": 3.0}, "shape": "cosine"}),
        "terms": build_guider({"name": "terms", "terms": {"uncond": 2.0}}),
        "fdg": build_guider({"name": "fdg", "transform": "fft"}),
        "rescale": build_guider({"name": "rescale", "guider": {"name": "apg", "scale": 3.0}, "rescale": 0.7}),
        "prior-guidance": PriorGuidance(scale=3.0, base_model=weak),
        "tsg": build_guider({"name": "tsg", "t": [0.0, 1.0]}),
        "scorer-guidance": ScorerGuidance(scale=50.0, scorer=LatentScorer()),
        "scale-search": ScaleSearch(scales=(2.0, 3.0), evaluator=LatentScorer()),
        "nag": NAG(), "vsf": VSF(), "pladis": PLADIS(),          # CFG off: one forward pass per step
        "perp-neg": build_guider({"name": "perp-neg", "scale": 3.0, "negatives": {"negative": 1.0}}),
        "nested": build_guider({"name": "nested", "chain": ["uncond", "cond"], "scales": [3.0]}),
        "multimodal": build_guider({"name": "multimodal", "guidance_scale": 3.0, "stg_scale": 1.0}),
    }
    if condition is not None:
        pool = condition[:1].repeat(3, *([1] * (condition.ndim - 1))) * torch.tensor([1.0, -1.0, 0.5]).reshape(
            -1, *([1] * (condition.ndim - 1)))
        made["gfcg"] = GFCG(gfcg_scale=3.0, classifier=LatentClassifier(), target=0,
                            pool={key: pool})
    for name in GUIDERS.names():
        if name not in made:
            made[name] = build_guider({"name": name, "scale": 3.0})
    return made


# NFE and forward passes per step of the guiders whose plan is not CFG's (2 evaluations in 1 pass)
WORK = {"pag": (3, 2), "seg": (3, 2), "skip-layer": (3, 2), "autoguidance": (2, 2), "prior-guidance": (2, 2),
        "tsg": (2, 2), "tpg": (3, 2), "s2-guidance": (3, 2), "sag": (3, 2), "gfcg": (2, 2), "perp-neg": (3, 1),
        "residual-cfg": (1, 1), "pladis": (1, 1), "scorer-guidance": (1, 1), "stg": (3, 2), "multimodal": (3, 2)}
# guiders a family refuses, with the reason they give
REFUSED = {("sag", "sd3"): "joint text-image attention", ("sag", "flux"): "joint text-image attention"}


# Methods II's guiders (issue 11) run in their own test below: two steps, SD (UNet) and Flux (joint DiT) by
# default, the other four families under -m slow (SD3's joint order is also covered in test_perturbations2)
METHODS_II = {"cfg-norm", "fresca", "gfcg", "icg", "magnitude-aware", "momentum", "nag", "perp-neg", "pladis",
              "prior-guidance", "residual-cfg", "s2-guidance", "sag", "scale-search", "scorer-guidance", "smc-cfg",
              "tpg", "tsg", "vsf"}


def check_guiders(pipe, name, keys, steps):
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    weak = copy.deepcopy(denoiser)
    with torch.no_grad():
        for p in weak.parameters():
            p.mul_(0.9)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("condition", kwargs["encoder_hidden_states"])

    hook = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    base = run(pipe, name, steps=steps, prompt="a red circle")
    hook.remove()
    for key, guider in guider_configs(weak, seen["condition"]).items():
        if key not in keys:
            continue
        if (key, name) in REFUSED:
            with pytest.raises(GuidanceError, match=REFUSED[key, name]), guide(pipe, guider, negative_prompt="blurry"):
                pass
            continue
        with guide(pipe, guider, negative_prompt="blurry", prompts={"negative": "ugly"}) as handle:
            out = run(pipe, name, steps=steps, prompt="a red circle")
        assert torch.isfinite(out).all(), key
        assert (out - base).abs().max() > 1e-5, f"{key} did not change the {name} output"
        nfe, passes = WORK.get(key, (2, 1))
        assert max(handle.nfe_per_step) == nfe, (key, handle.nfe_per_step)
        assert len(handle.nfe_per_step) == steps
        assert max(handle.passes_per_step) == passes, (key, handle.passes_per_step)


@pytest.mark.parametrize("name", list(TP.BUILDERS))
def test_every_guider_runs_on_every_family(pipes, name):
    check_guiders(pipes[name], name, set(GUIDERS.names()) - METHODS_II, steps=3)


@pytest.mark.parametrize("name", [n if n in ("sd", "flux") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TP.BUILDERS])
def test_methods2_guiders_run_on_every_family(pipes, name):
    """Every Methods II guider on every image family, with its NFE and forward passes per step: the
    one-pass methods (residual-cfg, nag, vsf, pladis) take one forward pass per step."""
    assert METHODS_II <= set(GUIDERS.names())
    check_guiders(pipes[name], name, METHODS_II, steps=2)


def test_a_step_outside_an_interval_costs_one_pass(pipes):
    pipe = pipes["sd"]
    with guide(pipe, Interval(CFG(scale=5.0), step=(0.0, 0.5))) as handle:
        run(pipe, "sd", prompt=PROMPTS, steps=5)
    assert handle.nfe_per_step == [2, 2, 2, 1, 1] and handle.forward_passes == 5
    assert handle.nfe == 8


# -- the core sampler reproduced through a pipeline ------------------------------------------------------
def core_sample(pipe, guider, scheduler, steps=4, seed=0):
    """The same generation with omniguide.sample on the pipeline's UNet and encoded prompts."""
    cond, uncond = pipe.encode_prompt("a red circle", "cpu", 1, True, negative_prompt="blurry")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    call = ModelCall(pipe.unet, sample="sample", timestep="timestep", fixed={"return_dict": False})
    branches = {"cond": {"encoder_hidden_states": cond}, "uncond": {"encoder_hidden_states": uncond}}
    with torch.no_grad():
        return omniguide.sample(call, scheduler, guider, latents, branches, num_steps=steps, axes="BCHW",
                                progress=False).sample


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler"])
@pytest.mark.parametrize("make", [lambda: APG(scale=4.0, momentum=-0.5, norm_threshold=2.0),
                                  lambda: CFGPlusPlus(scale=0.6)], ids=["apg-momentum", "cfg++"])
def test_adapter_equals_the_core_sampler(pipes, scheduler, make):
    """APG with momentum (state between steps, in x0 space) and CFG++ (re-anchored sample) give the
    same latents through the pipeline as through omniguide.sample: the adapter reads the right
    noise level, step index and sample space on a single-step, a multistep and a VE scheduler."""
    from omniguide.core.schedulers import build_scheduler

    pipe = copy.copy(pipes["sd"])
    config = {k: pipe.scheduler.config[k] for k in ("beta_start", "beta_end", "beta_schedule")}
    ours_scheduler = build_scheduler(scheduler, **config)
    pipe.scheduler = build_scheduler(scheduler, **config)
    with guide(pipe, make(), negative_prompt="blurry"):
        ours = run(pipe, "sd", prompt="a red circle", steps=4)
    reference = core_sample(pipe, make(), ours_scheduler)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


# -- restoration and errors ----------------------------------------------------------------------------
def snapshot(pipe):
    """What guide() touches: the class, the attributes (by name; the pipeline sets its own call
    settings such as ``_guidance_scale`` on every call), the components, the denoiser's and the
    scheduler's instance attributes."""
    components = {k: id(v) for k, v in pipe.components.items()}
    return type(pipe), set(pipe.__dict__), components, dict(pipe.unet.__dict__), set(pipe.scheduler.__dict__)


def test_the_pipeline_is_restored_exactly_also_after_an_exception(pipes):
    pipe = pipes["sd"]
    plain = run(pipe, "sd", prompt="a cat", guidance_scale=3.0)
    before = snapshot(pipe)
    with guide(pipe, APG(scale=3.0)):
        assert type(pipe) is not before[0] and "forward" in pipe.unet.__dict__
        run(pipe, "sd", prompt="a cat")
    assert snapshot(pipe) == before
    with pytest.raises(RuntimeError, match="boom"), guide(pipe, CFG(scale=2.0)):
        raise RuntimeError("boom")
    assert snapshot(pipe) == before
    nan = lambda *a, **k: (torch.full((1, 4, 8, 8), float("nan")),)  # noqa: E731
    with pytest.raises(GuidanceError, match=r"branch 'cond' at step 0: .*non-finite"):
        with guide(pipe, CFG(scale=2.0), branches={"cond": omniguide.Branch("cond", model=nan)}):
            run(pipe, "sd", prompt="a cat")
    assert snapshot(pipe) == before
    assert "step" not in pipe.scheduler.__dict__ and "encode_prompt" not in pipe.__dict__
    torch.testing.assert_close(run(pipe, "sd", prompt="a cat", guidance_scale=3.0), plain, rtol=0, atol=0)


def test_one_line_errors(pipes):
    pipe = pipes["sd"]
    with guide(pipe, CFG(scale=2.0)):
        with pytest.raises(GuidanceError, match=r"guidance_scale=\.\.\.\) is the pipeline's own CFG scale"):
            run(pipe, "sd", prompt="a cat", guidance_scale=7.5)
        with pytest.raises(GuidanceError, match="3 negative prompts for 2 prompts"):
            run(pipe, "sd", prompt=PROMPTS, negative_prompt=["a", "b", "c"])
    with pytest.raises(GuidanceError, match=r"no pipeline family serves Linear; supported: .*\(StableDiffusionPipe"):
        guide(torch.nn.Linear(2, 2), CFG())
    with pytest.raises(GuidanceError, match="'negative_prompt_3' is not a negative input of the sd family"):
        guide(pipe, CFG(), negative_prompt_3="x")
    with pytest.raises(GuidanceError, match=r"pag cannot build its branch 'perturbed' on .*matches no self-attention"):
        with guide(pipe, omniguide.PAG(layers="down.0")):
            pass
    from diffusers import HeunDiscreteScheduler

    heun = copy.copy(pipe)
    heun.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    with guide(heun, APG(scale=3.0, momentum=-0.5)):
        with pytest.raises(GuidanceError, match="keeps state between steps, but HeunDiscreteScheduler evaluates"):
            run(heun, "sd", prompt="a cat")
    with guide(heun, CFG(scale=3.0)) as handle:   # a stateless guider is fine on Heun
        run(heun, "sd", prompt="a cat", steps=2)
    assert handle.forward_passes == len(heun.scheduler.timesteps)
