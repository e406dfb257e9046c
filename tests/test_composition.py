"""Every method composes with Interval, Schedule and tensor scales, runs in the sampler on 2- to 5-D
samples with declared axes, skips the passes it does not need, and resets its state between runs."""

import pytest
import torch
from diffusers import DDIMScheduler

from omniguide import (
    APG,
    CFG,
    FDG,
    TCFG,
    Adaptive,
    AutoGuidance,
    Axes,
    BetaCFG,
    CFGCache,
    CFGPlusPlus,
    CFGRescale,
    CFGZeroStar,
    Interval,
    Rescale,
    Schedule,
    Terms,
    build_guider,
    sample,
)
from omniguide.core import GuidanceStep, NoiseLevel, Prediction
from omniguide.core.methods import (
    GFCG,
    ICG,
    SMCCFG,
    CFGNorm,
    FreSca,
    MagnitudeAware,
    Momentum,
    PerpNeg,
    PriorGuidance,
    ResidualCFG,
    ScaleSearch,
    ScorerGuidance,
)
from omniguide.core.needs import CLASSIFIER, CONDITIONS, HISTORY, MODULES, NEGATIVE, SCORER, SECOND_MODEL
from omniguide.core.registry import GUIDERS, guiders_needing, guiders_served, with_needs

SHAPES = {
    "BC": (4, 6),
    "BCT": (3, 2, 16),
    "BCHW": (2, 2, 8, 8),
    "BCFHW": (2, 2, 3, 8, 8),
}


class Toy:
    """``eps = 0.3 x + 0.5 pattern[label]``: a smooth denoiser whose branches differ by label
    (0 = cond, 1 = uncond); ``strength`` < 1 makes a weaker model for autoguidance."""

    def __init__(self, shape, strength=1.0):
        g = torch.Generator().manual_seed(0)
        self.patterns = strength * torch.randn(2, *shape[1:], generator=g, dtype=torch.float64)

    def __call__(self, x, t, labels):
        return 0.3 * x + 0.5 * self.patterns[labels]


def supplies(shape):
    """What the toy gives the guiders that declare a need for it: a weaker model, a scorer, a classifier
    (set in the fields that take them), and a negative branch (:func:`run`'s ``negative``)."""
    return {SECOND_MODEL: Toy(shape, strength=0.5), SCORER: lambda x0: -(x0.flatten(1) ** 2).sum(1),
            CLASSIFIER: lambda x0: x0.flatten(1)[:, :2], NEGATIVE: None}


WRAPPERS = {"interval", "schedule"}   # wrap every method below


def methods(layout, shape):
    """One instance per registered guider whose needs the toy meets (the registry's answer): the
    settings below where given, its defaults and the toy's supplies otherwise (a new guider)."""
    given, chosen = supplies(shape), settings(layout, shape)
    served = [n for n in guiders_served(given) if n not in WRAPPERS]
    return {n: chosen[n] if n in chosen else build_guider(with_needs({"name": n}, given)) for n in served}


def settings(layout, shape):
    """Settings that suit these shapes and show each method working."""
    fft = layout == "BC"  # a 6-entry channel axis is too short for a pyramid
    weak = Toy(shape, strength=0.5)
    return {
        "cfg": CFG(3.0),
        "cfg-rescale": CFGRescale(3.0),
        "cfg++": CFGPlusPlus(0.5),
        "apg": APG(3.0, momentum=-0.5, norm_threshold=5.0),
        "tcfg": TCFG(3.0),
        "cfg-zero-star": CFGZeroStar(3.0),
        "fdg": FDG(2.0, 4.0, transform="fft" if fft else "pyramid"),
        "adaptive": Adaptive(CFG(3.0), threshold=0.95),
        "cfg-cache": CFGCache(3.0, every=2),
        "beta": BetaCFG(0.5),
        "autoguidance": AutoGuidance(2.0, weak_model=weak),
        "terms": Terms({"uncond": 2.0}),
        "rescale": Rescale(APG(3.0), rescale=0.7),
        # Methods II
        "icg": ICG(2.0, pool={"labels": [0, 1]}),
        "prior-guidance": PriorGuidance(3.0, base_model=weak),
        "residual-cfg": ResidualCFG(1.5),
        "momentum": Momentum(3.0),
        "smc-cfg": SMCCFG(3.0),
        "magnitude-aware": MagnitudeAware(5.0, alpha=1.0),
        "perp-neg": PerpNeg(3.0, negatives={"negative": 0.5}),
        "fresca": FreSca(3.0, cutoff=1),
        "cfg-norm": CFGNorm(3.0),
        "scorer-guidance": ScorerGuidance(0.2, scorer=lambda x0: -(x0.flatten(1) ** 2).sum(1)),
        "gfcg": GFCG(scale=2.0, classifier=lambda x0: x0.flatten(1)[:, :2], target=0),
        "scale-search": ScaleSearch(4.0, candidates=3, evaluator=lambda x0: (x0.flatten(1) ** 2).sum(1)),
    }


