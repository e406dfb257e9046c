"""Golden tests for the Methods II combine rules and new-branch guiders: each re-derived here from its
paper's (or reference node's) formula in plain torch, on 3-, 4- and 5-D samples with declared axes
(``BCT``, ``BCHW``, ``BCFHW`` pooled and per frame), never with the implementation's helpers."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods_golden import LAYOUTS, at, check, eps_from, rnorm, rsum, setup, to_kind, x0_from_eps

from omniguide.core import Branch, BranchExecutor, ConfigError, GuidanceError, GuidanceStep, NoiseLevel, Prediction
from omniguide.core.methods import (
    ICG,
    SMCCFG,
    CFGNorm,
    FreSca,
    MagnitudeAware,
    Momentum,
    PerpNeg,
    PriorGuidance,
    ResidualCFG,
    S2Guidance,
)
from omniguide.core.registry import build_guider
from omniguide.zoo import scorers as _registers_the_testbed_scorers  # noqa: F401


# -- momentum guidance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_momentum_over_steps_and_reset(layout):
    """MG (arXiv:2602.20360, pamparamm mg_nodes.py) in x0: out = g + a(g - m); m <- (1-b) g + b m; m_0 = g_0."""
    step, preds, c, u = setup(layout)
    x, n = step.x, step.noise
    guider = Momentum(4.0, momentum=0.5, ema=0.6)
    m = None
    for i in range(3):
        ci, ui = c * (1 + 0.2 * i), u - 0.1 * i
        p = {"cond": preds["cond"].with_value(ci), "uncond": preds["uncond"].with_value(ui)}
        g = to_kind(ui, "x0", x, n) + 4.0 * (to_kind(ci, "x0", x, n) - to_kind(ui, "x0", x, n))
        m = g if m is None else m
        ref = g + 0.5 * (g - m)
        m = 0.4 * g + 0.6 * m
        check(guider.combine(p, at(step, i)), eps_from(ref, "x0", x, n), step)
    guider.reset()   # a new run: the first step is plain CFG
    ref0 = to_kind(u, "x0", x, n) + 4.0 * (to_kind(c, "x0", x, n) - to_kind(u, "x0", x, n))
    check(guider.combine(preds, at(step, 0)), eps_from(ref0, "x0", x, n), step)
    with pytest.raises(GuidanceError, match="momentum: needs a sampler step index"):
        guider.combine(preds, GuidanceStep(x, n, None, None, None, step.axes))


# -- S2-Guidance's combine ------------------------------------------------------------------------------
@pytest.mark.parametrize("s2_form", ["difference", "subtract"])
def test_s2_guidance_forms(s2_form):
    """S2-Guidance (arXiv:2508.12880): u + w (c - u) + omega (c - p) ("difference"), u + w (c - u) - omega p
    ("subtract", the ComfyUI/Forge port); without uncond, c + omega (c - p) / c - omega p."""
    step, preds, c, u = setup("BCHW")
    p = c - 0.3 * torch.randn(c.shape, dtype=c.dtype, generator=torch.Generator().manual_seed(1))
    guider = S2Guidance(scale=4.0, perturbed_scale=0.25, s2_form=s2_form)
    term = 0.25 * ((c - p) if s2_form == "difference" else -p)
    full = {**preds, "s2": Prediction(p, "eps", step.x, step.noise)}
    check(guider.combine(full, step), u + 4.0 * (c - u) + term, step)
    check(guider.combine({"cond": preds["cond"], "s2": full["s2"]}, step), c + term, step)


# -- SMC-CFG --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_smc_cfg_sliding_surface(layout):
    """CFG-Ctrl (arXiv:2603.03281, pamparamm smc_nodes.py): e = c - u; s = (e - e_prev) + l e_prev;
    e <- e - k s/||s||; out = u + w e; e_prev <- e (x0 space, e_prev starts at e)."""
    step, preds, c, u = setup(layout)
    x, n, axes = step.x, step.noise, step.axes
    guider = SMCCFG(5.0, surface=6.0, force=0.1)
    prev = None
    for i in range(3):
        ci, ui = c * (1 - 0.1 * i), u + 0.05 * i
        p = {"cond": preds["cond"].with_value(ci), "uncond": preds["uncond"].with_value(ui)}
        cx, ux = to_kind(ci, "x0", x, n), to_kind(ui, "x0", x, n)
        e = cx - ux
        prev = e if prev is None else prev
        s = (e - prev) + 6.0 * prev
        e = e - 0.1 * s / rnorm(s, axes)
        prev = e
        check(guider.combine(p, at(step, i)), eps_from(ux + 5.0 * e, "x0", x, n), step)


# -- magnitude-aware --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_magnitude_aware_scale(layout):
    """RAAG / MAMBO-G: w' = 1 + (w - 1) exp(-a ||c - u|| / ||u||) (native); w exp(-a r) (original)."""
    step, preds, c, u = setup(layout)
    r = rnorm(c - u, step.axes) / rnorm(u, step.axes)
    w = 1 + (10.0 - 1) * torch.exp(-0.5 * r)
    check(MagnitudeAware(10.0, alpha=0.5).combine(preds, step), u + w * (c - u), step)
    w0 = 3.0 * torch.exp(-0.5 * r)
    check(MagnitudeAware(3.0, alpha=0.5, form="c+w(c-u)").combine(preds, step), c + w0 * (c - u), step)
    assert MagnitudeAware(1.0).branches(step) == ("cond",)


