"""Side by side with ``diffusers.guiders`` (0.42): same inputs, the documented convention mapping
(docs/methods.md), agreement to 1e-5 where the formulas agree, and pinned differences where
diffusers deviates from the paper.

Mapping: diffusers guiders work on the model's own output (``space=None`` here) and reduce over
all non-batch dims (``axes="BCHW"`` here for 4-D samples)."""

import logging

import pytest
import torch

from omniguide.core import APG, CFG, FDG, TCFG, CFGZeroStar, GuidanceStep, NoiseLevel, Prediction
from omniguide.core.axes import as_axes

guiders = pytest.importorskip("diffusers.guiders")
logging.getLogger("diffusers").setLevel(logging.ERROR)  # "guiders are experimental" on every construction

TOL = dict(rtol=1e-5, atol=1e-5)


def inputs(shape=(2, 4, 16, 16), seed=0, layout="BCHW", index=3, num_steps=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    noise = NoiseLevel.vp(torch.tensor(0.5))
    c = torch.randn(shape, generator=g)
    u = c + 0.5 * torch.randn(shape, generator=g)
    step = GuidanceStep(x, noise, None, index, num_steps, as_axes(layout))
    return step, {"cond": Prediction(c, "eps", x, noise), "uncond": Prediction(u, "eps", x, noise)}, c, u


def run_diffusers(guider, c, u, step=3, num_steps=10):
    guider.set_state(step=step, num_inference_steps=num_steps, timestep=torch.tensor(500))
    return guider.forward(c, u).pred


@pytest.mark.parametrize("original", [False, True])
def test_cfg(original):
    step, preds, c, u = inputs()
    ref = run_diffusers(
        guiders.ClassifierFreeGuidance(guidance_scale=6.0, use_original_formulation=original), c, u
    )
    form = "c+w(c-u)" if original else "u+w(c-u)"
    torch.testing.assert_close(CFG(6.0, form=form).combine(preds, step).eps, ref, **TOL)


@pytest.mark.parametrize("eta,threshold", [(1.0, 15.0), (0.0, 5.0), (0.3, 0.0)])
@pytest.mark.parametrize("original", [False, True])
def test_apg_forms(eta, threshold, original):
    step, preds, c, u = inputs()
    ref = run_diffusers(
        guiders.AdaptiveProjectedGuidance(
            guidance_scale=6.0,
            adaptive_projected_guidance_rescale=threshold,
            eta=eta,
            use_original_formulation=original,
        ),
        c,
        u,
    )
    ours = APG(
        6.0, eta=eta, norm_threshold=threshold, form="c+w*upd" if original else "u+w*upd", space=None
    )
    torch.testing.assert_close(ours.combine(preds, step).eps, ref, **TOL)


def test_apg_paper_form_is_diffusers_original_with_w_minus_1():
    """diffusers' default u + w upd deviates from the paper's c + (w - 1) upd; the paper is
    diffusers(use_original_formulation=True, guidance_scale=w - 1) (what its ACE-Step pipeline does)."""
    step, preds, c, u = inputs()
    paper = APG(6.0, eta=0.0, norm_threshold=5.0, space=None).combine(preds, step).eps
    shifted = run_diffusers(
        guiders.AdaptiveProjectedGuidance(
            guidance_scale=5.0,
            adaptive_projected_guidance_rescale=5.0,
            eta=0.0,
            use_original_formulation=True,
        ),
        c,
        u,
    )
    native = run_diffusers(
        guiders.AdaptiveProjectedGuidance(
            guidance_scale=6.0, adaptive_projected_guidance_rescale=5.0, eta=0.0
        ),
        c,
        u,
    )
    torch.testing.assert_close(paper, shifted, **TOL)
    assert (paper - native).abs().max() > 0.1


def test_apg_momentum_over_steps_and_norm_dim():
    """Momentum order (buf = d + beta buf) and a custom norm dim (ACE-Step's (1,) on [B, T, D])."""
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    dg = guiders.AdaptiveProjectedGuidance(
        guidance_scale=4.0,
        adaptive_projected_guidance_momentum=-0.75,
        adaptive_projected_guidance_rescale=2.5,
        adaptive_projected_guidance_norm_dim=(1,),
        eta=0.0,
    )
    ours = APG(4.0, eta=0.0, norm_threshold=2.5, momentum=-0.75, form="u+w*upd", space=None, axes=(1,))
    ours.reset()
    for i in range(4):
        step, preds, c, u = inputs(shape=(2, 12, 6), seed=i, layout=(1,), index=i)
        if i == 0:
            dg.momentum_buffer = MomentumBuffer(-0.75)  # what diffusers' prepare_inputs does at step 0
        torch.testing.assert_close(ours.combine(preds, step).eps, run_diffusers(dg, c, u, step=i), **TOL)


def test_apg_space_mapping():
    """omniguide's default works on x0 (the paper); diffusers on the model output. Converting the
    predictions to x0, running diffusers' update there and converting back gives omniguide's default."""
    from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

    step, preds, c, u = inputs()
    cx, ux = preds["cond"].x0, preds["uncond"].x0
    x0 = normalized_guidance(cx, ux, 5.0, None, 0.0, 4.0, True)  # c + 5 upd = paper with w = 6
    ours = APG(6.0, norm_threshold=4.0).combine(preds, step)
    torch.testing.assert_close(ours.x0, x0, **TOL)
    assert (APG(6.0, norm_threshold=4.0, space=None).combine(preds, step).x0 - x0).abs().max() > 1e-2


@pytest.mark.parametrize("original", [False, True])
def test_tcfg(original):
    step, preds, c, u = inputs()
    ref = run_diffusers(
        guiders.TangentialClassifierFreeGuidance(guidance_scale=5.0, use_original_formulation=original),
        c,
        u,
    )
    form = "c+w(c-u)" if original else "u+w(c-u)"
    assert_within_float32_svd(TCFG(5.0, form=form).combine(preds, step).eps, ref, c, u, 5.0, original)


def assert_within_float32_svd(ours, theirs, c, u, w, original):
    """diffusers runs TCFG's SVD in float32 (it casts even float64 input), and the rounding differs across
    CPUs and thread counts; omniguide's float64 Gram route matches an exact float64 SVD to 1e-9
    (tests/test_methods_golden.py). So the gap is bounded from the conditioning, per sample: a
    backward-stable SVD of ``A = [c; u]`` (n columns) is exact for ``A + E``, ``||E|| <= sqrt(n) eps ||A||``;
    the top right-singular vector turns by ``sin(theta) <= ||E|| / (s1 - s2)`` (Wedin), ``u' = <u, v1> v1``
    moves by ``2 ||u|| sin(theta)``, the output ``w c + (1 - w) u'`` (``c + w (c - u')``) by ``|1 - w|``
    (``w``) times that, plus float32 rounding of the output. A wrong scale or form is off by ~||c - u'||."""
    eps, n = torch.finfo(torch.float32).eps, c[0].numel()
    a = torch.stack([c.flatten(1), u.flatten(1)], 1).double()
    s = torch.linalg.svdvals(a)
    norm_a, norm_c, norm_u = s[:, 0], c.flatten(1).double().norm(dim=1), u.flatten(1).double().norm(dim=1)
    turn = n ** 0.5 * eps * norm_a / (s[:, 0] - s[:, 1])
    bound = (abs(w) if original else abs(1 - w)) * 2 * norm_u * turn + n ** 0.5 * eps * (1 + abs(w)) * (norm_c + norm_u)
    gap = (ours - theirs).flatten(1).double().norm(dim=1)
    assert bool((gap <= bound).all()), f"per-sample gap {gap.tolist()} exceeds the float32 SVD bound {bound.tolist()}"


@pytest.mark.parametrize("original", [False, True])
def test_cfg_zero_star(original):
    step, preds, c, u = inputs()
    dg = guiders.ClassifierFreeZeroStarGuidance(
        guidance_scale=5.0, zero_init_steps=2, use_original_formulation=original
    )
    ours = CFGZeroStar(5.0, zero_init_steps=2, form="c+w(c-u)" if original else "u+w(c-u)", space=None)
    for i in range(4):
        s = GuidanceStep(step.x, step.noise, None, i, 10, step.axes)
        needed = ours.branches(s)
        out = ours.combine({k: preds[k] for k in needed}, s).eps
        torch.testing.assert_close(out, run_diffusers(dg, c, u, step=i), **TOL)
        assert needed == (("cond",) if i < 2 else ("cond", "uncond"))  # diffusers runs both passes there


@pytest.mark.parametrize(
    "scales,parallel,original",
    [
        ((10.0, 5.0), None, False),
        ((8.0, 6.0, 3.0), None, False),
        ((10.0, 5.0), 0.5, False),
        ((9.0, 4.0), None, True),
    ],
)
def test_fdg_against_kornia_pyramid(scales, parallel, original):
    """diffusers' guidance_scales run from the finest band to the coarsest: [w_high, ..., w_low]."""
    pytest.importorskip("kornia")
    step, preds, c, u = inputs(shape=(2, 4, 32, 32))
    dg = guiders.FrequencyDecoupledGuidance(
        guidance_scales=list(scales), parallel_weights=parallel, use_original_formulation=original
    )
    ours = FDG(
        scales[-1],
        tuple(scales[:-1]) if len(scales) > 2 else scales[0],
        levels=len(scales),
        parallel_weight=parallel if parallel is not None else 1.0,
        form="c+w(c-u)" if original else "u+w(c-u)",
    )
    torch.testing.assert_close(ours.combine(preds, step).eps, run_diffusers(dg, c, u), **TOL)


def test_fdg_padding_differs():
    """kornia pads a side that is no power of two up to one, and diffusers returns the padded size;
    omniguide pads to a multiple of 2^(levels-1) and crops back to the sample's size."""
    pytest.importorskip("kornia")
    step, preds, c, u = inputs(shape=(1, 2, 12, 12))
    ref = run_diffusers(guiders.FrequencyDecoupledGuidance(guidance_scales=[10.0, 5.0]), c, u)
    assert ref.shape[-2:] == (16, 16)
    assert FDG(5.0, 10.0).combine(preds, step).eps.shape == c.shape