PLUGGED = set(guiders_needing(SCORER, CLASSIFIER))


def run(guider, layout, num_steps=8):
    shape = SHAPES[layout]
    n = shape[0]
    labels = {
        "cond": {"labels": torch.zeros(n, dtype=torch.long)},
        "uncond": {"labels": torch.ones(n, dtype=torch.long)},
        "negative": {"labels": torch.ones(n, dtype=torch.long)},
    }
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scheduler = DDIMScheduler(clip_sample=False)
    return sample(
        Toy(shape), scheduler, guider, noise, labels, num_steps=num_steps, axes=layout, progress=False
    )


def test_every_registered_method_is_covered():
    given = supplies(SHAPES["BCHW"])
    served = set(guiders_served(given))
    assert set(methods("BCHW", SHAPES["BCHW"])) | WRAPPERS == served
    assert set(settings("BCHW", SHAPES["BCHW"])) <= served, "settings for a guider the registry does not serve"
    # the rest need a module to perturb (tests/test_perturbations*.py), video history or several
    # conditions (their modality's suites): declared, so the registry names them
    assert set(GUIDERS.names()) - served == set(guiders_needing(*MODULES, HISTORY, CONDITIONS))
    assert {"pag", "sag", "tsg", "nag", "history", "nested"} <= set(GUIDERS.names()) - served


@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("name", list(methods("BCHW", SHAPES["BCHW"])))
def test_runs_wrapped_and_resets(layout, name):
    guider = methods(layout, SHAPES[layout])[name]
    first = run(guider, layout)
    assert torch.isfinite(first.sample).all()
    again = run(guider, layout)  # same guider object: any state left from run 1 would change run 2
    torch.testing.assert_close(again.sample, first.sample, rtol=0, atol=0)
    assert again.nfe_per_step == first.nfe_per_step
    # inside an interval on 'step' (the last 3 of 8 steps are outside): one pass there
    inner = methods(layout, SHAPES[layout])[name]
    out = run(Interval(inner, step=(0.0, 0.6)), layout)
    assert out.nfe_per_step[-3:] == [1, 1, 1] and torch.isfinite(out.sample).all()
    # a schedule wraps anything with a numeric scale; adaptive and rescale wrap the scheduled guider instead
    if name == "adaptive":
        wrapped = Adaptive(Schedule(CFG(3.0), "cosine"))
    elif name == "rescale":
        wrapped = Rescale(Schedule(APG(3.0), "linear"))
    else:
        wrapped = Schedule(inner, "linear")
    assert torch.isfinite(run(wrapped, layout).sample).all()


def test_guidance_changes_the_result_and_skips_save_passes():
    base = run(CFG(1.0), "BCHW")
    for name, guider in methods("BCHW", SHAPES["BCHW"]).items():
        out = run(guider, "BCHW")
        assert (out.sample - base.sample).abs().max() > 1e-3, name
    assert run(CFGZeroStar(3.0, zero_init_steps=2), "BCHW").nfe_per_step[:3] == [0, 0, 2]
    assert (
        run(BetaCFG(0.5), "BCHW").nfe_per_step[0] == 1 and run(BetaCFG(0.5), "BCHW").nfe_per_step[-1] == 1
    )
    assert run(CFGCache(3.0, every=2), "BCHW").nfe_per_step == [2, 1] * 4
    adaptive = run(Adaptive(CFG(3.0), threshold=-1.0), "BCHW")  # everything agrees at once
    assert adaptive.nfe_per_step == [2] + [1] * 7
    terms = run(Terms({"uncond": {"scale": 2.0, "step": [0.5, 1.0]}}), "BCHW")
    assert terms.nfe_per_step == [1] * 4 + [2] * 4


def per_sample_scale_check(make, layout="BCT"):
    """A per-sample tensor scale gives, for each sample, what the scalar scale gives."""
    shape = SHAPES[layout]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = NoiseLevel.vp(torch.tensor(0.4, dtype=torch.float64), t=torch.tensor(0.6, dtype=torch.float64))
    c, u = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    )
    preds = {k: Prediction(v, "eps", x, noise) for k, v in (("cond", c), ("uncond", u))}
    step = GuidanceStep(x, noise, None, 3, 8, Axes.from_layout(layout))
    ws = [2.0, 5.0, 3.5][: shape[0]]
    tensor = torch.tensor(ws, dtype=torch.float64).reshape(-1, *([1] * (len(shape) - 1)))
    out = make(tensor).combine(preds, step).eps
    for i, w in enumerate(ws):
        torch.testing.assert_close(out[i], make(w).combine(preds, step).eps[i])