# -- perp-neg -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_perp_neg_removes_only_the_perpendicular_part(layout):
    """Perp-Neg (arXiv:2304.04968): u + w (d - sum_i w_i perp(n_i - u, d)), d = c - u, per sample."""
    step, preds, c, u = setup(layout)
    x, n, axes = step.x, step.noise, step.axes
    g = torch.Generator().manual_seed(3)
    n1 = u + torch.randn(c.shape, dtype=c.dtype, generator=g)
    n2 = u + 0.5 * (c - u) + 0.3 * torch.randn(c.shape, dtype=c.dtype, generator=g)
    preds = {**preds, "neg-a": Prediction(n1, "eps", x, n), "neg-b": Prediction(n2, "eps", x, n)}
    d = c - u

    def perp(v):
        return v - rsum(v * d, axes) / rsum(d * d, axes) * d

    per_sample = torch.tensor([0.5, 2.0, 1.0][: c.shape[0]], dtype=c.dtype).reshape(-1, *([1] * (c.ndim - 1)))
    guider = PerpNeg(6.0, negatives={"neg-a": 1.5, "neg-b": per_sample})
    assert guider.branches(step) == ("cond", "uncond", "neg-a", "neg-b")
    ref = u + 6.0 * (d - 1.5 * perp(n1 - u) - per_sample * perp(n2 - u))
    check(guider.combine(preds, step), ref, step)
    # a negative parallel to the positive direction changes nothing (only its perpendicular part acts)
    parallel = {**preds, "neg-a": Prediction(u + 0.7 * d, "eps", x, n)}
    check(PerpNeg(6.0, negatives={"neg-a": 3.0}).combine(parallel, step), u + 6.0 * d, step)
    # threestudio writes u + w (d + sum w_i perp) with negative weights: the same rule with w_i negated
    ts = u + 6.0 * (d + (-1.5) * perp(n1 - u))
    check(PerpNeg(6.0, negatives={"neg-a": 1.5}).combine(preds, step), ts, step)
    # ComfyUI's PerpNegGuider works on denoised predictions: space="x0"
    cx, ux, nx = (to_kind(v, "x0", x, n) for v in (c, u, n1))
    dx = cx - ux
    refx = ux + 6.0 * (dx - (nx - ux - rsum((nx - ux) * dx, axes) / rsum(dx * dx, axes) * dx))
    check(PerpNeg(6.0, negatives={"neg-a": 1.0}, space="x0").combine(preds, step), eps_from(refx, "x0", x, n), step)


def test_perp_neg_config_errors():
    with pytest.raises(ConfigError, match="negatives.uncond: a negative cannot be"):
        PerpNeg(negatives={"uncond": 1.0})
    with pytest.raises(ConfigError, match="negatives: give at least one"):
        PerpNeg(negatives={})


