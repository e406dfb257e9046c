"""Scorer guidance (universal / training-free), gradient-free classifier guidance and per-step scale
search on the analytic mixture: each step re-derived from its formula with an independent autograd
computation, the plugins' one-line errors, recurrence and the saved schedule."""

from __future__ import annotations

import pytest
import torch

from omniguide import CFG, sample
from omniguide.core import BranchExecutor, ConfigError, GuidanceError, GuidanceStep
from omniguide.core.methods.gfcg import GFCG
from omniguide.core.methods.scale_search import ScaleSearch
from omniguide.core.methods.scorer_guidance import ScorerGuidance
from omniguide.core.registry import build_guider
from omniguide.core.schedulers import SchedulerView, build_scheduler
from omniguide.core.scorers import build_scorer
from omniguide.zoo import GaussianMixture, denoiser_for, label_branches
from omniguide.zoo.scorers import MixtureClassifier, MixtureClassScorer, class_log_posterior


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.ring()


def one_step(mixture, guider, n=6, index=3, steps=8, seed=0, labels=0):
    s = build_scheduler("ddim")
    view = SchedulerView(s, steps)
    model = denoiser_for(mixture, s)
    x = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    lab = torch.full((n,), labels, dtype=torch.long)
    executor = BranchExecutor(model, label_branches(lab), "eps", defaults=guider.branch_defaults())
    point = view.point(x, index)
    step = GuidanceStep(x, point.model_noise, point.timestep, index, steps, None)
    from omniguide.core.sampler import evaluate_guider

    preds, result = evaluate_guider(guider, executor, x, point.timestep, step)
    return x, point.model_noise, preds, result, executor


def test_analytic_scorers_are_bayes(mixture):
    x = torch.randn(10, 2, dtype=torch.float64)
    logits = MixtureClassifier()(x)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(10, dtype=torch.float64))
    # p(k | x) from the component densities, computed directly
    dens = torch.stack([mixture.weights[k] * torch.exp(-((x - mixture.means[k]) ** 2).sum(1)
                                                       / (2 * mixture.stds[k] ** 2))
                        for k in range(len(mixture.weights))], 1)
    per_class = torch.stack([dens[:, mixture.labels == c].sum(1) for c in mixture.classes], 1)
    torch.testing.assert_close(logits, (per_class / per_class.sum(1, keepdim=True)).log())
    torch.testing.assert_close(MixtureClassScorer(label=2)(x), class_log_posterior(mixture, x)[:, 2])


def test_forward_scorer_guidance_golden(mixture):
    """eps' = eps_c - s sigma grad_{x_t} f(x0_c(x_t)), the gradient through the (exact) denoiser."""
    scorer = MixtureClassScorer(label=1)
    x, noise, preds, result, _ = one_step(mixture, ScorerGuidance(scale=0.8, scorer=scorer))
    xg = x.clone().requires_grad_(True)
    x0 = mixture.x0(xg, noise, 0)
    (grad,) = torch.autograd.grad(scorer(x0).sum(), xg)
    eps = mixture.eps(x, noise, 0)
    torch.testing.assert_close(result.eps, eps - 0.8 * noise.sigma * grad)
    assert not result.eps.requires_grad


def test_x0_scorer_guidance_golden(mixture):
    """x0' = x0_c + s grad_{x0} f(x0_c) (TFG's mean guidance: no gradient through the denoiser)."""
    scorer = MixtureClassScorer(label=1)
    x, noise, _, result, _ = one_step(mixture, ScorerGuidance(scale=0.5, scorer=scorer, mode="x0"))
    x0 = mixture.x0(x, noise, 0).requires_grad_(True)
    (grad,) = torch.autograd.grad(scorer(x0).sum(), x0)
    torch.testing.assert_close(result.x0, x0.detach() + 0.5 * grad)


def test_bad_scorers_are_one_line_errors(mixture):
    with pytest.raises(GuidanceError, match=r"scorer-guidance: the scorer returned shape \(6, 2\); expected one"):
        one_step(mixture, ScorerGuidance(scorer=lambda x0: x0))
    with pytest.raises(GuidanceError, match="scorer-guidance: the scorer's output has no gradient"):
        one_step(mixture, ScorerGuidance(scorer=lambda x0: x0.detach().sum(1)))
    with pytest.raises(GuidanceError, match="scorer-guidance: the scorer returned float"):
        one_step(mixture, ScorerGuidance(scorer=lambda x0: 1.0, mode="x0"))
    with pytest.raises(ConfigError, match="scorer: scorer-guidance needs a scorer"):
        ScorerGuidance()
    with pytest.raises(ConfigError, match="scorer.name: unknown scorer 'mixture-clas'; did you mean 'mixture-class'"):
        build_scorer({"name": "mixture-clas"})
    with pytest.raises(ConfigError, match="scorer.lable: unknown key for scorer 'mixture-class'"):
        build_scorer({"name": "mixture-class", "lable": 1})