@pytest.mark.parametrize(
    "make",
    [
        lambda w: CFG(w),
        lambda w: APG(w, eta=0.2, norm_threshold=3.0),
        lambda w: TCFG(w),
        lambda w: CFGZeroStar(w),
        lambda w: FDG(w, 2 * w),
        lambda w: BetaCFG(w),
        lambda w: CFGCache(w),
        lambda w: Terms({"uncond": w}),
        lambda w: Terms({"uncond": 1.0}, scale=w),
        lambda w: CFGRescale(w),
    ],
    ids=[
        "cfg",
        "apg",
        "tcfg",
        "cfg-zero-star",
        "fdg",
        "beta",
        "cfg-cache",
        "terms",
        "terms-global",
        "rescale",
    ],
)
def test_tensor_scales(make):
    per_sample_scale_check(make)


def test_configs_round_trip():
    for name, guider in methods("BCHW", SHAPES["BCHW"]).items():
        if name in PLUGGED:   # plain callables as plugins here; registered plugins round-trip in test_methods2_golden
            continue
        cfg = guider.config()
        rebuilt = build_guider(cfg)
        assert type(rebuilt) is type(guider) and rebuilt.config() == cfg, name
    t = build_guider(
        {
            "name": "terms",
            "terms": {
                "uncond": 4,
                "perturbed": {"scale": {"shape": "linear", "scale": 2}, "sigma": [0.28, 5.42]},
            },
        }
    )
    assert t.parsed["perturbed"].scale.neutral == 0.0 and t.parsed["perturbed"].sigma == (0.28, 5.42)
    assert build_guider(t.config()).config() == t.config()


def test_bad_configs_name_the_culprit():
    from omniguide.core import ConfigError, GuidanceError

    with pytest.raises(ConfigError, match=r"guider\.form"):
        build_guider({"name": "apg", "form": "papr"})
    with pytest.raises(ConfigError, match=r"terms\.uncond\.scal"):
        build_guider({"name": "terms", "terms": {"uncond": {"scal": 3}}})
    with pytest.raises(ConfigError, match="space"):
        TCFG(space="noise")
    with pytest.raises(ConfigError, match="adaptive needs a guider that falls back to 'cond', not 'uncond'"):
        Adaptive(BetaCFG())
    labels = {
        "cond": {"labels": torch.zeros(2, dtype=torch.long)},
        "uncond": {"labels": torch.ones(2, dtype=torch.long)},
    }
    with pytest.raises(GuidanceError, match="no axes declared"):  # axes are never guessed
        sample(
            Toy((2, 3)),
            DDIMScheduler(clip_sample=False),
            APG(3.0),
            torch.randn(2, 3, dtype=torch.float64),
            labels,
            num_steps=2,
            progress=False,
        )
    with pytest.raises(GuidanceError, match="alpha = 0"):
        x = torch.randn(2, 3, dtype=torch.float64)
        flow = NoiseLevel.flow(torch.tensor(1.0, dtype=torch.float64))
        preds = {
            k: Prediction(torch.randn(2, 3, dtype=torch.float64), "flow", x, flow)
            for k in ("cond", "uncond")
        }
        TCFG(3.0, space="eps").combine(preds, GuidanceStep(x, flow, None, 0, 10, Axes((1,))))


def test_adaptive_batch_agreement_skips_no_later_than_per_sample():
    """With one cosine over the whole batch, the unconditional branch stops no later (and here
    earlier) than when every single sample has to agree."""
    import torch

    from omniguide import CFG, Adaptive, sample
    from omniguide.core.schedulers import build_scheduler
    from omniguide.zoo import GaussianMixture, denoiser_for

    mixture = GaussianMixture.ring()
    y = torch.zeros(500, dtype=torch.long)
    nfe = {}
    for agreement in ("per-sample", "batch"):
        sched = build_scheduler("ddim")
        out = sample(denoiser_for(mixture, sched), sched, Adaptive(CFG(4.0), agreement=agreement),
                     torch.randn(500, 2, generator=torch.Generator().manual_seed(0)),
                     {"cond": {"labels": y}, "uncond": {"labels": y - 1}}, num_steps=30, axes="BD", progress=False)
        nfe[agreement] = out.nfe
    assert nfe["batch"] < nfe["per-sample"] <= 60