# -- FreSca -----------------------------------------------------------------------------------------------
def comfy_fourier_filter(x, low, high, cutoff, dims):
    """ComfyUI nodes_fresca.py Fourier_filter, generalised from (-2, -1) to ``dims``."""
    spec = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    mask = torch.full(x.shape, high, dtype=x.dtype)
    index = [slice(None)] * x.ndim
    for d in dims:
        centre = x.shape[d] // 2
        index[d] = slice(centre - cutoff, centre + cutoff)
    mask[tuple(index)] = low
    return torch.fft.ifftn(torch.fft.ifftshift(spec * mask, dim=dims), dim=dims).real


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fresca_matches_comfyui_filter(layout):
    step, preds, c, u = setup(layout)
    dims = step.axes.frequency
    filtered = comfy_fourier_filter(c - u, 0.8, 1.4, 2, dims)
    check(FreSca(5.0, scale_low=0.8, scale_high=1.4, cutoff=2).combine(preds, step), u + 5.0 * filtered, step)
    # low = high = 1 is CFG; at w = 1 it is the conditional prediction and costs one pass
    check(FreSca(5.0, scale_low=1.0, scale_high=1.0).combine(preds, step), u + 5.0 * (c - u), step)
    assert FreSca(1.0, scale_low=1.0, scale_high=1.0).branches(step) == ("cond",)
    assert FreSca(1.0).branches(step) == ("cond", "uncond")


# -- CFG normalisation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["BCT", "BCHW", "BCFHW"])
def test_cfg_norm_per_channel_vector_in_x0(layout):
    """ComfyUI CFGNorm: g * strength * clamp(||c||_C / (||g||_C + 1e-8), 0, 1) on denoised predictions."""
    step, preds, c, u = setup(layout)
    x, n = step.x, step.noise
    cx, ux = to_kind(c, "x0", x, n), to_kind(u, "x0", x, n)
    g = ux + 6.0 * (cx - ux)
    ratio = (cx.norm(dim=1, keepdim=True) / (g.norm(dim=1, keepdim=True) + 1e-8)).clamp(0, 1)
    check(CFGNorm(6.0, strength=0.9).combine(preds, step), eps_from(0.9 * g * ratio, "x0", x, n), step)
    # the exact renormalisation (Qwen-Image) over the whole sample, in flow space
    cf, uf = to_kind(c, "flow", x, n), to_kind(u, "flow", x, n)
    gf = uf + 6.0 * (cf - uf)
    ref = gf * rnorm(cf, step.axes) / (rnorm(gf, step.axes) + 1e-8)
    exact = CFGNorm(6.0, clamp=False, norm="sample", space="flow")
    check(exact.combine(preds, step), eps_from(ref, "flow", x, n), step)


def test_cfg_norm_needs_a_channel_letter():
    step, preds, _, _ = setup("BCT")
    bad = GuidanceStep(step.x, step.noise, None, 1, 4, axes=None)
    from omniguide.core import Axes

    bad.axes = Axes((1, 2))
    with pytest.raises(GuidanceError, match="norm='channel' needs a layout with a channel letter"):
        CFGNorm(4.0).combine(preds, bad)


