"""Golden tests: every guider against its paper's formula, re-derived here from the formula (plain
torch on random float64 tensors, never the implementation's helpers), on 3-, 4- and 5-D samples
with declared axes (audio ``BCT``, image ``BCHW``, video ``BCFHW`` pooled and per frame)."""

import math

import pytest
import torch

from omniguide.core import (
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
    GuidanceError,
    GuidanceStep,
    Interval,
    NoiseLevel,
    Prediction,
    Schedule,
    Terms,
)

LAYOUTS = {
    "BCT": ((3, 4, 16), Axes.from_layout("BCT")),
    "BCHW": ((3, 2, 8, 8), Axes.from_layout("BCHW")),
    "BCFHW": ((2, 2, 3, 8, 8), Axes.from_layout("BCFHW")),
    "BCFHW/frame": ((2, 2, 3, 8, 8), Axes.from_layout("BCFHW", per_frame=True)),
}


# -- the reference toolkit: plain torch, written from the definitions -------------------------
def rsum(a, axes):
    return a.sum(dim=axes.reduce, keepdim=True)


def rnorm(a, axes):
    return rsum(a * a, axes).sqrt()


def x0_from_eps(eps, x, n):
    return (x - n.sigma * eps) / n.alpha


def eps_from(value, kind, x, n):
    """eps from a ``kind`` prediction (x = alpha x0 + sigma eps, v = alpha eps - sigma x0, flow = eps - x0)"""
    a, s = n.alpha, n.sigma
    if kind == "eps":
        return value
    if kind == "x0":
        return (x - a * value) / s
    if kind == "v":
        return (s * x + a * value) / (a * a + s * s)
    if kind == "flow":
        return (x + a * value) / (a + s)
    raise AssertionError(kind)


def to_kind(eps, kind, x, n):
    x0 = x0_from_eps(eps, x, n)
    return {"eps": eps, "x0": x0, "v": n.alpha * eps - n.sigma * x0, "flow": eps - x0}[kind]


def setup(layout, seed=0, index=5, num_steps=10):
    shape, axes = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    abar = torch.rand(shape[0], *([1] * (len(shape) - 1)), dtype=torch.float64, generator=g) * 0.8 + 0.1
    noise = NoiseLevel.vp(abar, t=1 - abar)
    c = torch.randn(shape, dtype=torch.float64, generator=g)
    u = c + 0.7 * torch.randn(shape, dtype=torch.float64, generator=g)
    step = GuidanceStep(x, noise, None, index, num_steps, axes)
    preds = {"cond": Prediction(c, "eps", x, noise), "uncond": Prediction(u, "eps", x, noise)}
    return step, preds, c, u


def at(step, index):
    return GuidanceStep(step.x, step.noise, None, index, step.num_steps, step.axes)


