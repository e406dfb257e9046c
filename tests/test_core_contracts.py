"""Noise levels, parameterization conversions, the branch executor and its errors."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniguide.core import (
    APG,
    CFG,
    Axes,
    Branch,
    BranchExecutor,
    CFGRescale,
    ConfigError,
    GuidanceError,
    GuidanceStep,
    Guider,
    ModelCall,
    NoiseLevel,
    NoiseSchedule,
    Prediction,
    ScaleSchedule,
)
from omniguide.core.prediction import PARAMETERIZATIONS, convert, from_x0_eps, to_x0_eps

PATHS = {
    "vp": lambda t: NoiseLevel.vp(torch.cos(t * torch.pi / 2) ** 2),
    "edm": lambda t: NoiseLevel.edm(80 * t + 0.002),
    "flow": lambda t: NoiseLevel.flow(t),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("src", PARAMETERIZATIONS)
@pytest.mark.parametrize("dst", PARAMETERIZATIONS)
def test_conversions_round_trip(path, src, dst):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, dtype=torch.float64, generator=g)
    eps = torch.randn(4, 3, 5, dtype=torch.float64, generator=g)
    t = torch.rand(4, 1, 1, dtype=torch.float64, generator=g) * 0.9 + 0.05
    noise = PATHS[path](t)
    x = noise.alpha * x0 + noise.sigma * eps
    value = from_x0_eps(x0, eps, src, noise)
    there = convert(value, src, dst, x, noise)
    back = convert(there, dst, src, x, noise)
    torch.testing.assert_close(back, value, rtol=1e-10, atol=1e-10)
    x0_hat, eps_hat = to_x0_eps(there, dst, x, noise)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_parameterizations_match_their_definitions():
    """Independent definitions: v = alpha eps - sigma x0 (Salimans & Ho), flow = eps - x0."""
    x0, eps = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    noise = NoiseLevel.vp(torch.tensor(0.3, dtype=torch.float64))
    x = noise.alpha * x0 + noise.sigma * eps
    assert torch.allclose(Prediction(eps, "eps", x, noise).to("v"), noise.alpha * eps - noise.sigma * x0)
    flow = NoiseLevel.flow(torch.tensor(0.4, dtype=torch.float64))
    xf = 0.6 * x0 + 0.4 * eps
    assert torch.allclose(Prediction(eps, "eps", xf, flow).to("flow"), eps - x0)
    # the flow velocity is dx/dt along x_t = (1 - t) x0 + t eps
    assert torch.allclose(Prediction(x0, "x0", xf, flow).to("flow"), eps - x0)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.01, 0.99), st.sampled_from(PARAMETERIZATIONS), st.sampled_from(list(PATHS)))
def test_conversions_property(t, kind, path):
    noise = PATHS[path](torch.tensor(t, dtype=torch.float64))
    value = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    pred = Prediction(value, kind, x, noise)
    x0, eps = pred.x0, pred.eps
    torch.testing.assert_close(noise.alpha * x0 + noise.sigma * eps, x, rtol=1e-9, atol=1e-9)


def test_unknown_parameterization_is_named():
    with pytest.raises(GuidanceError, match="unknown parameterization 'score'"):
        BranchExecutor(lambda x, t: x, {}, parameterization="score")


def test_noise_coordinates():
    n = NoiseLevel.vp(torch.tensor(0.25), t=torch.tensor(0.5))
    assert torch.isclose(n.coordinate("sigma"), torch.tensor(3.0).sqrt())
    assert n.coordinate("t") == 0.5
    assert n.coordinate("step", index=3, num_steps=10) == pytest.approx(3 / 9)  # i / (N - 1)
    assert n.coordinate("step", index=0, num_steps=10) == 0 and n.coordinate("step", index=9, num_steps=10) == 1
    with pytest.raises(Exception, match="only inside a sampler loop"):
        n.coordinate("step")
    with pytest.raises(Exception, match="unknown coordinate 'sigmaa'"):
        n.coordinate("sigmaa")


def test_axes_from_layout():
    assert Axes.from_layout("BCT").reduce == (1, 2)
    assert Axes.from_layout("BCFHW", per_frame=True).reduce == (1, 3, 4)
    assert Axes.from_layout("BCFHW").frequency == (3, 4)
    with pytest.raises(GuidanceError, match="axis 3 is invalid"):
        Axes(reduce=(1, 3)).check(torch.zeros(2, 3, 4))
    with pytest.raises(GuidanceError, match="batch dim 0 is never reduced"):
        Axes(reduce=(0, 1)).check(torch.zeros(2, 3))


# -- executor ---------------------------------------------------------------------------------
class CountingModel:
    """eps = x * (1 + emb.mean) + 0.01 t: a cheap model whose output depends on every input."""

    def __init__(self):
        self.calls = []

    def __call__(self, sample, timestep, emb):
        self.calls.append(sample.shape[0])
        t = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
        scale = emb.reshape(emb.shape[0], -1).mean(1).reshape(-1, *([1] * (sample.ndim - 1)))
        return sample * (1 + scale) + 0.01 * t


def _step(x):
    return GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), torch.tensor(10), 0, 10)


def test_batched_equals_sequential_and_counts_passes():
    x = torch.randn(2, 4, 8, 8)
    cond, uncond, neg = torch.randn(2, 7, 3), torch.zeros(2, 7, 3), torch.randn(2, 7, 3)
    table = {"cond": {"emb": cond}, "uncond": {"emb": uncond}, "negative": {"emb": neg}}
    outs = {}
    for batch in (True, False):
        model = CountingModel()
        ex = BranchExecutor(model, table, batch=batch)
        preds = ex(["cond", "uncond", "negative"], x, torch.tensor(10), _step(x))
        outs[batch] = preds
        assert ex.nfe == 3
        assert ex.forward_passes == (1 if batch else 3)
        assert model.calls == ([6] if batch else [2, 2, 2])
    for name in table:
        torch.testing.assert_close(outs[True][name].value, outs[False][name].value, rtol=1e-6, atol=1e-6)


def test_identical_branches_merge():
    x = torch.randn(2, 3)
    emb = torch.randn(2, 5)
    model = CountingModel()
    ex = BranchExecutor(model, {"cond": {"emb": emb}, "alias": Branch("alias", base="cond")})
    preds = ex(["cond", "alias"], x, 5, _step(x))
    assert ex.nfe == 1 and model.calls == [2]
    assert preds["alias"].value is preds["cond"].value


def test_branches_with_other_models_or_perturbations_run_separately():
    import contextlib

    x = torch.randn(2, 3)
    emb = torch.randn(2, 5)
    seen = []

    @contextlib.contextmanager
    def mark(module, sample):
        seen.append(("on", module, sample.shape))
        yield
        seen.append("off")

    weak = CountingModel()
    model = CountingModel()
    module = torch.nn.Identity()   # what perturbations would hook
    table = {
        "cond": {"emb": emb},
        "weak": Branch("weak", base="cond", model=weak),
        "perturbed": Branch("perturbed", base="cond", perturbation=mark),
    }
    ex = BranchExecutor(ModelCall(model, module=module), table)
    ex(["cond", "weak", "perturbed"], x, 5, _step(x))
    assert model.calls == [2, 2] and weak.calls == [2]
    assert seen == [("on", module, x.shape), "off"]  # the perturbation wrapped exactly one pass


def test_per_sample_timesteps_batch():
    x = torch.randn(3, 2)
    table = {
        "cond": {"emb": torch.ones(3, 1)},
        "uncond": Branch("uncond", {"emb": torch.zeros(3, 1), "timestep": torch.tensor([1, 2, 3])},
                         noise=NoiseLevel.vp(torch.tensor([0.9, 0.8, 0.7]).view(3, 1))),
    }
    ex_b, ex_s = BranchExecutor(CountingModel(), table), BranchExecutor(CountingModel(), table, batch=False)
    a = ex_b(["cond", "uncond"], x, torch.tensor(7), _step(x))
    b = ex_s(["cond", "uncond"], x, torch.tensor(7), _step(x))
    assert ex_b.forward_passes == 1
    for k in a:
        torch.testing.assert_close(a[k].value, b[k].value)


def test_errors_name_branch_and_step():
    x = torch.randn(2, 3)
    step = _step(x)
    nan_model = lambda s, t, emb: s * float("nan") if emb.sum() == 0 else s  # noqa: E731
    ex = BranchExecutor(nan_model, {"cond": {"emb": torch.ones(2, 1)}, "uncond": {"emb": torch.zeros(2, 1)}},
                        batch=False)
    with pytest.raises(GuidanceError, match=r"branch 'uncond' at step 0: the prediction has non-finite values"):
        ex(["cond", "uncond"], x, 1, step)
    shape_model = lambda s, t, emb: torch.zeros(emb.shape[0], 3)  # noqa: E731
    ex = BranchExecutor(shape_model, {"cond": {"emb": torch.ones(2, 1)}, "uncond": {"emb": torch.zeros(1, 1)}},
                        batch=True)
    with pytest.raises(GuidanceError, match=r"branch 'uncond' at step 0: prediction shape \(1, 3\) does not match"):
        ex(["cond", "uncond"], x, 1, step)
    with pytest.raises(GuidanceError, match="branch 'negative' is needed at step 0 but not defined"):
        ex(["cond", "negative"], x, 1, step)
    boom = lambda s, t, emb: torch.cat([s, emb])  # noqa: E731
    ex = BranchExecutor(boom, {"cond": {"emb": torch.ones(2, 5)}})
    with pytest.raises(GuidanceError, match=r"branch 'cond' at step 0: model call failed"):
        ex(["cond"], x, 1, step)


def test_half_precision_reductions_do_not_overflow():
    """A 4x128x128 fp16 latent has 65k entries: an fp16 sum of squares overflows at 65504."""
    from omniguide.core import CFGZeroStar
    from omniguide.core.axes import dot, norm

    axes = Axes.from_layout("BCHW")
    c = torch.full((1, 4, 128, 128), 1.5, dtype=torch.float16)
    assert torch.isfinite(norm(c, axes)).all() and torch.isfinite(dot(c, c, axes)).all()
    x = torch.randn(1, 4, 128, 128).half()
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5, dtype=torch.float16)), 500, 5, 10, axes)
    preds = {"cond": Prediction(c, "eps", x, step.noise), "uncond": Prediction(c * 0.9, "eps", x, step.noise)}
    out = CFGZeroStar(scale=5.0, space=None).combine(preds, step)
    assert torch.isfinite(out.eps).all()


def test_interval_outside_its_coordinate_range_is_named():
    from omniguide.core import CFG, ConfigError, Interval, build_guider

    with pytest.raises(ConfigError, match=r"^t: interval \[0.2, 1.5\] is outside the coordinate's range"):
        Interval(CFG(3.0), t=(0.2, 1.5))
    with pytest.raises(ConfigError, match=r"^guider\.sigma: interval \[5.0, 1.0\] .* reversed"):
        build_guider({"name": "interval", "guider": {"name": "cfg"}, "sigma": [5, 1]})
    with pytest.raises(ConfigError, match="exactly one of sigma=, t=, step="):
        Interval(CFG(3.0), sigma=(0.1, 1), t=(0.1, 0.5))
    with pytest.raises(ConfigError, match=r"^guider\.guider\.name: unknown guider 'cfgg'; did you mean 'cfg'"):
        build_guider({"name": "interval", "guider": {"name": "cfgg"}, "step": [0, 0.5]})


# -- contract fixes: branch noise levels, merging by value, nested batching, call conventions ------------
def test_a_branch_at_another_timestep_converts_with_its_own_noise_level():
    """A branch that overrides the timestep gets the noise level of *its* timestep (from the
    executor's schedule), so its x0 is computed with its own alpha and sigma, not the step's."""
    abar = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    schedule = NoiseSchedule.vp(abar)
    x = torch.randn(2, 3, dtype=torch.float64)
    other = torch.randn(2, 3, dtype=torch.float64)
    eps_model = lambda s, t, emb: 0.5 * s + emb  # noqa: E731
    table = {"cond": {"emb": torch.zeros(2, 3, dtype=torch.float64)},
             "early": Branch("early", base="cond", inputs={"sample": other, "timestep": torch.tensor(800)})}
    ex = BranchExecutor(eps_model, table, noise_of=schedule.noise)
    step = GuidanceStep(x, schedule.noise(torch.tensor(200)), torch.tensor(200), 0, 10)
    preds = ex(["cond", "early"], x, torch.tensor(200), step)
    a800, s800 = abar[800].sqrt(), (1 - abar[800]).sqrt()
    a200, s200 = abar[200].sqrt(), (1 - abar[200]).sqrt()
    eps = 0.5 * other
    torch.testing.assert_close(preds["early"].x0, (other - s800 * eps) / a800)       # its own level
    torch.testing.assert_close(preds["cond"].x0, (x - s200 * 0.5 * x) / a200)
    assert not torch.allclose(preds["early"].x0, (other - s200 * eps) / a200)
    # without a schedule or an explicit level, the executor refuses rather than guess
    with pytest.raises(GuidanceError, match="branch 'early' at step 0 overrides the timestep but has no noise level"):
        BranchExecutor(eps_model, table)(["cond", "early"], x, torch.tensor(200), step)


def test_noise_schedule_reads_continuous_timesteps_and_inverts():
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   use_karras_sigmas=True)
    euler.set_timesteps(12)
    schedule = NoiseSchedule.vp(euler.alphas_cumprod)
    noise = schedule.noise(euler.timesteps)   # fractional timesteps from karras sigmas
    torch.testing.assert_close(noise.sigma_edm, euler.sigmas[:-1].double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(schedule.timestep(noise), euler.timesteps.double(), rtol=0, atol=1e-6)
    flow = NoiseSchedule.flow(1000)
    torch.testing.assert_close(flow.noise(torch.tensor(250.0)).sigma, torch.tensor(0.25, dtype=torch.float64))


def test_branches_merge_only_when_every_input_is_equal_by_value():
    """Two added_cond_kwargs dicts that differ in one middle value of a large tensor must not merge
    (their repr elides the middle); equal values in different objects do merge."""
    big = torch.zeros(2, 4000)
    changed = big.clone()
    changed[1, 2000] = 1.0
    assert repr({"t": big}) == repr({"t": changed})   # what a repr-keyed merge would have compared
    model = CountingModel()

    def fn(sample, timestep, emb, added_cond_kwargs):
        return model(sample, timestep, emb) + added_cond_kwargs["t"].sum(1, keepdim=True)

    x, emb = torch.randn(2, 3), torch.ones(2, 1)
    table = {"cond": {"emb": emb, "added_cond_kwargs": {"t": big}},
             "uncond": {"emb": emb.clone(), "added_cond_kwargs": {"t": changed}},
             "twin": {"emb": emb.clone(), "added_cond_kwargs": {"t": big.clone()}}}
    ex = BranchExecutor(fn, table, batch=False)
    preds = ex(["cond", "uncond", "twin"], x, 5, _step(x))
    assert ex.nfe_per_step == [2] and ex.passes_per_step == [2]   # cond and twin merged, uncond apart
    assert not torch.equal(preds["cond"].value, preds["uncond"].value)
    assert torch.equal(preds["cond"].value, preds["twin"].value)


def test_mapping_inputs_batch_and_shared_inputs_stay_whole():
    """Per-sample tensors inside a mapping (SDXL's added_cond_kwargs) are concatenated when branches
    share a pass; inputs a ModelCall declares shared (Flux's img_ids) are passed once, even when
    their first size equals the batch."""
    seen = {}

    def fn(sample, timestep, added_cond_kwargs, ids):
        seen.update(text=added_cond_kwargs["text_embeds"].shape, ids=ids.shape)
        return sample * added_cond_kwargs["text_embeds"].mean(1, keepdim=True)

    x = torch.randn(2, 3)
    ids = torch.zeros(2, 3)   # first size == batch, but not per-sample
    call = ModelCall(fn, shared={"ids"})
    table = {"cond": {"added_cond_kwargs": {"text_embeds": torch.ones(2, 4)}, "ids": ids},
             "uncond": {"added_cond_kwargs": {"text_embeds": torch.zeros(2, 4)}, "ids": ids}}
    batched, single = BranchExecutor(call, table), BranchExecutor(call, table, batch=False)
    a = batched(["cond", "uncond"], x, 5, _step(x))
    assert batched.passes_per_step == [1] and seen == {"text": (4, 4), "ids": (2, 3)}
    b = single(["cond", "uncond"], x, 5, _step(x))
    for k in a:
        torch.testing.assert_close(a[k].value, b[k].value)


def test_model_call_conventions():
    class Net(torch.nn.Module):
        def forward(self, hidden_states=None, timestep=None, scale=1.0, return_dict=True):
            out = hidden_states * scale + timestep
            return {"sample": out} if return_dict else (out,)

    net = Net()
    call = ModelCall(net, sample="hidden_states", timestep="timestep", fixed={"return_dict": False})
    assert call.module is net
    x = torch.ones(2, 3)
    torch.testing.assert_close(call(x, 2.0, {"scale": 3.0}), torch.full((2, 3), 5.0))
    with pytest.raises(GuidanceError, match="keyword sample needs a keyword timestep"):
        ModelCall(net, sample="hidden_states")
    with pytest.raises(GuidanceError, match="not a torch module"):
        ModelCall(lambda s, t: s).require_module("branch 'perturbed'")


def test_diffusers_parameterization_names_are_accepted():
    x, noise = torch.randn(2, 3), NoiseLevel.vp(torch.tensor(0.3))
    p = Prediction(torch.randn(2, 3), "v_prediction", x, noise)
    assert p.kind == "v"
    torch.testing.assert_close(p.to("epsilon"), p.to("eps"))
    from omniguide import APG, CFGRescale

    assert APG(space="sample").space == "x0" and CFGRescale(space="epsilon").space == "eps"
    with pytest.raises(ConfigError, match="unknown space 'velocity'"):
        APG(space="velocity")


def test_guider_requirements_are_checked_before_work_starts():
    from omniguide import APG, CFG, CFGPlusPlus, Interval, Schedule, sample
    from omniguide.core.guider import NOISE_LEVEL, check_requirements
    from omniguide.core.schedulers import build_scheduler

    distill = "score distillation"
    check_requirements(Interval(CFG(), sigma=(0.1, 5)), (NOISE_LEVEL,), distill)   # needs a noise level only
    check_requirements(Interval(CFG(), t=(0.1, 0.5)), (), distill)                  # needs nothing
    for guider, need in [
        (Interval(CFG(), sigma=(0.1, 5)), r"a noise level \(alpha, sigma\) for the sample \(the interval is over "
                                          r"the 'sigma' coordinate"),
        (APG(momentum=-0.5), "a sampler step index"),
        (Interval(CFG(), step=(0.2, 0.8)), "a sampler step index"),
        (Schedule(CFG(), coordinate="step"), "a sampler step index"),
        (CFGPlusPlus(), r"a sampler that re-anchors the sample"),
    ]:
        expected = rf"guider '{re.escape(guider.name)}' needs {need}.*which {distill} does not"
        with pytest.raises(GuidanceError, match=expected):
            check_requirements(guider, (), distill)
    with pytest.raises(ConfigError, match="num_steps: must be an int >= 1, got 0"):
        sample(lambda s, t: s, build_scheduler("ddim"), CFG(), torch.randn(2, 3), num_steps=0)


def test_scheduler_short_names_and_comfyui_aliases():
    from omniguide.core.schedulers import build_scheduler

    assert type(build_scheduler("deis")).__name__ == "DEISMultistepScheduler"
    assert type(build_scheduler("dpmpp_2m")).__name__ == "DPMSolverMultistepScheduler"
    assert build_scheduler("uni_pc").config.solver_type == "bh1"
    assert type(build_scheduler("euler_ancestral")).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(ConfigError, match="unknown scheduler 'dpmpp_3m'; did you mean"):
        build_scheduler("dpmpp_3m")


def test_executor_takes_per_call_tables_and_models_and_keeps_its_own():
    """What changes per step is an argument of the call: ``branches=`` overlays the standing table and
    ``model=`` runs the branches without a model of their own, for that call only; a guider's defaults from
    the constructor yield to the caller's branches of the same name; NFE and passes are counted per call."""
    def plus(x, t, emb):
        return x + emb

    def minus(x, t, emb):
        return x - emb

    x, ones = torch.zeros(2, 3), torch.ones(2, 1)
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), 10, 0, 1, None)
    ex = BranchExecutor(plus, {"cond": {"emb": ones}}, defaults={"cond": Branch("cond", {"emb": 0 * ones}),
                                                                 "extra": Branch("extra", {"emb": 2 * ones})})
    standing, model = dict(ex.branches), ex.model
    preds = ex(["cond", "extra"], x, 10, step)
    assert preds["cond"].value.eq(1).all() and preds["extra"].value.eq(2).all()
    preds = ex(["cond", "uncond"], x, 10, step, branches={"uncond": {"emb": 3 * ones}}, model=minus)
    assert preds["cond"].value.eq(-1).all() and preds["uncond"].value.eq(-3).all()
    assert ex.branches == standing and ex.model is model
    assert (ex.nfe_per_step, ex.passes_per_step) == ([2, 2], [1, 1])
    with pytest.raises(GuidanceError, match=r"^branch 'uncond' is needed at step 0 but not defined \(defined: cond, "
                                            r"extra\); add it$"):
        BranchExecutor(plus, standing, undefined="; add it")(["uncond"], x, 10, step)


def test_one_builder_converts_each_value_by_its_declared_type():
    """``Registry.build`` (the one builder of guiders, scales, correctors, objectives, models ...) reads
    the declared field types: a Guider-typed field is built as a guider, a scale field through the scale
    registry, a list for a Tensor field as a tensor, an annealed field by distillation's conversion, a
    list for a tuple field as a tuple; a class that only shares a name gets no conversion."""
    from dataclasses import dataclass

    import torch

    from omniguide.core import CFG, ConfigError, Guider, ScaleSchedule
    from omniguide.core.scale import Piecewise
    from omniguide.distillation.schedules import Anneal
    from omniguide.io.config import Registry

    Lookalike = type("Guider", (), {})   # same name as the core's Guider, unrelated class

    @dataclass
    class Thing:
        inner: Guider | None = None
        scale: float | ScaleSchedule | Piecewise = 1.0
        weights: torch.Tensor | None = None
        t_max: float | Anneal = 0.98
        pair: tuple[float, float] = (0.0, 1.0)
        other: Lookalike | dict | None = None

    things = Registry("thing")
    things.register("thing")(Thing)
    built = things.build({"name": "thing", "inner": {"name": "cfg", "scale": 3}, "scale": {"shape": "linear",
                          "scale": 7}, "weights": [1.0, 2.0], "t_max": {"values": [0.98, 0.5]}, "pair": [0.2, 0.8],
                          "other": {"name": "cfg"}}, "thing")
    assert isinstance(built.inner, CFG) and built.inner.scale == 3
    assert built.scale == ScaleSchedule(shape="linear", scale=7)
    assert isinstance(built.weights, torch.Tensor) and built.weights.tolist() == [1.0, 2.0]
    assert built.t_max == Anneal(values=(0.98, 0.5)) and built.pair == (0.2, 0.8)
    assert built.other == {"name": "cfg"}
    with pytest.raises(ConfigError, match=r"^thing\.inner\.scael: unknown key for guider 'cfg'; did you mean 'scale'"):
        things.build({"name": "thing", "inner": {"name": "cfg", "scael": 3}}, "thing")
    with pytest.raises(ConfigError, match=r"^thing\.t_max\.valus: unknown key for an annealed value; did you mean"):
        things.build({"name": "thing", "t_max": {"valus": [1, 0]}}, "thing")
    with pytest.raises(ConfigError, match=r"^thing\.wieghts: unknown key for thing 'thing'; did you mean 'weights'"):
        things.build({"name": "thing", "wieghts": [1]}, "thing")


@pytest.mark.parametrize("make,shown", [
    (lambda: APG(scale=None), "APG takes .* got None"),
    (lambda: CFG(scale="7"), "CFG takes .* got '7'"),
    (lambda: CFG(scale=float("nan")), "CFG takes .* got nan"),
    (lambda: CFGRescale(scale=float("inf")), "CFGRescale takes .* got inf"),
    (lambda: CFG(scale=True), "CFG takes .* got a boolean True"),
])
def test_a_scale_given_in_python_is_checked_as_a_recipes_with_the_field_named(make, shown):
    with pytest.raises(ConfigError, match="^scale: " + shown):
        make()


def test_every_guider_checks_its_scales_whether_or_not_it_has_a_post_init_of_its_own():
    from dataclasses import dataclass

    from omniguide.core.scale import Scale

    @dataclass
    class Plain(Guider):                 # no __post_init__ of its own
        scale: Scale = 2.0
        other: Scale | None = None

    @dataclass
    class Own(Plain):                    # its own __post_init__, not calling super()
        def __post_init__(self):
            self.seen = True

    assert Plain(scale=3).scale == 3 and Plain(other=torch.ones(1)).other is not None
    assert Own(scale=ScaleSchedule(shape="linear", scale=7)).seen
    for cls in (Plain, Own):
        with pytest.raises(ConfigError, match="^other: "):
            cls(other="2")
        with pytest.raises(ConfigError, match="^scale: "):
            cls(scale=None)