# -- ICG ----------------------------------------------------------------------------------------------------
def test_icg_draws_an_independent_condition_every_step():
    """ICG (arXiv:2407.02687): D(y^) + w (D(y) - D(y^)), y^ a random condition redrawn at every step
    (App. G), one row index per sample for every pooled input; reproducible from its seed."""
    seen = []

    def model(sample, t, labels, embeds):
        seen.append((labels.clone(), embeds.clone()))
        return sample * 0 + labels.double().reshape(-1, 1) + embeds.sum(-1, keepdim=True)

    pool_labels = torch.tensor([5, 6, 7, 8])
    pool_embeds = torch.arange(4 * 3, dtype=torch.float64).reshape(4, 3)
    guider = ICG(2.0, pool={"labels": pool_labels, "embeds": pool_embeds}, seed=7)
    x = torch.zeros(6, 2, dtype=torch.float64)
    table = {"cond": {"labels": torch.zeros(6, dtype=torch.long), "embeds": torch.zeros(6, 3, dtype=torch.float64)}}
    executor = BranchExecutor(model, table, "eps", batch=False, defaults=guider.branch_defaults())
    noise = NoiseLevel.vp(torch.tensor(0.5))
    draws = []
    for i in range(3):
        step = GuidanceStep(x, noise, 10, i, 3, None)
        seen.clear()
        preds = executor(guider.branches(step), x, 10, step)
        labels, embeds = seen[1]
        rows = labels - 5
        torch.testing.assert_close(embeds, pool_embeds[rows])          # the same row for both inputs
        draws.append(labels)
        u = preds["independent"].value
        torch.testing.assert_close(guider.combine(preds, step).eps, u + 2.0 * (preds["cond"].value - u))
    assert not all(torch.equal(draws[0], d) for d in draws[1:])       # a fresh draw each step
    guider.reset()                                                      # same seed, same draws
    step = GuidanceStep(x, noise, 10, 0, 3, None)
    seen.clear()
    executor(guider.branches(step), x, 10, step)
    torch.testing.assert_close(seen[1][0], draws[0])


def test_icg_gaussian_condition_has_the_conditional_std():
    torch.manual_seed(0)
    cond = torch.randn(4, 7, 16, dtype=torch.float64) * 3.0
    guider = ICG(3.0, gaussian=("encoder_hidden_states",))
    draw = guider.branch_defaults()["independent"].draw
    step = GuidanceStep(torch.zeros(4, 2), NoiseLevel.vp(torch.tensor(0.5)), 1, 0, 2, None)
    out = draw(step, {"encoder_hidden_states": cond})["encoder_hidden_states"]
    assert out.shape == cond.shape and not torch.equal(out, cond)
    assert abs(float(out.std()) / float(cond.std()) - 1) < 0.1
    with pytest.raises(GuidanceError, match="icg: input 'labels' of the conditional branch is not a float tensor"):
        ICG(3.0, gaussian=("labels",)).branch_defaults()["independent"].draw(step, {"labels": torch.zeros(4).long()})
    with pytest.raises(ConfigError, match="same number of rows"):
        ICG(pool={"a": [1, 2], "b": [1, 2, 3]})


