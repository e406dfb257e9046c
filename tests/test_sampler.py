"""The sampler loop over diffusers schedulers, on the analytic mixture."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from omniguide import CFG, CFGPlusPlus, Interval, sample
from omniguide.core import GuidanceError
from omniguide.zoo import UNCOND, GaussianMixture, MixtureDenoiser
from omniguide.zoo.metrics import sliced_wasserstein

MIX = GaussianMixture.ring()
N = 2000


def scheduler(name):
    return {
        "ddim": lambda: DDIMScheduler(clip_sample=False),
        "euler": lambda: EulerDiscreteScheduler(),
        "dpm++": lambda: DPMSolverMultistepScheduler(),
        "flow-euler": lambda: FlowMatchEulerDiscreteScheduler(shift=1.0),
    }[name]()


def model_for(sched, parameterization=None):
    if isinstance(sched, FlowMatchEulerDiscreteScheduler):
        return MixtureDenoiser(MIX, "flow", parameterization or "flow")
    return MixtureDenoiser(MIX, "vp", parameterization or "eps", sched.alphas_cumprod)


def table(label=0, n=N):
    y = torch.full((n,), label, dtype=torch.long)
    return {"cond": {"labels": y}, "uncond": {"labels": torch.full_like(y, UNCOND)}}


def noise(n=N, dim=2, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++", "flow-euler"])
def test_exact_conditional_score_reproduces_the_conditional(name):
    """Tolerance: the sliced Wasserstein distance to exact class samples stays below 0.1; two
    independent exact sample sets of this size are 0.03-0.06 apart."""
    sched = scheduler(name)
    out = sample(model_for(sched), sched, CFG(scale=1.0), noise(), table(0), num_steps=50, progress=False)
    ref = MIX.sample(N, 0, torch.Generator().manual_seed(1))
    assert sliced_wasserstein(out.sample, ref) < 0.1
    assert out.nfe == 50 and out.forward_passes == 50  # scale 1: the conditional branch only


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_model_parameterization_does_not_change_the_result(parameterization):
    """The sampler converts any model parameterization to the scheduler's exactly."""
    sched = scheduler("ddim")
    ref = sample(model_for(sched, "eps"), sched, CFG(3.0), noise(200), table(1, 200), num_steps=20, progress=False)
    sched = scheduler("ddim")
    out = sample(model_for(sched, parameterization), sched, CFG(3.0), noise(200), table(1, 200), num_steps=20,
                 parameterization=parameterization, progress=False)
    torch.testing.assert_close(out.sample, ref.sample, rtol=1e-7, atol=1e-7)


def test_scale_one_gives_the_conditional_exactly():
    sched = scheduler("ddim")
    guided = sample(model_for(sched), sched, CFG(1.0), noise(300), table(2, 300), num_steps=20, progress=False)
    cond_only = {"cond": table(2, 300)["cond"]}
    plain = sample(model_for(sched), sched, CFG(1.0), noise(300), cond_only, num_steps=20, progress=False)
    assert torch.equal(guided.sample, plain.sample)
    # and the other convention's neutral scale is 0
    same = sample(model_for(sched), sched, CFG(0.0, form="c+w(c-u)"), noise(300), table(2, 300), num_steps=20,
                  progress=False)
    assert torch.equal(same.sample, plain.sample)


def test_two_cfg_conventions_agree_with_shifted_scale():
    sched = scheduler("euler")
    a = sample(model_for(sched), sched, CFG(4.0), noise(300), table(0, 300), num_steps=15, progress=False)
    b = sample(model_for(sched), sched, CFG(3.0, form="c+w(c-u)"), noise(300), table(0, 300), num_steps=15,
               progress=False)
    torch.testing.assert_close(a.sample, b.sample, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["ddim", "euler", "flow-euler"])
def test_cfgpp_lambda_zero_equals_unconditional_sampling(name):
    sched = scheduler(name)
    pp = sample(model_for(sched), sched, CFGPlusPlus(0.0), noise(300), table(0, 300), num_steps=20, progress=False)
    assert pp.nfe == 20  # lambda = 0 needs only the unconditional branch
    uncond_as_cond = {"cond": table(0, 300)["uncond"]}
    sched = scheduler(name)
    ref = sample(model_for(sched), sched, CFG(1.0), noise(300), uncond_as_cond, num_steps=20, progress=False)
    torch.testing.assert_close(pp.sample, ref.sample, rtol=1e-9, atol=1e-9)


