"""Perturbed-branch guidance: PAG, SEG and skip-layer on tiny diffusers models (float32, CPU).

References are re-derived here from the papers' formulas, never by calling the implementation:
    PAG   attention(Q, K, V) = V                    -> attn1 output = to_out(to_v(x))
    SEG   queries blurred by a normalised Gaussian with reflect padding; sigma = inf -> mean
    skip  a skipped block's output is its input
    all   pred = u + w (c - u) + s (c - p);  w neutral: c + s (c - p)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import omniguide
from omniguide import PAG, SEG, Interval, NoiseLevel, Schedule, SkipLayer, build_guider
from omniguide.core import Axes, BranchExecutor, ConfigError, GuidanceError, GuidanceStep, ModelCall
from omniguide.core.perturbations import (
    BlurredQueries,
    IdentityAttention,
    SkipBlocks,
    blur_queries,
    token_grid,
)

diffusers = pytest.importorskip("diffusers")
from tiny_models import ToyDiT, tiny_dit, tiny_sd3, tiny_unet  # noqa: E402


# -- tiny models (tests/tiny_models.py) -----------------------------------------------------------
@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def dit():
    return tiny_dit()


def unet_fn(unet):
    """A plain callable around the UNet, described with its module so perturbations can hook it."""
    fn = lambda sample, t, encoder_hidden_states: unet(sample, t, encoder_hidden_states).sample  # noqa: E731
    return ModelCall(fn, module=unet)


def no_hooks_left(root: nn.Module) -> bool:
    return all(
        "forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
        for m in root.modules()
    )


# -- golden: the algebra on 3-, 4- and 5-D samples -----------------------------------------------------
SHAPES = {"BCT": (2, 3, 7), "BCHW": (2, 3, 4, 6), "BCFHW": (2, 3, 2, 4, 6)}


@pytest.mark.parametrize("cls", [PAG, SEG, SkipLayer])
@pytest.mark.parametrize("layout", list(SHAPES))
def test_golden_algebra(cls, layout):
    g = torch.Generator().manual_seed(0)
    shape = SHAPES[layout]
    x, c, u, p = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
    step = GuidanceStep(
        x, NoiseLevel.vp(torch.tensor(0.6, dtype=torch.float64)), 500, 1, 4, Axes.from_layout(layout)
    )
    preds = {
        n: omniguide.Prediction(v, "eps", x, step.noise)
        for n, v in zip(("cond", "uncond", "perturbed"), (c, u, p))
    }
    w, s = 4.0, 2.5

    guider = cls(scale=w, perturbed_scale=s)
    assert guider.branches(step) == ("cond", "uncond", "perturbed")
    torch.testing.assert_close(
        guider.combine(preds, step).eps, u + w * (c - u) + s * (c - p), rtol=0, atol=1e-12
    )

    alone = cls(scale=1.0, perturbed_scale=s)  # CFG off: only cond and perturbed run
    assert alone.branches(step) == ("cond", "perturbed")
    sub = {k: preds[k] for k in ("cond", "perturbed")}
    torch.testing.assert_close(alone.combine(sub, step).eps, c + s * (c - p), rtol=0, atol=1e-12)

    paper = cls(scale=w, perturbed_scale=s, form="c+w(c-u)")
    torch.testing.assert_close(
        paper.combine(preds, step).eps, c + w * (c - u) + s * (c - p), rtol=0, atol=1e-12
    )

    # a tensor scale per sample: sample 1 gets no perturbed term
    per_sample = torch.tensor([s, 0.0], dtype=torch.float64).view(2, *[1] * (len(shape) - 1))
    tensor = cls(scale=w, perturbed_scale=per_sample)
    out = tensor.combine(preds, step).eps
    torch.testing.assert_close(out[0], (u + w * (c - u) + s * (c - p))[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], (u + w * (c - u))[1], rtol=0, atol=1e-12)

    off = cls(scale=1.0, perturbed_scale=0.0)
    assert off.branches(step) == ("cond",)
    torch.testing.assert_close(off.combine({"cond": preds["cond"]}, step).eps, c)


def test_golden_algebra_in_v_space_and_windows():
    """A v-model: the combination is linear, so it equals the same formula on v; the perturbed
    window switches only the perturbed term (CFG stays on)."""
    g = torch.Generator().manual_seed(1)
    x, c, u, p = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) for _ in range(4))
    noise = NoiseLevel.vp(torch.tensor(0.3, dtype=torch.float64))
    preds = {
        n: omniguide.Prediction(v, "v", x, noise) for n, v in zip(("cond", "uncond", "perturbed"), (c, u, p))
    }
    guider = SkipLayer(scale=3.0, perturbed_scale=2.0, perturbed_interval=(0.25, 0.5))
    inside, outside = (GuidanceStep(x, noise, 1, i, 8) for i in (2, 6))
    assert guider.branches(inside) == ("cond", "uncond", "perturbed")
    assert guider.branches(outside) == ("cond", "uncond")
    torch.testing.assert_close(guider.combine(preds, inside).to("v"), u + 3 * (c - u) + 2 * (c - p))
    torch.testing.assert_close(guider.combine(preds, outside).to("v"), u + 3 * (c - u))


# -- golden: the perturbations themselves ---------------------------------------------------------------
def reference_blur(grid: np.ndarray, sigma: float) -> np.ndarray:
    """SEG-SDXL's blur from its formula: odd kernel ceil(6 sigma)+1-ceil(6 sigma)%2, clipped to the
    grid, taps exp(-x^2 / 2 sigma^2) normalised, 2-D product kernel, reflect padding."""
    h, w = grid.shape[:2]
    k = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    kh, kw = min(k, h if h % 2 else h + 1), min(k, w if w % 2 else w + 1)
    taps = [np.exp(-0.5 * (np.linspace(-(n - 1) / 2, (n - 1) / 2, n) / sigma) ** 2) for n in (kh, kw)]
    kernel = np.outer(taps[0] / taps[0].sum(), taps[1] / taps[1].sum())
    padded = np.pad(grid, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
    out = np.zeros_like(grid)
    for i in range(h):
        for j in range(w):
            out[i, j] = np.einsum("ab,abc->c", kernel, padded[i : i + kh, j : j + kw])
    return out


@pytest.mark.parametrize("grid,sigma", [((4, 6), 1.0), ((5, 3), 0.6), ((4, 4), 3.0)])
def test_seg_blur_golden(grid, sigma):
    q = torch.randn(2, grid[0] * grid[1], 5, dtype=torch.float64)
    out = blur_queries(q, sigma, 1, grid)
    for b in range(2):
        ref = reference_blur(q[b].reshape(*grid, 5).numpy(), sigma).reshape(-1, 5)
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-12)
    inf = blur_queries(q, math.inf, 1, grid)
    torch.testing.assert_close(inf, q.mean(dim=1, keepdim=True).expand_as(q))


def test_seg_token_grid_follows_the_sample():
    assert token_grid(32, 2, (2, 4, 8, 16)) == (1, (4, 8))  # non-square: 32 tokens at 1/2 resolution
    assert token_grid(40, 2, (2, 4, 9, 16)) == (1, (5, 8))  # odd height, ceil down-sampling
    assert token_grid(7, 2, (2, 3, 7)) == (1, (7,))  # audio: a 1-D token line
    assert token_grid(48, 2, (2, 3, 2, 4, 6)) == (2, (4, 6))  # video: both frames in one sequence
    assert token_grid(24, 4, (2, 3, 2, 4, 6)) == (1, (4, 6))  # video: frames folded into the batch
    with pytest.raises(GuidanceError, match="grid="):
        token_grid(37, 2, (2, 4, 8, 8))  # e.g. joint text + image tokens


def test_pag_identity_attention_golden(unet):
    """Inside the perturbation, the selected self-attention returns to_out(to_v(x)): softmax -> identity."""
    attn = unet.mid_block.attentions[0].transformer_blocks[0].attn1
    seen = {}
    handle = attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    x, e = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8)
    try:
        with torch.no_grad(), IdentityAttention()(unet, x):
            unet(x, 10, e)
    finally:
        handle.remove()
    expected = attn.to_out[0](attn.to_v(seen["x"]))
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-6)


def test_seg_blurs_queries_on_a_non_square_grid(unet):
    """8x16 latent -> 4x8 tokens in the mid block; the perturbed queries equal the reference blur of
    the clean ones on that grid."""
    to_q = unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q
    x, e = torch.randn(1, 4, 8, 16), torch.randn(1, 5, 8)
    seen = []
    with torch.no_grad():
        handle = to_q.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
        unet(x, 10, e)
        handle.remove()
        with BlurredQueries(sigma=1.0)(unet, x):
            handle = to_q.register_forward_hook(
                lambda m, a, out: seen.append(out.clone())
            )  # runs after the blur
            unet(x, 10, e)
            handle.remove()
    clean, blurred = seen
    ref = reference_blur(clean[0].double().reshape(4, 8, -1).numpy(), 1.0).reshape(32, -1)
    np.testing.assert_allclose(blurred[0].numpy(), ref, atol=1e-5)


def test_skip_block_returns_its_input(dit):
    block = dit.transformer_blocks[1]
    seen = {}
    handle = block.register_forward_hook(
        lambda m, args, kwargs, out: seen.update(x=args[0], out=out), with_kwargs=True
    )
    x = torch.randn(1, 4, 8, 8)
    try:
        with torch.no_grad(), SkipBlocks((1,))(dit, x):
            dit(x, torch.tensor([5]), class_labels=torch.tensor([1]))
    finally:
        handle.remove()
    assert torch.equal(seen["out"], seen["x"])


# -- on real models: differs, is removed, applies only to its branch -------------------------------------
def model_calls():
    """(name, model, sample, call) for the tiny UNet, DiT and SD3 transformer."""
    torch.manual_seed(3)
    unet, dit, sd3 = tiny_unet(), tiny_dit(), tiny_sd3()
    x, e = torch.randn(2, 4, 8, 16), torch.randn(2, 5, 8)
    xd, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    return [
        ("unet", unet, x, lambda: unet(x, 10, e).sample),
        ("dit", dit, xd, lambda: dit(xd, t, class_labels=torch.tensor([1, 2])).sample),
        (
            "sd3",
            sd3,
            x,
            lambda: (
                sd3(hidden_states=x, encoder_hidden_states=e, pooled_projections=e[:, 0], timestep=t).sample
            ),
        ),
    ]


@pytest.mark.parametrize("make", [IdentityAttention, BlurredQueries, SkipBlocks])
def test_perturbation_differs_and_is_removed(make):
    for name, model, x, call in model_calls():
        with torch.no_grad():
            clean = call()
            with make()(model, x):
                perturbed = call()
            after = call()
        assert (perturbed - clean).abs().max() > 1e-4, f"{make.__name__} had no effect on {name}"
        assert torch.equal(after, clean), f"{make.__name__} left a trace on {name}"
        assert no_hooks_left(model)


def test_hooks_are_removed_when_the_forward_raises(unet):
    x, e = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8)
    with torch.no_grad():
        clean = unet(x, 10, e).sample
        for make in (IdentityAttention, BlurredQueries, SkipBlocks):
            with pytest.raises(RuntimeError), make()(unet, x):
                unet(torch.randn(1, 3, 8, 8), 10, e)  # wrong channel count
            assert no_hooks_left(unet)
        assert torch.equal(unet(x, 10, e).sample, clean)


@pytest.mark.parametrize("layout,per_frame", [("BCT", False), ("BCFHW", False), ("BCFHW", True)])
@pytest.mark.parametrize("make", [IdentityAttention, BlurredQueries, SkipBlocks])
def test_perturbations_on_3d_and_5d_samples(layout, per_frame, make):
    model = ToyDiT(per_frame=per_frame).eval()
    x = torch.randn(SHAPES[layout])
    with torch.no_grad():
        clean = model(x)
        with make()(model, x):
            perturbed = model(x)
    assert (perturbed - clean).abs().max() > 1e-4
    assert torch.equal(model(x), clean)


def test_executor_perturbs_only_the_named_branch(unet):
    f = unet_fn(unet)
    x, ec, eu = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), 10, 0, 4)
    guider = PAG(scale=5.0, perturbed_scale=3.0)
    executor = BranchExecutor(
        f, {"cond": {"encoder_hidden_states": ec}, "uncond": {"encoder_hidden_states": eu}},
        defaults=guider.branch_defaults(),
    )
    with torch.no_grad():
        preds = executor(guider.branches(step), x, 10, step)
        clean_c, clean_u = f.fn(x, 10, ec), f.fn(x, 10, eu)
        with IdentityAttention()(unet, x):
            pert = f.fn(x, 10, ec)
    torch.testing.assert_close(preds["cond"].value, clean_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(preds["uncond"].value, clean_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(preds["perturbed"].value, pert, rtol=1e-5, atol=1e-6)
    assert (pert - clean_c).abs().max() > 1e-3
    assert executor.passes_per_step == [2] and executor.nfe_per_step == [
        3
    ]  # cond+uncond batched, perturbed alone
    assert no_hooks_left(unet)

    # CFG off (scale 1): the perturbed branch still runs perturbed, and the result differs from cond
    alone = PAG(scale=1.0, perturbed_scale=3.0)
    with torch.no_grad():
        preds = executor(alone.branches(step), x, 10, step)
    assert set(preds) == {"cond", "perturbed"}
    out = alone.combine(preds, step).eps
    torch.testing.assert_close(out, clean_c + 3.0 * (clean_c - pert), rtol=1e-5, atol=1e-5)
    assert (out - clean_c).abs().max() > 1e-3


def test_selectors_and_errors(unet, dit):
    x8 = torch.randn(1, 4, 8, 8)
    with pytest.raises(GuidanceError, match="'nope' matches no self-attention"):
        with IdentityAttention(("nope",))(unet, x8):
            pass
    with pytest.raises(GuidanceError, match="integer layer 3"):
        with SkipBlocks((3,))(unet, x8):
            pass
    with pytest.raises(GuidanceError, match="out of range"):
        with SkipBlocks((7,))(dit, x8):
            pass
    with pytest.raises(ConfigError, match="layers"):
        PAG(layers=[1.5])
    with pytest.raises(ConfigError, match="blur_sigma"):
        SEG(blur_sigma=0)
    # a plain callable with no module: the perturbed branch names what to describe
    step = GuidanceStep(x8, NoiseLevel.vp(torch.tensor(0.5)), 10, 0, 4)
    plain = BranchExecutor(lambda s, t, **k: unet(s, t, **k).sample,
                           {"cond": {"encoder_hidden_states": torch.randn(1, 5, 8)}},
                           defaults=PAG(scale=1.0).branch_defaults())
    with pytest.raises(GuidanceError, match=r"branch 'perturbed': .* ModelCall\(fn, module="):
        plain(("cond", "perturbed"), x8, 10, step)
    # an int alone is a valid selector (diffusers' `*_layers=0` crashes); negative counts from the end
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([1])
    with torch.no_grad():
        with SkipBlocks(2)(dit, x):
            a = dit(x, t, class_labels=y).sample
        with SkipBlocks((-1,))(dit, x):
            b = dit(x, t, class_labels=y).sample
        with IdentityAttention(("down.1", "up_blocks.0.attentions.1"))(unet, x):  # region + module-name prefix
            unet(torch.randn(1, 4, 8, 8), 3, torch.randn(1, 5, 8))
    assert torch.equal(a, b)


def test_config_round_trip():
    g = build_guider(
        {"name": "seg", "scale": 5, "perturbed_scale": 2, "layers": ["mid", "up.0"], "blur_sigma": 10.0}
    )
    assert isinstance(g, SEG) and g.layers == ("mid", "up.0") and g.perturbation.sigma == 10.0
    again = build_guider(g.config())
    assert again.config() == g.config()
    assert build_guider({"name": "skip-layer", "layers": 1}).layers == (1,)
    assert build_guider({"name": "pag", "perturbed_interval": [0.0, 0.5]}).perturbed_interval == (0.0, 0.5)


# -- through the sampler ------------------------------------------------------------------------------
def ddim():
    return diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


@pytest.mark.parametrize("cls", [PAG, SEG, SkipLayer])
def test_sample_with_ddim(unet, cls):
    f = unet_fn(unet)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    ec, eu = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    branches = {"cond": {"encoder_hidden_states": ec}, "uncond": {"encoder_hidden_states": eu}}
    kw = dict(branches=branches, num_steps=3, progress=False)
    with torch.no_grad():
        guided = omniguide.sample(f, ddim(), cls(scale=4.0, perturbed_scale=2.0), noise, **kw)
        cfg_only = omniguide.sample(f, ddim(), omniguide.CFG(scale=4.0), noise, **kw)
        alone = omniguide.sample(f, ddim(), cls(scale=1.0, perturbed_scale=2.0), noise, **kw)
        plain = omniguide.sample(f, ddim(), omniguide.CFG(scale=1.0), noise, **kw)
    assert guided.nfe_per_step == [3, 3, 3] and guided.passes_per_step == [2, 2, 2]
    assert alone.nfe_per_step == [2, 2, 2] and alone.passes_per_step == [2, 2, 2]
    assert torch.isfinite(guided.sample).all()
    assert (guided.sample - cfg_only.sample).abs().max() > 1e-4
    assert (alone.sample - plain.sample).abs().max() > 1e-4  # scale 1 still guides
    assert no_hooks_left(unet)


def test_composes_with_interval_schedule_and_tensor_scales(unet):
    f = unet_fn(unet)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    ec, eu = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    kw = dict(
        branches={"cond": {"encoder_hidden_states": ec}, "uncond": {"encoder_hidden_states": eu}},
        num_steps=4,
        progress=False,
    )
    with torch.no_grad():
        out = omniguide.sample(f, ddim(), Interval(PAG(scale=3.0), step=(0.0, 0.4)), noise, **kw)
        assert out.nfe_per_step == [3, 3, 1, 1]
        out = omniguide.sample(f, ddim(), SkipLayer(scale=3.0, perturbed_interval=(0.2, 0.7)), noise, **kw)
        assert out.nfe_per_step == [2, 3, 3, 2]
        out = omniguide.sample(
            f, ddim(), Schedule(SEG(scale=3.0), shape="linear", coordinate="step"), noise, **kw
        )
        assert out.nfe_per_step == [2, 3, 3, 3]  # linear: w(first step) = 1 (x = 1), so no uncond
        per_sample = torch.tensor([2.0, 0.0]).view(2, 1, 1, 1)
        tensor = omniguide.sample(f, ddim(), PAG(scale=1.0, perturbed_scale=per_sample), noise, **kw)
        plain = omniguide.sample(f, ddim(), omniguide.CFG(scale=1.0), noise, **kw)
    assert (tensor.sample[0] - plain.sample[0]).abs().max() > 1e-4
    torch.testing.assert_close(tensor.sample[1], plain.sample[1], rtol=1e-4, atol=1e-5)


def test_several_perturbations_through_terms(unet):
    """Two perturbed branches at once: each runs in its own pass with its own perturbation."""
    f = unet_fn(unet)
    x, ec, eu = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    branches = {
        "cond": {"encoder_hidden_states": ec},
        "uncond": {"encoder_hidden_states": eu},
        "pag": omniguide.Branch("pag", base="cond", perturbation=IdentityAttention()),
        "seg": omniguide.Branch("seg", base="cond", perturbation=BlurredQueries()),
    }
    guider = omniguide.Terms(terms={"uncond": 4.0, "pag": 3.0, "seg": 2.0})
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), 10, 0, 4)
    executor = BranchExecutor(f, branches)
    with torch.no_grad():
        preds = executor(guider.branches(step), x, 10, step)
        c, u = f.fn(x, 10, ec), f.fn(x, 10, eu)
        with IdentityAttention()(unet, x):
            p1 = f.fn(x, 10, ec)
        with BlurredQueries()(unet, x):
            p2 = f.fn(x, 10, ec)
    assert executor.passes_per_step == [3] and executor.nfe_per_step == [4]
    out = guider.combine(preds, step).eps
    torch.testing.assert_close(out, c + 4 * (c - u) + 3 * (c - p1) + 2 * (c - p2), rtol=1e-5, atol=1e-5)


def test_block_output_order_is_matched_by_class_not_by_name():
    """The stream-order tie-break of skip-layer recognises diffusers' joint blocks by class (subclasses
    too); an unrelated class that merely shares the name gets no order."""
    from diffusers.models.attention import JointTransformerBlock

    from omniguide.core.perturbations.skip import output_order

    block = JointTransformerBlock(dim=8, num_attention_heads=1, attention_head_dim=8, context_pre_only=False)
    assert output_order(block) == ("context", "hidden")
    sub = type("MyJointBlock", (JointTransformerBlock,), {})(dim=8, num_attention_heads=1, attention_head_dim=8,
                                                          context_pre_only=False)
    assert output_order(sub) == ("context", "hidden")
    lookalike = type("JointTransformerBlock", (torch.nn.Module,), {})()
    assert output_order(lookalike) is None