def check(result, eps_ref, step, tol=1e-9):
    torch.testing.assert_close(result.eps, eps_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(result.x0, x0_from_eps(eps_ref, step.x, step.noise), rtol=tol, atol=tol)


def rows(a, axes):
    """``a`` as a matrix with one row per (sample, kept dim), the reduced dims flattened."""
    kept = [d for d in range(a.ndim) if d not in axes.reduce]
    perm = a.permute(*kept, *axes.reduce)
    return perm.reshape(math.prod(perm.shape[: len(kept)]), -1), perm.shape, kept


def unrows(m, shape, kept, ndim):
    order = [*kept, *[d for d in range(ndim) if d not in kept]]
    return m.reshape(shape).permute(*[order.index(d) for d in range(ndim)])


# -- foundation methods ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cfg_both_forms(layout):
    step, preds, c, u = setup(layout)
    check(CFG(4.0).combine(preds, step), u + 4.0 * (c - u), step)
    check(CFG(3.0, form="c+w(c-u)").combine(preds, step), c + 3.0 * (c - u), step)
    assert CFG(1.0).branches(step) == ("cond",) and CFG(0.0, form="c+w(c-u)").branches(step) == ("cond",)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cfg_rescale_in_v_space(layout):
    """Lin et al. 2023: g = u + w(c - u) in v; g_r = g std(c)/std(g) (unbiased, over the axes)."""
    step, preds, c, u = setup(layout)
    x, n, axes = step.x, step.noise, step.axes
    cv, uv = to_kind(c, "v", x, n), to_kind(u, "v", x, n)
    g = uv + 5.0 * (cv - uv)
    cnt = math.prod(x.shape[d] for d in axes.reduce)

    def sd(a):
        return (rsum((a - rsum(a, axes) / cnt) ** 2, axes) / (cnt - 1)).sqrt()

    ref = 0.7 * g * sd(cv) / sd(g) + 0.3 * g
    check(CFGRescale(5.0, rescale=0.7).combine(preds, step), eps_from(ref, "v", x, n), step)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cfg_plus_plus(layout):
    """Chung et al. 2024: x0 from eps_l = u + l(c - u); the noise estimate stays u."""
    step, preds, c, u = setup(layout)
    out = CFGPlusPlus(0.6).combine(preds, step)
    torch.testing.assert_close(out.x0, x0_from_eps(u + 0.6 * (c - u), step.x, step.noise))
    torch.testing.assert_close(out.eps, u)
    assert not out.consistent


@pytest.mark.parametrize("layout", ["BCT", "BCFHW"])
def test_interval_and_schedule(layout):
    step, preds, c, u = setup(layout)
    t = 1 - step.noise.alpha**2  # setup: t = 1 - abar
    inside = ((t >= 0.3) & (t <= 0.6)).to(c.dtype)
    ref = inside * (u + 4.0 * (c - u)) + (1 - inside) * c
    check(Interval(CFG(4.0), t=(0.3, 0.6)).combine(preds, step), ref, step)
    # CFG++ inside, guidance off outside: the conditional prediction (arXiv:2404.07724), not l = 0's u
    out = Interval(CFGPlusPlus(0.6), t=(0.3, 0.6)).combine(preds, step)
    assert 0 < inside.sum() < inside.numel()
    torch.testing.assert_close(out.x0, inside * x0_from_eps(u + 0.6 * (c - u), step.x, step.noise)
                               + (1 - inside) * x0_from_eps(c, step.x, step.noise))
    torch.testing.assert_close(out.eps, inside * u + (1 - inside) * c)
    abar = torch.full_like(step.noise.alpha, 0.95)                      # t = 0.05 for every sample
    off = GuidanceStep(step.x, NoiseLevel.vp(abar, t=1 - abar), None, 5, 10, step.axes)
    assert Interval(CFGPlusPlus(0.6), t=(0.3, 0.6)).branches(off) == ("cond",)
    for shape, f in (("linear", 2 * (1 - t)), ("cosine", torch.cos(math.pi * t) + 1)):
        w = 1 + (4.0 - 1) * f
        check(Schedule(CFG(4.0), shape).combine(preds, step), u + w * (c - u), step)


# -- APG ----------------------------------------------------------------------------------------
def apg_reference(c, u, w, axes, eta=0.0, r=0.0, form="c+(w-1)*upd", buf=None, beta=0.0):
    d = c - u
    if beta:
        d = d + beta * buf
        buf = d
    if r > 0:
        d = d * torch.clamp(r / rnorm(d, axes), max=1.0)
    chat = c / rnorm(c, axes)
    par = rsum(d * chat, axes) * chat
    upd = (d - par) + eta * par
    out = {"c+(w-1)*upd": c + (w - 1) * upd, "u+w*upd": u + w * upd, "c+w*upd": c + w * upd}[form]
    return out, buf


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", ["c+(w-1)*upd", "u+w*upd", "c+w*upd"])
def test_apg_forms_in_x0(layout, form):
    step, preds, c, u = setup(layout)
    x, n = step.x, step.noise
    cx, ux = to_kind(c, "x0", x, n), to_kind(u, "x0", x, n)
    ref, _ = apg_reference(cx, ux, 6.0, step.axes, eta=0.3, r=2.0, form=form)
    check(
        APG(6.0, eta=0.3, norm_threshold=2.0, form=form).combine(preds, step),
        eps_from(ref, "x0", x, n),
        step,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apg_momentum_over_steps_and_reset(layout):
    step, preds, c, u = setup(layout)
    g = APG(5.0, momentum=-0.5, norm_threshold=3.0, space=None)
    buf = torch.zeros_like(c)
    seq = []
    for i in range(3):
        ci, ui = c * (1 + 0.1 * i), u - 0.05 * i
        p = {"cond": preds["cond"].with_value(ci), "uncond": preds["uncond"].with_value(ui)}
        ref, buf = apg_reference(ci, ui, 5.0, step.axes, r=3.0, buf=buf, beta=-0.5)
        seq.append((p, ref))
        check(g.combine(p, at(step, i + 1)), ref, step)
    g.reset()  # a new run starts from an empty buffer: the first step equals momentum-free APG
    p0, _ = seq[0]
    ref0, _ = apg_reference(c, u, 5.0, step.axes, r=3.0)
    check(g.combine(p0, at(step, 1)), ref0, step)


def test_apg_refuses_momentum_without_step_index():
    step, preds, *_ = setup("BCHW", index=None)
    APG(5.0).combine(preds, step)  # momentum 0 works for distillation
    with pytest.raises(GuidanceError, match="momentum"):
        APG(5.0, momentum=-0.5).combine(preds, step)


def test_apg_diffusers_form_differs_from_paper():
    """diffusers' u + w upd is not the paper's c + (w - 1) upd once upd != c - u (eta < 1)."""
    step, preds, *_ = setup("BCHW")
    a = APG(5.0, eta=0.0, form="c+(w-1)*upd").combine(preds, step).eps
    b = APG(5.0, eta=0.0, form="u+w*upd").combine(preds, step).eps
    assert (a - b).abs().max() > 1e-2
    c = APG(5.0, eta=1.0, form="c+(w-1)*upd").combine(preds, step).eps
    d = APG(5.0, eta=1.0, form="u+w*upd").combine(preds, step).eps
    torch.testing.assert_close(c, d)  # eta = 1, no threshold, no momentum: both are CFG


@pytest.mark.parametrize("old,new", [("paper", "c+(w-1)*upd"), ("diffusers", "u+w*upd"), ("comfyui", "c+w*upd")])
def test_apg_forms_are_named_by_formula_and_the_library_names_are_aliases(old, new):
    from omniguide.core.registry import build_guider

    step, preds, *_ = setup("BCHW")
    assert APG(form=old).form == new and build_guider({"name": "apg", "form": old}).form == new
    torch.testing.assert_close(APG(5.0, eta=0.3, form=old).combine(preds, step).eps,
                               APG(5.0, eta=0.3, form=new).combine(preds, step).eps)
    assert APG().form == "c+(w-1)*upd"
    with pytest.raises(Exception, match=r"unknown form 'u\+w\(c-u\)'; valid: c\+\(w-1\)\*upd, u\+w\*upd"):
        APG(form="u+w(c-u)")


# -- TCFG ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tcfg_against_svd(layout):
    step, preds, c, u = setup(layout)
    cm, shape, kept = rows(c, step.axes)
    um, _, _ = rows(u, step.axes)
    _, _, vh = torch.linalg.svd(torch.stack([cm, um], 1), full_matrices=False)  # [rows, 2, N]
    v1 = vh[:, 0]
    u_proj = unrows((um * v1).sum(-1, keepdim=True) * v1, shape, kept, c.ndim)
    check(TCFG(4.0).combine(preds, step), u_proj + 4.0 * (c - u_proj), step)


# -- CFG-Zero* --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cfg_zero_star_in_flow_space(layout):
    step, preds, c, u = setup(layout)
    x, n = step.x, step.noise
    cf, uf = to_kind(c, "flow", x, n), to_kind(u, "flow", x, n)
    s = rsum(cf * uf, step.axes) / (rsum(uf * uf, step.axes) + 1e-8)
    ref = s * uf + 4.0 * (cf - s * uf)
    check(CFGZeroStar(4.0).combine(preds, step), eps_from(ref, "flow", x, n), step)
    ref_orig = cf + 4.0 * (cf - s * uf)
    check(CFGZeroStar(4.0, form="c+w(c-u)").combine(preds, step), eps_from(ref_orig, "flow", x, n), step)


def test_cfg_zero_star_zero_init_convention():
    """Zeroed steps: ``index < zero_init_steps`` (diffusers); the reference's ``i <= zero_steps`` with
    zero_steps = k zeroes k + 1 steps, i.e. zero_init_steps = k + 1. Zeroed steps need no model pass."""
    step, preds, *_ = setup("BCHW")
    g = CFGZeroStar(4.0, zero_init_steps=2)
    reference_zero_steps = 1  # the reference repo's parameter: zeroes i <= 1
    for i in range(4):
        zeroed_by_reference = i <= reference_zero_steps
        assert (g.branches(at(step, i)) == ()) == zeroed_by_reference
        out = g.combine({} if zeroed_by_reference else preds, at(step, i))
        flow = eps_from(torch.zeros_like(step.x), "flow", step.x, step.noise)
        assert torch.allclose(out.eps, flow) == zeroed_by_reference
    assert CFGZeroStar(4.0, zero_init_steps=0).branches(at(step, 0)) == ("cond", "uncond")
    assert CFGZeroStar(4.0, space=None).branches(at(step, 0)) == ("cond",)  # learns the model's kind
    torch.testing.assert_close(
        CFGZeroStar(4.0, space=None).combine(preds, at(step, 0)).eps, torch.zeros_like(step.x)
    )


# -- FDG ----------------------------------------------------------------------------------------
def blur_matrix(n):
    k = torch.tensor([1, 4, 6, 4, 1], dtype=torch.float64) / 16
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j, kj in zip(range(i - 2, i + 3), k):
            m[i, abs(j) if j < n else 2 * (n - 1) - j] += kj  # reflect about the edge sample
    return m


def down_matrix(n):
    """Blur, then the mean of each pair (bilinear halving with align_corners=False): n/2 x n."""
    return 0.5 * (blur_matrix(n)[0::2] + blur_matrix(n)[1::2])


def up_matrix(h):
    """Linear doubling (weights 3/4, 1/4; edges clamped), then blur: 2h x h."""
    up = torch.zeros(2 * h, h, dtype=torch.float64)
    for k in range(h):
        up[2 * k, k] += 0.75
        up[2 * k, max(k - 1, 0)] += 0.25
        up[2 * k + 1, k] += 0.75
        up[2 * k + 1, min(k + 1, h - 1)] += 0.25
    return blur_matrix(2 * h) @ up


def pyramid_lowpass(n):
    """One level down and back up along one axis, as a matrix."""
    return up_matrix(n // 2) @ down_matrix(n)


def apply_along(a, dims, mat_of):
    for d in dims:
        a = torch.movedim(torch.movedim(a, d, -1) @ mat_of(a.shape[d]).T, -1, d)
    return a


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fdg_pyramid_two_bands(layout):
    """Two-level Laplacian pyramid: low = L(c - u) with L = up(down(.)); high = rest."""
    step, preds, c, u = setup(layout)
    d = c - u
    low = apply_along(d, step.axes.frequency, pyramid_lowpass)
    ref = u + 3.0 * low + 9.0 * (d - low)
    check(FDG(3.0, 9.0).combine(preds, step), ref, step)
    check(FDG(4.0, 4.0).combine(preds, step), u + 4.0 * d, step)  # equal scales: CFG


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fdg_fft_bands_and_parallel_weight(layout):
    step, preds, c, u = setup(layout)
    dims = step.axes.frequency

    def lowpass(a):
        radius = torch.zeros(())
        for d in dims:
            f = (
                torch.tensor(
                    [
                        (k if k < (a.shape[d] + 1) // 2 else k - a.shape[d]) / a.shape[d]
                        for k in range(a.shape[d])
                    ],
                    dtype=torch.float64,
                )
                / 0.5
            )
            radius = radius + f.reshape([-1 if i == d else 1 for i in range(a.ndim)]) ** 2
        return torch.fft.ifftn(torch.fft.fftn(a, dim=dims) * (radius.sqrt() <= 0.3), dim=dims).real

    cl, ul = lowpass(c), lowpass(u)
    ch, uh = c - cl, u - ul
    out = []
    for ck, uk, w in ((ch, uh, 8.0), (cl, ul, 2.0)):
        dk = ck - uk
        chat = ck / rnorm(ck, step.axes)
        par = rsum(dk * chat, step.axes) * chat
        out.append(uk + w * (0.5 * par + (dk - par)))
    check(
        FDG(2.0, 8.0, transform="fft", cutoff=0.3, parallel_weight=0.5).combine(preds, step), sum(out), step
    )


def test_fdg_three_levels_and_padding():
    """Three levels (bands: d - U0 D0 d, U0 (D0 d - U1 D1 D0 d), U0 U1 D1 D0 d); an odd length is
    reflect-padded to even, guided, and cropped back."""
    step, preds, c, u = setup("BCT")
    d = c - u
    n = d.shape[-1]
    d0, d1, u0, u1 = down_matrix(n), down_matrix(n // 2), up_matrix(n // 2), up_matrix(n // 4)
    low = d @ (u0 @ u1 @ d1 @ d0).T
    mid = d @ (u0 @ d0).T - low
    ref = u + 2.0 * low + 4.0 * mid + 8.0 * (d - mid - low)
    check(FDG(2.0, (8.0, 4.0), levels=3).combine(preds, step), ref, step)

    odd = GuidanceStep(step.x[..., :13], step.noise, None, 1, 10, step.axes)
    p = {k: Prediction(v.value[..., :13], "eps", odd.x, odd.noise) for k, v in preds.items()}
    dd = d[..., :13]
    padded = torch.cat([dd, dd[..., 11:12]], -1)  # reflect about the last sample: x[13] = x[11]
    low = (padded @ pyramid_lowpass(14).T)[..., :13]
    check(FDG(3.0, 9.0).combine(p, odd), u[..., :13] + 3.0 * low + 9.0 * (dd - low), odd)


# -- adaptive -----------------------------------------------------------------------------------
def test_adaptive_stops_uncond_once_all_agree():
    step, preds, c, u = setup("BCHW")
    axes = step.axes
    g = Adaptive(CFG(4.0), threshold=0.9, space=None)  # cosine on the model's eps here
    near = c + 0.01 * (u - c)
    # per step, which samples get an uncond close to cond: sample 0 agrees at step 1 and stays
    # agreed although it drifts away again at step 2 (agreement is sticky); 1 and 2 agree at step 2
    close = [(0, 0, 0), (1, 0, 0), (0, 1, 1)]
    for i, flags in enumerate(close):
        s = at(step, i)
        assert g.branches(s) == ("cond", "uncond"), i
        un = torch.stack([near[k] if f else u[k] for k, f in enumerate(flags)])
        out = g.combine({**preds, "uncond": preds["uncond"].with_value(un)}, s)
        cos = rsum(c * un, axes) / (rnorm(c, axes) * rnorm(un, axes))
        assert (cos >= 0.9).flatten().tolist() == [bool(f) for f in flags]
        agreed_before = torch.tensor([i >= 2, False, False], dtype=torch.float64).reshape(3, 1, 1, 1)
        check(out, agreed_before * c + (1 - agreed_before) * (un + 4.0 * (c - un)), step)
    assert g.branches(at(step, 3)) == ("cond",)  # everyone agreed: one pass from now on
    check(g.combine({"cond": preds["cond"]}, at(step, 3)), c, step)
    g.reset()
    assert g.branches(at(step, 4)) == ("cond", "uncond")
    with pytest.raises(GuidanceError, match="step index"):
        g.branches(GuidanceStep(step.x, step.noise, None, None, None, axes))


# -- cfg-cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["BCT", "BCHW", "BCFHW"])
def test_cfg_cache_reuses_residual(layout):
    step, preds, c, u = setup(layout)
    g = CFGCache(4.0, every=3)
    needs = [g.branches(at(step, i)) for i in range(1)]
    assert needs == [("cond", "uncond")]
    check(g.combine(preds, at(step, 0)), u + 4.0 * (c - u), step)
    for i in (1, 2):
        assert g.branches(at(step, i)) == ("cond",)
        c_new = c * (1 + 0.2 * i)
        out = g.combine({"cond": preds["cond"].with_value(c_new)}, at(step, i))
        check(out, c_new + 3.0 * (c - u), step)  # u + w(c - u) with u = c_new - (c - u)
    assert g.branches(at(step, 3)) == ("cond", "uncond")
    g.reset()
    assert g.branches(at(step, 4)) == ("cond", "uncond")


def test_cfg_cache_low_band_only():
    step, preds, c, u = setup("BCHW")
    g = CFGCache(4.0, every=2, high_weight=0.0, cutoff=0.5)
    g.branches(at(step, 0))
    g.combine(preds, at(step, 0))
    d = c - u
    dims = step.axes.frequency
    f = torch.fft.fftfreq(8, dtype=torch.float64) / 0.5
    mask = (f.reshape(-1, 1) ** 2 + f.reshape(1, -1) ** 2).sqrt() <= 0.5
    low = torch.fft.ifftn(torch.fft.fftn(d, dim=dims) * mask, dim=dims).real
    check(g.combine({"cond": preds["cond"]}, at(step, 1)), c + 3.0 * low, step)


# -- beta-CFG -----------------------------------------------------------------------------------
def beta_pdf(x, a, b):
    return x ** (a - 1) * (1 - x) ** (b - 1) * math.gamma(a + b) / (math.gamma(a) * math.gamma(b))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 0.5])
def test_beta_cfg(layout, gamma):
    step, preds, c, u = setup(layout, index=3, num_steps=11)
    d = c - u
    ref = u + 2.0 * beta_pdf(0.3, 2.0, 3.0) * d / rnorm(d, step.axes) ** gamma
    check(BetaCFG(2.0, a=2.0, b=3.0, gamma=gamma).combine(preds, step), ref, step)
    mode = beta_pdf(1 / 3, 2.0, 3.0)
    ref_n = u + 2.0 * beta_pdf(0.3, 2.0, 3.0) / mode * d / rnorm(d, step.axes) ** gamma
    check(BetaCFG(2.0, gamma=gamma, normalize=True).combine(preds, step), ref_n, step)


def test_beta_cfg_ends_need_only_uncond():
    step, preds, c, u = setup("BCT", index=0, num_steps=11)
    g = BetaCFG(2.0)
    assert g.branches(step) == ("uncond",) and g.branches(at(step, 10)) == ("uncond",)
    check(g.combine({"uncond": preds["uncond"]}, step), u, step)
    # 't' coordinate (distillation): x = 1 - t
    dist = GuidanceStep(step.x, step.noise, None, None, None, step.axes)
    t = 1 - step.noise.alpha**2
    d = c - u
    ref = u + 2.0 * beta_pdf(1 - t, 2.0, 3.0) * d / rnorm(d, step.axes)
    check(BetaCFG(2.0, coordinate="t").combine(preds, dist), ref, step)


# -- autoguidance and terms ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_autoguidance_with_weak_model_in_x0(layout):
    """D_w + w (D - D_w); the weak branch may predict another parameterization (here x0)."""
    step, preds, c, _ = setup(layout)
    weak_eps = c + 0.3 * torch.randn(
        c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    weak = Prediction(x0_from_eps(weak_eps, step.x, step.noise), "x0", step.x, step.noise)
    g = AutoGuidance(2.5, weak_model=lambda *a, **k: None)
    assert g.branches(step) == ("cond", "weak") and "weak" in g.branch_defaults()
    assert g.branch_defaults()["weak"].base == "cond"
    check(g.combine({"cond": preds["cond"], "weak": weak}, step), weak_eps + 2.5 * (c - weak_eps), step)
    assert "weak_model" not in g.config()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_terms_general_form(layout):
    step, preds, c, u = setup(layout)
    p = c - 0.4 * torch.ones_like(c)
    n = u * 0.5
    allp = {
        **preds,
        "perturbed": Prediction(p, "eps", step.x, step.noise),
        "negative": preds["cond"].with_value(n),
    }
    g = Terms({"uncond": 3.0, "perturbed": {"scale": 2.0}, "negative": {"scale": 1.5, "t": (0.0, 0.01)}})
    t = 1 - step.noise.alpha**2
    assert bool((t > 0.01).all())  # the negative term's window is closed at these noise levels
    assert g.branches(step) == ("cond", "uncond", "perturbed")
    check(g.combine(allp, step), c + 3.0 * (c - u) + 2.0 * (c - p), step)


def test_terms_special_cases_cfg_and_pag():
    """CFG is Terms({uncond: w - 1}); PAG/SLG/SEG with CFG is c + (w - 1)(c - u) + s (c - p)."""
    step, preds, c, u = setup("BCHW")
    check(Terms({"uncond": 6.0}).combine(preds, step), CFG(7.0).combine(preds, step).eps, step)
    p = c + 0.2 * torch.randn(c.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    allp = {**preds, "perturbed": preds["cond"].with_value(p)}
    ref = u + 7.0 * (c - u) + 3.0 * (c - p)  # diffusers' PAG: u + w(c - u) + s(c - p)
    check(Terms({"uncond": 6.0, "perturbed": 3.0}).combine(allp, step), ref, step)
    assert Terms({"uncond": 0.0, "perturbed": 3.0}).branches(step) == ("cond", "perturbed")
    # a per-term schedule (neutral 0): linear shape 2(1 - t)
    t = 1 - step.noise.alpha**2
    g = Terms({"uncond": {"scale": 6.0, "shape": "linear"}})
    check(g.combine(preds, step), c + 6.0 * 2 * (1 - t) * (c - u), step)