def test_cfgpp_ddim_step_matches_the_paper():
    """One DDIM step of CFG++ (Chung et al. 2024, Alg. 1), re-derived here:
    x0 = (x - sqrt(1-abar) eps_l) / sqrt(abar), eps_l = u + l(c - u);
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) u."""
    sched = scheduler("ddim")
    model = model_for(sched)
    lam, x = 0.7, noise(64)
    y = table(0, 64)
    seen = {}

    def record(i, step, result, preds):
        seen.setdefault(i, (step.x.clone(), preds["cond"].eps.clone(), preds["uncond"].eps.clone()))

    out = sample(model, sched, CFGPlusPlus(lam), x, y, num_steps=2, progress=False, callback=record)
    ts = sched.timesteps
    abar = sched.alphas_cumprod.double()
    xt, c, u = seen[1]
    eps_l = u + lam * (c - u)
    x0 = (xt - (1 - abar[ts[1]]).sqrt() * eps_l) / abar[ts[1]].sqrt()
    prev = abar[ts[1] - sched.config.num_train_timesteps // 2] if ts[1] - 500 >= 0 else sched.final_alpha_cumprod
    expected = prev.double().sqrt() * x0 + (1 - prev.double()).sqrt() * u
    torch.testing.assert_close(out.sample, expected, rtol=1e-6, atol=1e-6)


def test_cfgpp_euler_step_matches_comfyui_euler_cfg_pp():
    """k-diffusion style Euler CFG++: x_next = x0_guided + sigma_next * eps_uncond."""
    sched = scheduler("euler")
    model = model_for(sched)
    lam, x = 0.5, noise(64)
    seen = {}

    def record(i, step, result, preds):
        seen[i] = (result.x0.clone(), preds["uncond"].eps.clone())

    out = sample(model, sched, CFGPlusPlus(lam), x, table(1, 64), num_steps=3, progress=False, callback=record)
    x0, u = seen[2]
    expected = x0 + sched.sigmas[3].double() * u
    torch.testing.assert_close(out.sample, expected, rtol=1e-6, atol=1e-6)


def test_outside_the_interval_costs_one_pass():
    sched = scheduler("ddim")
    guider = Interval(CFG(4.0), sigma=(0.5, 3.0))
    per_step = []
    out = sample(model_for(sched), sched, guider, noise(100), table(0, 100), num_steps=30, progress=False,
                 callback=lambda i, s, r, p: per_step.append((float(s.coordinate("sigma")), sorted(p))))
    for (sigma, names), nfe in zip(per_step, out.nfe_per_step):
        inside = 0.5 <= sigma <= 3.0
        assert names == (["cond", "uncond"] if inside else ["cond"])
        assert nfe == (2 if inside else 1)
    assert out.forward_passes == 30  # batched: one pass per step either way
    assert 30 < out.nfe < 60


def test_unsupported_scheduler_is_named():
    from diffusers import HeunDiscreteScheduler

    with pytest.raises(GuidanceError, match="HeunDiscreteScheduler is not supported"):
        sample(model_for(scheduler("ddim")), HeunDiscreteScheduler(), CFG(2.0), noise(4), table(0, 4),
               progress=False)


def test_progress_bar_and_callback_every_step(capsys):
    sched = scheduler("ddim")
    calls = []
    sample(model_for(sched), sched, CFG(2.0), noise(8), table(0, 8), num_steps=5, progress=True,
           callback=lambda i, *a: calls.append(i))
    assert calls == [0, 1, 2, 3, 4]
    assert "sampling" in capsys.readouterr().err


def test_ddim_by_name_steps_as_stable_diffusion_and_1000_steps_is_a_one_line_error():
    """``build_scheduler("ddim")`` is SD's DDIM config (steps_offset=1, set_alpha_to_one=False): the
    timesteps are 1 + k (1000 // N) and the last step lands on alphas_cumprod[0] (sigma ~ 0.01 for
    linear betas). At N = 1000 the last timestep would be 1000, one past the table: a one-line error."""
    from omniguide.core import ConfigError
    from omniguide.core.schedulers import build_scheduler

    sched = build_scheduler("ddim")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [1 + 100 * k for k in range(9, -1, -1)]
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert float((1 - sched.final_alpha_cumprod) ** 0.5) == pytest.approx(float(betas[0] ** 0.5), rel=1e-4)
    out = sample(model_for(sched), sched, CFG(1.0), noise(4), table(0, 4), num_steps=999, progress=False)
    assert torch.isfinite(out.sample).all()
    with pytest.raises(ConfigError, match=r"^num_steps: 1000 steps of DDIMScheduler reach timestep 1000, past its "
                                          r"last training timestep 999; use fewer steps$"):
        sample(model_for(sched), build_scheduler("ddim"), CFG(1.0), noise(4), table(0, 4), num_steps=1000,
               progress=False)