def test_recurrence_repeats_each_step(mixture):
    s = build_scheduler("ddim")
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(16, dtype=torch.long)
    guider = ScorerGuidance(scale=0.3, scorer=MixtureClassScorer(label=0), recurrence_steps=3)
    out = sample(denoiser_for(mixture, s), s, guider, noise, label_branches(labels), num_steps=5, axes="BD",
                 progress=False, generator=torch.Generator().manual_seed(1))
    assert out.nfe_per_step == [3, 3, 3, 3, 1]      # the last step is not repeated
    with pytest.raises(GuidanceError, match="recurrence=3 re-runs a step, which needs a stateless scheduler"):
        f = build_scheduler("euler")
        sample(denoiser_for(mixture, f), f, guider, noise, label_branches(labels), num_steps=3, axes="BD",
               progress=False)


def test_scorer_guidance_pulls_samples_to_the_scored_class(mixture):
    """Unconditional sampling guided by log p(1 | x0) lands in class 1 far more often."""
    s = build_scheduler("ddim")
    noise = torch.randn(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    table = label_branches(torch.full((400,), -1, dtype=torch.long))
    from omniguide.zoo.metrics import precision

    plain = sample(denoiser_for(mixture, s), s, CFG(1.0), noise, table, num_steps=20, axes="BD", progress=False).sample
    guided = sample(denoiser_for(mixture, s), s, ScorerGuidance(scale=1.0, scorer=MixtureClassScorer(label=1)),
                    noise, table, num_steps=20, axes="BD", progress=False).sample
    assert precision(guided, mixture, 1) > precision(plain, mixture, 1) + 0.3


def test_gfcg_picks_the_most_likely_wrong_class(mixture):
    """r = argmax_{k != y} p_k(x0_c); lam = omega min(p_r / p_y, 1); pred = c + lam (c - D(x, r))."""
    classifier = MixtureClassifier()
    guider = GFCG(gfcg_scale=2.0, classifier=classifier, target=0)
    x, noise, preds, result, executor = one_step(mixture, guider)
    assert executor.nfe_per_step == [2]
    p = classifier(mixture.x0(x, noise, 0)).exp()
    others = p.clone()
    others[:, 0] = -1
    p_ref, ref = others.max(1)
    lam = (2.0 * (p_ref / p[:, 0]).clamp(max=1.0)).reshape(-1, 1)
    c, r = mixture.eps(x, noise, 0), torch.stack([mixture.eps(x[i:i + 1], noise, int(ref[i]))[0] for i in range(6)])
    torch.testing.assert_close(result.eps, c + lam * (c - r))
    with_cfg = GFCG(scale=3.0, gfcg_scale=2.0, classifier=classifier, target=0)
    _, _, _, result2, executor2 = one_step(mixture, with_cfg)
    u = mixture.eps(x, noise, -1)
    torch.testing.assert_close(result2.eps, u + 3.0 * (c - u) + lam * (c - r))
    assert executor2.nfe_per_step == [3]
    with pytest.raises(GuidanceError, match=r"gfcg: the classifier returned \(6,\); expected logits"):
        one_step(mixture, GFCG(classifier=lambda x0: x0.sum(1)))


def test_scale_search_keeps_the_evaluators_choice_per_sample(mixture):
    evaluator = MixtureClassScorer(label=0)
    guider = ScaleSearch(scales=(1.0, 2.0, 4.0), evaluator=evaluator)
    x, noise, preds, result, _ = one_step(mixture, guider)
    c, u = mixture.eps(x, noise, 0), mixture.eps(x, noise, -1)
    cands = [u + w * (c - u) for w in (1.0, 2.0, 4.0)]
    scores = torch.stack([evaluator((x - noise.sigma * e) / noise.alpha) for e in cands])
    best = scores.argmax(0)
    ref = torch.stack([cands[int(k)][i] for i, k in enumerate(best)])
    torch.testing.assert_close(result.eps, ref)
    assert guider.report()["scale_search"]["scales"] == [[(1.0, 2.0, 4.0)[int(k)] for k in best]]


def test_scale_search_schedule_is_returned_with_the_samples(mixture):
    s = build_scheduler("ddim")
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    guider = build_guider({"name": "scale-search", "scale": 5.0, "candidates": 3,
                           "evaluator": {"name": "mixture-density", "label": 0}})
    out = sample(denoiser_for(mixture, s), s, guider, noise, label_branches(torch.zeros(8, dtype=torch.long)),
                 num_steps=4, axes="BD", progress=False)
    chosen = out.report["scale_search"]["scales"]
    assert len(chosen) == 4 and all(len(row) == 8 and set(row) <= {1.0, 3.0, 5.0} for row in chosen)
    assert out.nfe_per_step == [2] * 4


def test_drivers_that_cannot_serve_a_guider_refuse_it_early():
    """Recurrence needs the core sampler; follow-up rounds need a driver that runs them (a driver without
    them, such as score distillation, refuses SAG and GFCG instead of silently skipping the round)."""
    from omniguide.core import check_requirements
    from omniguide.core.methods import SAG

    guider = ScorerGuidance(scorer=MixtureClassScorer(label=0), recurrence_steps=2)
    with pytest.raises(GuidanceError, match="needs a sampler that repeats a step with re-noising "
                                            r"\(recurrence_steps=2 repeats every step\), which the pipeline adapter"):
        check_requirements(guider, ("step-index", "reanchor", "gradient", "follow-up"), "the pipeline adapter")
    for made in (SAG(), GFCG(classifier=MixtureClassifier())):
        with pytest.raises(GuidanceError, match="needs a driver that runs follow-up branches within the step"):
            check_requirements(made, ("step-index",), "score distillation")
