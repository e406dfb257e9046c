"""Golden tests: every distillation objective against its formula, re-derived here from fixed
predictions of a linear toy denoiser (``a x + emb + 1e-3 t``) and the same random draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omniguide import APG, CFG, CFGPlusPlus
from omniguide.core import GuidanceError, ModelCall, NoiseSchedule
from omniguide.core.guider import PROGRESS, check_requirements
from omniguide.distillation.priors import Prior
from omniguide.distillation.registry import build_objective
from omniguide.distillation.score.estimators import Estimator
from omniguide.distillation.score.objectives import Context, DivergenceError, Draws

B, SHAPE = 3, (3, 3, 4, 4)
EMB = {"cond": 1.0, "uncond": -1.0, "negative": 0.3, "source": -0.2, "target": 0.7}


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def forward(self, sample, timestep, emb):
        t = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, 1, 1, 1)
        return self.a * sample + emb.reshape(-1, 1, 1, 1) + 1e-3 * t


def toy_prior(kind: str = "vp") -> tuple[Prior, Toy]:
    model = Toy()
    model.requires_grad_(False)
    if kind == "vp":
        schedule = NoiseSchedule.vp(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
    else:
        schedule = NoiseSchedule.flow(1000)
    param = "eps" if kind == "vp" else "flow"
    prior = Prior(call=ModelCall(model), schedule=schedule, parameterization=param, encode_text=lambda p: {},
                  encode_image=lambda x: x, modules=(model,), make_call=ModelCall)
    return prior, model


def inputs() -> dict:
    return {k: {"emb": torch.full((B,), v, dtype=torch.float64)} for k, v in EMB.items()}


def run(objective: dict, guider, kind: str = "vp", progress: float = 0.0, estimator: bool = False, seed: int = 0):
    prior, model = toy_prior(kind)
    obj = build_objective(objective)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(99), dtype=torch.float64).requires_grad_(True)
    est = Estimator(prior, "copy") if estimator else None
    ctx = Context(prior, guider, x, inputs(), Draws(torch.Generator().manual_seed(seed)), progress, 7, est)
    out = obj(ctx)
    out.loss.backward()
    return out, x, prior, model, est


def draws(seed: int = 0, n: int = 1):
    """The same draws the objectives make: uniform u per sample, then standard normal noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = torch.rand(B, generator=gen, dtype=torch.float64)
        eps = torch.randn(SHAPE, generator=gen).double()
        out.append((u, eps))
    return out


def timesteps(u, lo=0.02, hi=0.98, flow=False):
    t = (lo + (hi - lo) * u) * 1000
    return (t if flow else t.round().clamp(0, 999)).float().double()


def model_at(x, t, name, a=0.5):
    return a * x + EMB[name] + 1e-3 * t.view(-1, 1, 1, 1)


def level(prior, t):
    n = prior.noise_of(t)
    return n.alpha.view(-1, 1, 1, 1).double(), n.sigma.view(-1, 1, 1, 1).double()


def check(out, x, g):
    assert torch.allclose(out.grad, g, atol=1e-9, rtol=1e-6)
    assert torch.allclose(x.grad, g / B, atol=1e-9, rtol=1e-6)   # the target loss's gradient is g / B


def test_sds_cfg_matches_dreamfusion_formula():
    out, x, prior, _, _ = run({"name": "sds"}, CFG(7.5))
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    c, un = model_at(xt, t, "cond"), model_at(xt, t, "uncond")
    check(out, x, s ** 2 * (un + 7.5 * (c - un) - eps))
    assert out.logs["grad_norm"] > 0 and "guided - noise" in out.logs and "cond - uncond" in out.logs


def test_sds_with_a_non_cfg_guider_apg():
    out, x, prior, _, _ = run({"name": "sds", "weighting": "sigma/alpha"}, APG(scale=5.0, eta=0.0, axes="BCHW"))
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    x0 = {n: (xt - s * model_at(xt, t, n)) / a for n in ("cond", "uncond")}
    d = x0["cond"] - x0["uncond"]
    c_hat = x0["cond"] / x0["cond"].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    par = (d * c_hat).flatten(1).sum(1).view(-1, 1, 1, 1) * c_hat
    guided_x0 = x0["cond"] + 4.0 * (d - par)
    guided_eps = (xt - a * guided_x0) / s
    check(out, x, s / a * (guided_eps - eps))