# -- prior guidance ------------------------------------------------------------------------------------------
def test_prior_guidance_takes_the_unconditional_prediction_from_the_base_model():
    """arXiv:2503.20240: u_base + w (c - u_base); the base model may predict another parameterization."""
    x = torch.randn(3, 4, dtype=torch.float64)
    noise = NoiseLevel.vp(torch.tensor(0.6))
    fine = lambda s, t, label: s * 0.1 + label.double().reshape(-1, 1)        # noqa: E731  eps model
    base = lambda s, t, label: s * 0.3 - label.double().reshape(-1, 1)        # noqa: E731  x0 model
    guider = PriorGuidance(3.0, base_model=base)
    table = {"cond": {"label": torch.ones(3, dtype=torch.long)}, "uncond": {"label": torch.zeros(3, dtype=torch.long)},
             "prior": Branch("prior", base="uncond", model=base, parameterization="x0")}
    executor = BranchExecutor(fine, table, "eps")
    step = GuidanceStep(x, noise, 5, 0, 2, None)
    preds = executor(guider.branches(step), x, 5, step)
    assert set(preds) == {"cond", "prior"}
    u_base = (x - noise.alpha * base(x, 5, torch.zeros(3, dtype=torch.long))) / noise.sigma   # x0 -> eps
    c = fine(x, 5, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(guider.combine(preds, step).eps, u_base + 3.0 * (c - u_base))
    assert "base_model" not in guider.config() and guider.branch_defaults()["prior"].base == "uncond"


# -- residual CFG ---------------------------------------------------------------------------------------------
def test_residual_cfg_carries_the_virtual_residual_noise():
    """StreamDiffusion RCFG: u_i = delta (x_i - alpha_i x0_{i-1}) / sigma_i, one pass per step (self);
    the onetime mode evaluates the negative once, at step 0."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 3, 4, dtype=torch.float64, generator=g) for _ in range(3)]
    levels = [NoiseLevel.vp(torch.tensor(a, dtype=torch.float64)) for a in (0.2, 0.5, 0.8)]
    cs = [torch.randn(2, 3, 4, dtype=torch.float64, generator=g) for _ in range(3)]
    u0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    for mode in ("self", "onetime"):
        guider = ResidualCFG(1.5, delta=0.9, mode=mode)
        previous = None
        for i, (x, n, c) in enumerate(zip(xs, levels, cs)):
            step = GuidanceStep(x, n, None, i, 3, None)
            want = ("cond", "uncond") if (mode == "onetime" and i == 0) else ("cond",)
            assert guider.branches(step) == want
            preds = {"cond": Prediction(c, "eps", x, n), "uncond": Prediction(u0, "eps", x, n)}
            if previous is None:
                bar = u0 if mode == "onetime" else x / n.sigma
            else:
                bar = (x - n.alpha * previous) / n.sigma
            ref = 0.9 * bar + 1.5 * (c - 0.9 * bar)
            out = guider.combine(preds, step)
            check(out, ref, step)
            previous = x0_from_eps(ref, x, n)


def test_residual_cfg_after_a_ddim_step_is_the_previous_guided_noise():
    """For deterministic DDIM, eps_bar_{i+1} = the previous step's guided noise exactly."""
    x = torch.randn(2, 5, dtype=torch.float64)
    a, b = NoiseLevel.vp(torch.tensor(0.3, dtype=torch.float64)), NoiseLevel.vp(torch.tensor(0.7, dtype=torch.float64))
    guider = ResidualCFG(2.0)
    out = guider.combine({"cond": Prediction(x * 0.5, "eps", x, a)}, GuidanceStep(x, a, None, 0, 2, None))
    x_next = b.alpha * out.x0 + b.sigma * out.eps
    c = torch.randn(2, 5, dtype=torch.float64)
    out2 = guider.combine({"cond": Prediction(c, "eps", x_next, b)}, GuidanceStep(x_next, b, None, 1, 2, None))
    torch.testing.assert_close(out2.eps, out.eps + 2.0 * (c - out.eps))


# -- configs round-trip ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    {"name": "momentum", "scale": 3.0, "momentum": 0.4, "ema": 0.5},
    {"name": "smc-cfg", "scale": 4.0, "surface": 5.0, "force": 0.2},
    {"name": "magnitude-aware", "scale": 8.0, "alpha": 4.0},
    {"name": "perp-neg", "scale": 5.0, "negatives": {"back": 1.0, "side": 0.5}},
    {"name": "fresca", "scale": 5.0, "scale_high": 1.5, "cutoff": 4},
    {"name": "cfg-norm", "scale": 5.0, "clamp": False},
    {"name": "icg", "scale": 2.0, "pool": {"labels": [0, 1, 2]}},
    {"name": "residual-cfg", "scale": 1.5, "mode": "onetime"},
    {"name": "scorer-guidance", "scale": 0.5, "scorer": {"name": "mixture-class", "label": 1}, "recurrence_steps": 2},
    {"name": "gfcg", "gfcg_scale": 2.0, "classifier": {"name": "mixture-classifier"}, "target": 1},
    {"name": "scale-search", "scale": 6.0, "evaluator": {"name": "mixture-density", "label": 0}},
    {"name": "tsg", "noise": 2.0, "t": [0.2, 0.9]},
    {"name": "nag", "nag_scale": 3.0, "layers": ["transformer_blocks.0.attn2"]},
    {"name": "vsf", "vsf_scale": 2.0}, {"name": "pladis", "sparse": "sparsemax"}, {"name": "sag", "sag_scale": 0.5},
    {"name": "tpg", "perturbed_scale": 2.0}, {"name": "s2-guidance", "s2_form": "subtract"},
])
def test_new_guiders_round_trip_through_configs(cfg):
    guider = build_guider(cfg)
    again = build_guider(guider.config())
    assert again.config() == guider.config()


def test_momentum_math_constant():
    assert math.isclose(Momentum().ema, 0.6) and Momentum().momentum == 0.5   # the reference node's defaults
