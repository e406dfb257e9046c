"""Predictor-corrector guidance and Feynman-Kac correctors: each sampler step re-derived from the papers'
equations on the analytic mixture (exact scores), the bookkeeping (NFE, ESS, resampling, reports) and the
one-line refusals."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from omniguide import APG, CFG, Terms, sample
from omniguide.core import ConfigError, GuidanceError, GuidanceStep
from omniguide.core.correctors import (
    FKC,
    PCG,
    build_corrector,
    effective_sample_size,
    flat_prior,
    systematic_resample,
)
from omniguide.core.schedulers import SchedulerView, build_scheduler
from omniguide.zoo import GaussianMixture, denoiser_for, label_branches


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.ring()


def run(mixture, guider, scheduler="ddpm", n=64, steps=6, corrector=None, seed=0):
    s = build_scheduler(scheduler)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = torch.zeros(n, dtype=torch.long)
    return sample(denoiser_for(mixture, s), s, guider, noise, label_branches(labels), num_steps=steps, axes="BD",
                  progress=False, corrector=corrector, generator=torch.Generator().manual_seed(seed + 1))


# -- PCG ---------------------------------------------------------------------------------------------------
def test_pcg_langevin_step_golden(mixture):
    """After the predictor's step i -> i+1: x <- x + eta/2 s_gamma + sqrt(eta) z at level i+1, with
    s_gamma = -(gamma eps_c + (1 - gamma) eps_u)/sigma and eta = step_size alpha^2 (sig~_i^2 - sig~_{i+1}^2)."""
    s = build_scheduler("ddim")
    model = denoiser_for(mixture, s)
    view = SchedulerView(s, 5)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(8, dtype=torch.long)
    from omniguide.core import BranchExecutor

    executor = BranchExecutor(model, label_branches(labels), "eps")
    point = view.point(x, 1)
    step = GuidanceStep(x, point.model_noise, point.timestep, 1, 5, None)
    x_next = x * 0.9
    pcg = PCG(gamma=2.5, steps=1, step_size=0.7, seed=3)
    pcg.reset(x)
    out = pcg.after_step(1, x_next, point, step, {}, None, view, executor, None)
    nxt = view.point(x_next, 2)
    a, sig = nxt.model_noise.alpha, nxt.model_noise.sigma
    eps_c = mixture.eps(x_next, nxt.model_noise, 0)
    eps_u = mixture.eps(x_next, nxt.model_noise, -1)
    score = -(2.5 * eps_c - 1.5 * eps_u) / sig
    eta = 0.7 * a**2 * (point.model_noise.sigma_edm**2 - nxt.model_noise.sigma_edm**2)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x_next + 0.5 * eta * score + eta.sqrt() * z)
    assert executor.nfe_per_step == [2] and executor.passes_per_step == [1]


def test_pcg_counts_its_evaluations_and_skips_the_last_step(mixture):
    out = run(mixture, CFG(1.0), "ddim", steps=6, corrector=PCG(gamma=3.0, steps=2))
    assert out.nfe_per_step == [1 + 2 * 2] * 5 + [1]
    assert out.report["pcg"] == {"gamma": 3.0, "langevin_steps": 2, "moves": 10}


# -- FKC ---------------------------------------------------------------------------------------------------
def test_fkc_increment_is_the_tempered_weight(mixture):
    """d log w = (sig~_i^2 - sig~_{i+1}^2) / (2 sig~_i^2) gamma (gamma - 1) ||eps_c - eps_u||^2, the
    exact integral of the reference's -gamma (gamma - 1) ||s_u - s_c||^2 t dt over the step (the reference
    takes the left point, t |dt|; both agree as dt -> 0)."""
    from omniguide.core import NoiseLevel, Prediction

    x = torch.randn(5, 2, dtype=torch.float64)
    noise = NoiseLevel.vp(torch.tensor(0.3, dtype=torch.float64))
    c, u = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    preds = {"cond": Prediction(c, "eps", x, noise), "uncond": Prediction(u, "eps", x, noise)}
    fkc = FKC(gamma=3.0)
    here, there = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    ref = (4.0 - 2.25) / (2 * 4.0) * 3.0 * 2.0 * ((c - u) ** 2).sum(1)
    torch.testing.assert_close(fkc.increment(preds, here, there), ref)
    # the reference's left-point rule, with s = -eps / sigma~: gamma (gamma - 1) ||ds||^2 t (t - t_next)
    left = 3.0 * 2.0 * ((c - u) ** 2).sum(1) / 4.0 * 2.0 * (2.0 - 1.5)
    t_small = torch.tensor(1.999, dtype=torch.float64)
    ours = fkc.increment(preds, here, t_small)
    theirs = 3.0 * 2.0 * ((c - u) ** 2).sum(1) / 4.0 * 2.0 * (2.0 - 1.999)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=0)
    assert not torch.allclose(ref, left)     # a finite step: the two rules differ (pinned)


def test_fkc_product_and_annealed_targets(mixture):
    """Geometric targets sum_i a_i log p_i (sum a = 1): increment = factor (||sum a eps||^2 - sum a ||eps||^2);
    annealed p^beta through a flat branch (eps = 0)."""
    from omniguide.core import NoiseLevel, Prediction

    x = torch.randn(4, 2, dtype=torch.float64)
    n = NoiseLevel.vp(torch.tensor(0.5, dtype=torch.float64))
    e1, e2, e0 = (torch.randn(4, 2, dtype=torch.float64) for _ in range(3))
    preds = {k: Prediction(v, "eps", x, n) for k, v in {"c1": e1, "c2": e2, "uncond": e0}.items()}
    fkc = FKC(weights={"c1": 1.0, "c2": 1.0, "uncond": -1.0})
    f = (1.0 - 0.25) / 2.0
    sq = lambda v: (v * v).sum(1)  # noqa: E731
    ref = f * (sq(e1 + e2 - e0) - sq(e1) - sq(e2) + sq(e0))
    torch.testing.assert_close(fkc.increment(preds, torch.tensor(1.0), torch.tensor(0.5)), ref)
    annealed = FKC(weights={"cond": 2.0, "flat": -1.0}, flat=("flat",))
    p2 = {"cond": preds["c1"], "flat": Prediction(torch.zeros_like(e1), "eps", x, n)}
    torch.testing.assert_close(annealed.increment(p2, torch.tensor(1.0), torch.tensor(0.5)), f * 2.0 * sq(e1))
    annealed.reset(x)   # starts from the un-annealed prior: w_0 = exp(-(beta - 1) ||x||^2 / 2)
    torch.testing.assert_close(annealed._log_w.reshape(-1), -0.5 * sq(x))
    with pytest.raises(ConfigError, match="weights must sum to 1"):
        FKC(weights={"cond": 2.0})


def test_systematic_resampling_and_ess():
    w = torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64)
    idx = systematic_resample(w, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx, minlength=4)
    assert counts[1] == 0 and counts.sum() == 4 and counts[2] >= 2   # each i drawn floor or ceil of n w_i times
    assert all(abs(int(counts[i]) - 4 * float(w[i])) < 1 for i in range(4))
    torch.testing.assert_close(effective_sample_size(torch.zeros(2, 8)), torch.full((2,), 8.0, dtype=torch.float64))
    log_w = torch.log(w.clamp_min(1e-300))
    torch.testing.assert_close(effective_sample_size(log_w), 1 / (w * w).sum())


def test_fkc_run_reports_particles_ess_and_resampling(mixture):
    fkc = FKC(gamma=2.0, particles=16, threshold=0.9)
    out = run(mixture, CFG(2.0), "ddpm", n=64, steps=8, corrector=fkc)
    report = out.report["fkc"]
    assert report["particles"] == 16 and report["threshold"] == 0.9
    assert len(report["ess_fraction_per_step"]) == 7 and all(0 < e <= 1 for e in report["ess_fraction_per_step"])
    assert out.nfe_per_step == [2] * 8    # weights and resampling cost no evaluations
    again = run(mixture, CFG(2.0), "ddpm", n=64, steps=8, corrector=FKC(gamma=2.0, particles=16, threshold=0.9))
    assert torch.equal(out.sample, again.sample)      # seeded resampling: reproducible


def test_fkc_resamples_within_groups(mixture):
    """Two groups of particles with different conditions never mix."""
    s = build_scheduler("ddpm")
    n = 32
    labels = torch.cat([torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)])
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fkc = FKC(gamma=4.0, particles=16, threshold=1.0)
    seen = []
    original = fkc.after_step

    def spy(i, x_next, *args):
        out = original(i, x_next, *args)
        if i + 1 < 6:
            rows = [int((out[j] == x_next).all(1).nonzero()[0]) for j in range(n)]
            seen.append(rows)
        return out

    fkc.after_step = spy
    sample(denoiser_for(mixture, s), s, CFG(4.0), noise, label_branches(labels), num_steps=6, axes="BD",
           progress=False, corrector=fkc, generator=torch.Generator().manual_seed(1))
    for rows in seen:
        assert all(r < 16 for r in rows[:16]) and all(r >= 16 for r in rows[16:])


def test_fkc_warns_when_the_effective_sample_size_collapses(mixture):
    with pytest.warns(UserWarning, match=r"fkc: the effective sample size collapsed to .* at step \d+"):
        run(mixture, CFG(8.0), "ddpm", n=64, steps=10, corrector=FKC(gamma=8.0, collapse=0.5))


def test_fkc_refusals(mixture):
    with pytest.raises(GuidanceError, match="fkc: guider 'apg' keeps state between steps"):
        run(mixture, APG(3.0, momentum=-0.5), "ddpm", corrector=FKC(gamma=3.0))
    with pytest.raises(GuidanceError, match="fkc: the particles must follow the reverse SDE; DDIMScheduler"):
        run(mixture, CFG(3.0), "ddim", corrector=FKC(gamma=3.0))
    with pytest.raises(GuidanceError, match="fkc: at step 0 the guider's guided noise is not the target's"):
        run(mixture, CFG(2.0), "ddpm", corrector=FKC(gamma=3.0))
    with pytest.raises(GuidanceError, match="fkc: a batch of 64 does not split into groups of 10"):
        run(mixture, CFG(3.0), "ddpm", corrector=FKC(gamma=3.0, particles=10))
    with pytest.raises(ConfigError, match="corrector.gama: unknown key for corrector 'fkc'; did you mean 'gamma'"):
        build_corrector({"name": "fkc", "gama": 2})


def test_fkc_composition_with_terms_and_annealing_with_a_flat_branch(mixture):
    """Product of experts p(x|0) p(x|1) / p(x) with Terms as the guided score; p(x|0)^2 with a flat branch."""
    s = build_scheduler("ddpm")
    n = 32
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = {"cond": {"labels": torch.zeros(n, dtype=torch.long)}, "cond2": {"labels": torch.ones(n, dtype=torch.long)},
             "uncond": {"labels": torch.full((n,), -1)}, "flat": flat_prior()}
    model = denoiser_for(mixture, s)
    product = Terms(base="uncond", terms={"cond": -1.0, "cond2": -1.0})
    out = sample(model, s, product, noise, table, num_steps=6, axes="BD", progress=False,
                 corrector=FKC(weights={"cond": 1.0, "cond2": 1.0, "uncond": -1.0}))
    assert torch.isfinite(out.sample).all()
    annealed = CFG(2.0)
    table_a = {**table, "uncond": table["flat"]}
    out = sample(model, build_scheduler("ddpm"), annealed, noise, table_a, num_steps=6, axes="BD", progress=False,
                 corrector=FKC(weights={"cond": 2.0, "uncond": -1.0}, flat=("uncond",)))
    assert torch.isfinite(out.sample).all() and math.isfinite(out.report["fkc"]["ess_fraction_per_step"][-1])


def test_correctors_do_not_warn_on_healthy_runs(mixture):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(mixture, CFG(1.5), "ddpm", n=64, steps=8, corrector=FKC(gamma=1.5))