def test_sds_on_a_flow_prior_is_formed_in_flow_space():
    out, x, prior, _, _ = run({"name": "sds", "weighting": "uniform"}, CFG(4.0), kind="flow")
    (u, n), = draws()
    t = timesteps(u, flow=True)
    tt = (t / 1000).view(-1, 1, 1, 1)
    xt = (1 - tt) * x.detach() + tt * n
    c, un = model_at(xt, t, "cond"), model_at(xt, t, "uncond")
    check(out, x, (un + 4.0 * (c - un)) - (n - x.detach()))
    eps_space, _, _, _, _ = run({"name": "sds", "weighting": "uniform", "space": "eps"}, CFG(4.0), kind="flow")
    assert torch.allclose(eps_space.grad, (1 - tt) * out.grad, atol=1e-9)   # eps - eps' = (1 - t)(v - v')


def test_rfds_is_twice_the_weighted_flow_residual():
    out, x, prior, _, _ = run({"name": "rfds"}, CFG(3.0), kind="flow")
    (u, n), = draws()
    t = timesteps(u, 0.3, 0.98, flow=True)
    tt = (t / 1000).view(-1, 1, 1, 1)
    xt = (1 - tt) * x.detach() + tt * n
    v = model_at(xt, t, "uncond") + 3.0 * (model_at(xt, t, "cond") - model_at(xt, t, "uncond"))
    r = v - (n - x.detach())
    check(out, x, 2 * r)
    assert out.logs["rfds_loss"] == pytest.approx(float((r ** 2).flatten(1).sum(1).mean()), rel=1e-6)
    with pytest.raises(Exception, match="rectified-flow prior"):
        build_objective("rfds").check_prior(toy_prior("vp")[0])


def test_csd_with_an_annealed_negative_weight():
    obj = {"name": "csd", "guidance": 2.0, "negative_weight": {"values": [0.0, 1.0], "progress": [0.0, 0.5]}}
    out, x, prior, _, _ = run(obj, CFG(7.5), progress=0.25)
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    c, un, neg = (model_at(xt, t, k) for k in ("cond", "uncond", "negative"))
    check(out, x, 2.0 * ((c - un) - 0.5 * (neg - un)))          # uniform weighting, beta = 0.5 at p = 0.25
    start, *_ = run({**obj, "normalize": True}, CFG(7.5), progress=0.0)
    assert torch.allclose(start.grad.flatten(1).norm(dim=1), torch.ones(B, dtype=torch.float64))


def test_nfsd_splits_at_low_and_high_t():
    out, x, prior, _, _ = run({"name": "nfsd", "split": 0.5}, CFG(7.5))
    (u, eps), = draws()
    t = timesteps(u)
    assert (t < 500).any() and (t >= 500).any(), "the draw should cover both sides of the split"
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    c, un, neg = (model_at(xt, t, k) for k in ("cond", "uncond", "negative"))
    cfg = un + 7.5 * (c - un)
    high = (t >= 500).view(-1, 1, 1, 1)
    check(out, x, s ** 2 * torch.where(high, cfg - neg, cfg))    # = w [s delta_C + delta_D]


@pytest.mark.parametrize("name,gamma", [("vsd", 0.0), ("asd", -0.75)])
def test_vsd_and_asd_gradient_and_estimator_loss(name, gamma):
    out, x, prior, _, est = run({"name": name, "estimator": "copy"}, CFG(7.5), estimator=True)
    (u, eps), (u2, eps2) = draws(n=2)
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    cfg = model_at(xt, t, "uncond") + 7.5 * (model_at(xt, t, "cond") - model_at(xt, t, "uncond"))
    check(out, x, s ** 2 * (cfg - model_at(xt, t, "cond")))      # the estimator starts as a copy of the prior
    t2 = (u2 * 1000).floor().clamp(0, 999)
    a2, s2 = level(prior, t2)
    xt2 = a2 * x.detach() + s2 * eps2
    phi = model_at(xt2, t2, "cond")
    expected = ((phi - eps2) ** 2).mean() + gamma * ((phi - model_at(xt2, t2, "cond")) ** 2).mean()
    assert float(out.estimator_loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    out.estimator_loss.backward()
    assert est.denoiser.a.grad is not None and est.denoiser.a.grad != 0


def test_ism_inverts_and_uses_the_interval_baseline():
    out, x, prior, _, _ = run({"name": "ism", "delta": 0.1, "inversion_steps": 2}, CFG(7.5))
    (u, _), = draws()
    t = timesteps(u)
    s_ = (t - 100).clamp_min(0)
    xs = x.detach()
    for k in range(2):
        ta, tb = s_ * k / 2, s_ * (k + 1) / 2
        (aa, sa), (ab, sb) = level(prior, ta), level(prior, tb)
        e = model_at(xs, ta, "uncond")
        xs = ab * (xs - sa * e) / aa + sb * e
    a_s, s_s = level(prior, s_)
    e_s = model_at(xs, s_, "uncond")
    at, st = level(prior, t)
    xt = at * (xs - s_s * e_s) / a_s + st * e_s
    cfg = model_at(xt, t, "uncond") + 7.5 * (model_at(xt, t, "cond") - model_at(xt, t, "uncond"))
    check(out, x, st / at * (cfg - e_s))


def test_sds_bridge_stages():
    obj = {"name": "sds-bridge", "stage_two": 0.5, "bridge_scale": 2.0}
    one, x1, prior, _, _ = run(obj, CFG(7.5), progress=0.2)
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x1.detach() + s * eps
    cfg = {k: model_at(xt, t, "uncond") + 7.5 * (model_at(xt, t, k) - model_at(xt, t, "uncond"))
           for k in ("target", "source")}
    check(one, x1, cfg["target"] - eps)
    two, x2, _, _, _ = run(obj, CFG(7.5), progress=0.6)
    check(two, x2, 2.0 * (cfg["target"] - cfg["source"]))
    assert torch.allclose(two.grad, 2.0 * 7.5 * (model_at(xt, t, "target") - model_at(xt, t, "source")))


def test_annealed_t_range_and_clipping():
    obj = {"name": "sds", "t_max": {"values": [0.98, 0.3], "progress": [0.5, 0.5]}, "grad_clip": 0.01}
    out, x, prior, _, _ = run(obj, CFG(7.5), progress=0.7)
    assert out.logs["t"] <= 0.3 + 1e-6
    assert float(out.grad.abs().max()) <= 0.01 + 1e-12


def test_every_objective_takes_an_annealed_t_range():
    """The t-range is a shared option: every registered objective accepts it annealed over training
    (rfds once declared it a plain float and refused the bench's annealed base config)."""
    from omniguide.distillation.registry import OBJECTIVES
    from omniguide.distillation.schedules import at

    for name in OBJECTIVES.names():
        obj = build_objective({"name": name, "t_min": 0.02, "t_max": {"values": [0.98, 0.6], "progress": [0.0, 0.5]}})
        assert at(obj.t_max, 0.0) == 0.98 and at(obj.t_max, 1.0) == 0.6, name


def test_a_non_finite_term_stops_naming_the_step_and_term():
    prior, model = toy_prior()
    with torch.no_grad():
        model.a.fill_(float("nan"))
    x = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    ctx = Context(prior, CFG(7.5), x, inputs(), Draws(torch.Generator().manual_seed(0)), 0.0, 12)
    ctx.executor.check_finite = False
    with pytest.raises(DivergenceError, match="objective 'sds' at step 12: term 'cond - uncond' is non-finite"):
        build_objective("sds")(ctx)


def test_stateful_and_reanchoring_guiders_are_refused_before_training():
    with pytest.raises(GuidanceError, match="apg.*needs a sampler step index.*score distillation"):
        check_requirements(APG(momentum=-0.5), (PROGRESS,), "score distillation")
    with pytest.raises(GuidanceError, match="cfg\\+\\+.*re-anchors.*score distillation"):
        check_requirements(CFGPlusPlus(0.5), (PROGRESS,), "score distillation")
    check_requirements(APG(), (PROGRESS,), "score distillation")


def test_a_guider_scale_scheduled_over_progress():
    from omniguide.core.scale import ScaleSchedule

    guider = CFG(ScaleSchedule(5.0, "linear", "progress"))
    assert "progress" in guider.requires()
    with pytest.raises(GuidanceError, match="progress"):
        check_requirements(guider, ("step-index", "reanchor"), "the sampler")
    early, x, prior, _, _ = run({"name": "sds"}, guider, progress=0.0)    # neutral at the start: cond only
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    check(early, x, s ** 2 * (model_at(xt, t, "cond") - eps))
    late, x, *_ = run({"name": "sds"}, guider, progress=0.75)               # 1 + 4 * 2 * 0.75 = 7
    xt = a * x.detach() + s * eps
    c, un = model_at(xt, t, "cond"), model_at(xt, t, "uncond")
    check(late, x, s ** 2 * (un + 7.0 * (c - un) - eps))


def test_sd_and_sd3_pipelines_are_priors():
    """Real diffusers code paths: the family's prompt encoder and denoiser call, VAE encoding with
    gradients, SD3 as a flow prior (RFDS), resolution limits."""
    import tiny_pipelines as tp

    from omniguide.core.errors import ConfigError
    from omniguide.distillation.priors import prior_from_pipeline

    for name, objective in (("sd", "sds"), ("sd3", "rfds")):
        pipe = getattr(tp, name)()
        prior = prior_from_pipeline(pipe, name, {"max_sequence_length": 16})
        assert prior.is_flow == (name == "sd3")
        texts = prior.encode_prompts({"cond": ["a red circle"], "uncond": [""]})
        rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
        x = prior.encode_image(rgb)
        inputs = {k: {n: v.expand(2, *v.shape[1:]) for n, v in enc.items()} for k, enc in texts.items()}
        out = build_objective(objective)(Context(prior, CFG(5.0), x, inputs, Draws(torch.Generator().manual_seed(0))))
        out.loss.backward()
        assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
        with pytest.raises(ConfigError, match="render_size: 17x17 cannot be used"):
            prior.check_resolution(17, 17, "render_size")
    assert prior.size_multiple == 2 and prior.max_size == 32       # SD3: patch 2 x VAE 1, 16 positions
    with pytest.raises(ConfigError, match="larger than"):
        prior.check_resolution(48, 48, "render_size")


def test_csd_normalizes_after_the_time_weighting():
    """The official ``grad_normalize`` divides ``w(t) s (c - u)``: every sample's gradient has norm 1
    under every weighting (dividing before ``w`` left norms ``w(t)``)."""
    out, x, prior, _, _ = run({"name": "csd", "normalize": True, "weighting": "sigma2"}, CFG(7.5))
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    g = s ** 2 * (model_at(xt, t, "cond") - model_at(xt, t, "uncond"))
    check(out, x, g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    assert torch.allclose(out.grad.flatten(1).norm(dim=1), torch.ones(B, dtype=torch.float64))


def test_grad_clip_clamps_first_and_scale_multiplies_after():
    """threestudio clamps the guidance's gradient, then the system weights it by ``lambda``."""
    out, x, prior, _, _ = run({"name": "sds", "grad_clip": 0.01, "scale": 2.0}, CFG(7.5))
    (u, eps), = draws()
    t = timesteps(u)
    a, s = level(prior, t)
    xt = a * x.detach() + s * eps
    c, un = model_at(xt, t, "cond"), model_at(xt, t, "uncond")
    g = s ** 2 * (un + 7.5 * (c - un) - eps)
    assert float(g.abs().max()) > 0.01                                  # the clamp bites
    check(out, x, 2.0 * g.clamp(-0.01, 0.01))
    assert float(out.grad.abs().max()) == pytest.approx(0.02)


class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor's value on the host (``float``, ``bool``, ``item``: one device sync each on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["sds", "csd", "vsd"])
def test_a_watched_step_reads_nothing_on_the_host_and_the_watch_names_the_first_bad_step(name):
    from omniguide.distillation.score.objectives.base import Watch

    prior, model = toy_prior()
    obj = build_objective({"name": name, "estimator": "copy"} if name == "vsd" else name)
    watch = Watch(obj.name)
    est = Estimator(prior, "copy") if name == "vsd" else None
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                model.a.fill_(float("nan"))
        x = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
        ctx = Context(prior, CFG(7.5), x, inputs(), Draws(torch.Generator().manual_seed(step)), 0.0, step, est,
                      watch=watch)
        ctx.executor.check_finite = False
        with HostSyncs() as syncs:
            out = obj(ctx)                               # no raise: the watch only records
        assert syncs.count == 0, f"{name} read {syncs.count} values on the host at step {step}"
        assert all(isinstance(v, torch.Tensor) for v in out.values.values())
        if step == 1:
            watch.check()                                # steps 0-1 are finite
    term = {"sds": "cond - uncond", "csd": "cond - uncond", "vsd": "guided - estimator"}[name]
    with pytest.raises(DivergenceError, match=f"^objective '{name}' at step 2: term '{term}' is non-finite"):
        watch.check()
