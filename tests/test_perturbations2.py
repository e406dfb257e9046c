"""Methods II perturbations on tiny diffusers UNets and transformers (float32, CPU): what each changes,
re-derived here from the papers' formulas (never with the implementation's helpers), that nothing
else changes, and that every hook is gone afterwards.

    TPG    a selected block sees its input tokens permuted by randperm(n) (one permutation per call)
    TSG    time embedding + s t^power std(emb) n
    S2     round(ratio n) random blocks return their input, the rest run
    PLADIS A = lambda entmax15(S) + (1 - lambda) softmax(S), entmax by bisection here
    NAG    z = alpha z^ + (1 - alpha) z+, z^ = z~ min(r, tau) / r, z~ = z+ + s (z+ - z-), r = |z~|_1 / |z+|_1
    VSF    positive image queries also attend to the negative keys with values -s v-, logits - offset
    SAG    the guided latents equal diffusers' StableDiffusionSAGPipeline on a tiny SD pipeline
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import omniguide
from omniguide.core import BranchExecutor, GuidanceError, GuidanceStep, ModelCall, NoiseLevel
from omniguide.core.methods import NAG, PLADIS, SAG, TPG, TSG, VSF, S2Guidance
from omniguide.core.perturbations import (
    DroppedBlocks,
    FlippedValues,
    NormalizedAttention,
    ShuffledTokens,
    SparseAttention,
    TimestepNoise,
    entmax15,
    sparsemax,
)

diffusers = pytest.importorskip("diffusers")
from tiny_models import ToyDiT, tiny_flux, tiny_pixart, tiny_sd3, tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


def no_hooks_left(root: nn.Module) -> bool:
    return all("forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
               for m in root.modules())


# -- sparse attention maps -------------------------------------------------------------------------------
def entmax_bisection(z: torch.Tensor, alpha: float, iters: int = 200) -> torch.Tensor:
    """alpha-entmax by bisection on tau: p = [(alpha - 1) z - tau]_+^(1 / (alpha - 1)), sum p = 1."""
    z = (alpha - 1) * z.double()
    hi = z.max(-1, keepdim=True).values
    lo = hi - 1.0
    for _ in range(iters):
        tau = (lo + hi) / 2
        total = (z - tau).clamp_min(0).pow(1 / (alpha - 1)).sum(-1, keepdim=True)
        lo, hi = torch.where(total > 1, tau, lo), torch.where(total > 1, hi, tau)
    return (z - (lo + hi) / 2).clamp_min(0).pow(1 / (alpha - 1))


def test_entmax_and_sparsemax_are_exact():
    z = torch.randn(5, 7, 9, dtype=torch.float64) * 3
    torch.testing.assert_close(entmax15(z), entmax_bisection(z, 1.5), rtol=0, atol=1e-9)
    torch.testing.assert_close(sparsemax(z), entmax_bisection(z, 2.0), rtol=0, atol=1e-9)
    assert (sparsemax(z) == 0).any() and (entmax15(z) == 0).any()           # sparse
    masked = z.masked_fill(torch.arange(9) > 5, float("-inf"))
    assert torch.all(entmax15(masked)[..., 6:] == 0)
    torch.testing.assert_close(entmax15(masked).sum(-1), torch.ones(5, 7, dtype=torch.float64))


def heads(t, attn):
    b, n, _ = t.shape
    return t.view(b, n, attn.heads, -1).transpose(1, 2)


def merge(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


ATTN2 = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def test_pladis_sparse_cross_attention_golden(unet):
    attn = dict(unet.named_modules())[ATTN2]
    h, e = torch.randn(2, 16, 8), torch.randn(2, 5, 8)
    with torch.no_grad():
        with SparseAttention((ATTN2,), scale=2.0)(unet, h):
            out = attn(h, encoder_hidden_states=e)
        q, k, v = heads(attn.to_q(h), attn), heads(attn.to_k(e), attn), heads(attn.to_v(e), attn)
        s = (q @ k.transpose(-1, -2)).double() / q.shape[-1] ** 0.5
        a = 2.0 * entmax_bisection(s, 1.5) + (1 - 2.0) * torch.softmax(s, -1)
        ref = attn.to_out[0](merge((a @ v.double()).float()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert no_hooks_left(unet)


def test_pladis_default_is_every_cross_attention_mid_block_included(unet):
    """The paper applies PLADIS to all cross-attention modules; the reference node patches every attn2."""
    attn2 = sorted(n for n, m in unet.named_modules() if n.endswith(".attn2"))
    assert any(n.startswith("mid_block.") for n in attn2) and any(n.startswith("down_blocks.") for n in attn2)
    assert sorted(SparseAttention(None).targets(unet)) == attn2


# -- TPG, TSG, S2 -------------------------------------------------------------------------------------------
def test_token_shuffle_permutes_the_block_input():
    model = ToyDiT().eval()
    x = torch.randn(2, 3, 4, 6)
    seen = []
    handle = model.transformer_blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model(x)
        with ShuffledTokens(("transformer_blocks.1",), seed=4)(model, x):
            model(x)
    handle.remove()
    clean, shuffled = seen[0], seen[1]
    # the pre-hook runs before the patched forward: recompute the shuffled input from the same draw
    order = torch.randperm(clean.shape[1], generator=torch.Generator().manual_seed(4))
    seen.clear()
    block = model.transformer_blocks[1]
    inner = {}
    h2 = block.register_forward_hook(lambda m, args, out: inner.update(out=out))
    with torch.no_grad(), ShuffledTokens(("transformer_blocks.1",), seed=4)(model, x):
        model(x)
    h2.remove()
    with torch.no_grad():
        ref = model.transformer_blocks[1].norm(clean[:, order])
        ref = clean[:, order] + model.transformer_blocks[1].attn1(ref)
    torch.testing.assert_close(inner["out"], ref)
    torch.testing.assert_close(shuffled, clean)          # blocks before it are untouched
    assert no_hooks_left(model)


def test_token_shuffle_default_layers_follow_the_official_sdxl_list(unet):
    from omniguide.core.perturbations import default_token_layers

    layers = default_token_layers(unet)
    assert layers and all(name.startswith("down_blocks.") for name in layers)


def test_timestep_noise_is_scaled_by_the_embedding_std(unet):
    x, e = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8)
    captured = {}
    with torch.no_grad():
        h = unet.time_embedding.register_forward_hook(lambda m, a, out: captured.update(clean=out.clone()))
        unet(x, 10, e)
        h.remove()
        gen = torch.Generator().manual_seed(2)
        with TimestepNoise(scale=0.7, generator=gen)(unet, x):
            h = unet.time_embedding.register_forward_hook(lambda m, a, out: captured.update(noisy=out.clone()))
            unet(x, 10, e)
            h.remove()
    n = torch.randn(captured["clean"].shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(captured["noisy"], captured["clean"] + 0.7 * captured["clean"].std() * n)
    assert no_hooks_left(unet)


def test_tsg_scales_the_noise_with_t_and_skips_outside_its_window(unet):
    guider = TSG(scale=3.0, noise=2.0, power=0.5, t=(0.3, 0.9))
    x = torch.randn(1, 4, 8, 8)
    inside = GuidanceStep(x, NoiseLevel(torch.tensor(0.6), torch.tensor(0.8), torch.tensor(0.64)), 10, 0, 4, None)
    outside = GuidanceStep(x, NoiseLevel(torch.tensor(0.1), torch.tensor(0.99), torch.tensor(0.95)), 10, 0, 4, None)
    assert guider.branches(inside) == ("cond", "tsg") and guider.branches(outside) == ("cond",)
    assert guider.perturbation.at(inside).scale == pytest.approx(2.0 * 0.64 ** 0.5)


def test_dropped_blocks_are_drawn_afresh_and_return_their_input():
    model = ToyDiT(depth=6).eval()
    x = torch.randn(2, 3, 4, 6)
    p = DroppedBlocks(ratio=0.34, seed=1)
    draws = [p.draw(model) for _ in range(4)]
    assert all(len(d) == 2 for d in draws) and len(set(draws)) > 1
    p.reseed()
    assert p.draw(model) == draws[0]
    p.reseed()
    io = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: io.update({i: (a[0], o)}))
             for i, b in enumerate(model.transformer_blocks)]
    with torch.no_grad(), p(model, x):
        model(x)
    for h in hooks:
        h.remove()
    dropped = {int(name.rsplit(".", 1)[1]) for name in draws[0]}
    for i, (inp, out) in io.items():
        assert torch.equal(inp, out) == (i in dropped)
    assert no_hooks_left(model)


# -- NAG and VSF: positive and negative rows in one pass -------------------------------------------------------
def to_out_input(attn: nn.Module, call) -> torch.Tensor:
    """What ``attn.to_out[0]`` receives during ``call()``."""
    seen = {}
    handle = attn.to_out[0].register_forward_pre_hook(lambda m, args: seen.update(z=args[0].clone()))
    try:
        call()
    finally:
        handle.remove()
    return seen["z"]


def nag_reference(zp, zn, s, tau, alpha):
    tilde = zp + s * (zp - zn)
    r = tilde.abs().sum(-1, keepdim=True) / zp.abs().sum(-1, keepdim=True)
    hat = tilde * torch.minimum(r, torch.full_like(r, tau)) / r
    return alpha * hat + (1 - alpha) * zp


ROWS = {"pos": slice(0, 2), "neg": slice(2, 4)}


def flux_ids() -> torch.Tensor:
    """Flux position ids: 5 text tokens at 0, then a 4x4 image grid."""
    grid = torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    return torch.cat([torch.zeros(5, 3), torch.stack(grid, -1).reshape(-1, 3)])


def _joint_attention(model, name):
    return dict(model.named_modules())[name]


@pytest.mark.parametrize("where", ["unet", "sd3", "flux"])
def test_nag_golden(where, unet, sd3, flux):
    """Positive rows: to_out(NAG(z+, z-)) with z- = the attention of the *positive* image tokens with the
    negative context; negative rows: that plain negative attention; the context stream is untouched."""
    model, name = {"unet": (unet, ATTN2), "sd3": (sd3, "transformer_blocks.0.attn"),
                   "flux": (flux, "transformer_blocks.0.attn")}[where]
    attn = _joint_attention(model, name)
    dim = attn.to_q.in_features
    ctx_dim = (attn.add_k_proj.in_features if getattr(attn, "add_k_proj", None) is not None
               else attn.to_k.in_features)
    torch.manual_seed(0)
    h_pos, h_other = torch.randn(2, 16, dim), torch.randn(2, 16, dim)
    e_pos, e_neg = torch.randn(2, 5, ctx_dim), torch.randn(2, 5, ctx_dim)
    joint = where != "unet"
    rope = None
    kwargs = {}
    if where == "flux":
        ids = flux_ids()
        rope = flux.pos_embed(ids)
        kwargs = {"image_rotary_emb": rope}
    p = NormalizedAttention((name,), positive="pos", negative="neg", scale=2.0, tau=2.5, alpha=0.5)
    with torch.no_grad():
        with p.for_rows(model, h_pos, ROWS):
            out = attn(torch.cat([h_pos, h_other]), encoder_hidden_states=torch.cat([e_pos, e_neg]), **kwargs)
        z_pos = to_out_input(attn, lambda: attn(h_pos, encoder_hidden_states=e_pos, **kwargs))
        z_neg = to_out_input(attn, lambda: attn(h_pos, encoder_hidden_states=e_neg, **kwargs))
        plain_pos = attn(h_pos, encoder_hidden_states=e_pos, **kwargs)
        plain_neg = attn(h_pos, encoder_hidden_states=e_neg, **kwargs)
        ref_img = attn.to_out[0](nag_reference(z_pos, z_neg, 2.0, 2.5, 0.5))
    img = out[0] if joint else out
    torch.testing.assert_close(img[:2], ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img[2:], plain_neg[0] if joint else plain_neg, rtol=1e-5, atol=1e-5)
    if joint:   # the context stream is each row's own attention output
        torch.testing.assert_close(out[1][:2], plain_pos[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1][2:], plain_neg[1], rtol=1e-5, atol=1e-5)
    assert no_hooks_left(model)


def test_vsf_cross_attention_golden(unet):
    attn = dict(unet.named_modules())[ATTN2]
    torch.manual_seed(1)
    h_pos, h_other = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    e_pos, e_neg = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    p = FlippedValues((ATTN2,), positive="pos", negative="neg", scale=3.0, offset=0.2)
    with torch.no_grad():
        with p.for_rows(unet, h_pos, ROWS):
            out = attn(torch.cat([h_pos, h_other]), encoder_hidden_states=torch.cat([e_pos, e_neg]))
        q = heads(attn.to_q(h_pos), attn)
        k = torch.cat([heads(attn.to_k(e_pos), attn), heads(attn.to_k(e_neg), attn)], dim=2)
        v = torch.cat([heads(attn.to_v(e_pos), attn), -3.0 * heads(attn.to_v(e_neg), attn)], dim=2)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        logits[..., 5:] -= 0.2
        ref = attn.to_out[0](merge(torch.softmax(logits, -1) @ v))
        plain_neg = attn(h_pos, encoder_hidden_states=e_neg)
    torch.testing.assert_close(out[:2], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2:], plain_neg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["sd3", "flux"])
def test_vsf_joint_attention_hides_the_negative_from_the_positive_text(where, sd3, flux):
    """Joint attention: the positive text stream is exactly the plain attention's (masked), the image
    stream changes; with zero scale and a huge offset the negative is invisible."""
    model = {"sd3": sd3, "flux": flux}[where]
    name = "transformer_blocks.0.attn"
    attn = dict(model.named_modules())[name]
    dim, ctx_dim = attn.to_q.in_features, attn.add_k_proj.in_features
    torch.manual_seed(2)
    h_pos = torch.randn(2, 16, dim)
    e_pos, e_neg = torch.randn(2, 5, ctx_dim), torch.randn(2, 5, ctx_dim)
    kwargs = {}
    if where == "flux":
        ids = flux_ids()
        kwargs = {"image_rotary_emb": flux.pos_embed(ids)}
    with torch.no_grad():
        plain = attn(h_pos, encoder_hidden_states=e_pos, **kwargs)
        outs = {}
        for scale, offset in ((3.0, 0.1), (0.0, 1e4)):
            p = FlippedValues((name,), positive="pos", negative="neg", scale=scale, offset=offset)
            with p.for_rows(model, h_pos, ROWS):
                outs[scale] = attn(torch.cat([h_pos, h_pos]), encoder_hidden_states=torch.cat([e_pos, e_neg]), **kwargs)
    image, text = outs[3.0]
    torch.testing.assert_close(text[:2], plain[1], rtol=1e-5, atol=1e-5)
    assert (image[:2] - plain[0]).abs().max() > 1e-3
    torch.testing.assert_close(outs[0.0][0][:2], plain[0], rtol=1e-4, atol=1e-5)
    assert no_hooks_left(model)


def test_rows_perturbations_need_one_batched_pass(unet):
    """NAG's two branches share one pass (NFE 2, one pass); run apart they cannot see each other."""
    e_pos, e_neg = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    call = ModelCall(unet, fixed={"return_dict": False})
    guider = NAG()
    table = {"cond": {"encoder_hidden_states": e_pos}, "uncond": {"encoder_hidden_states": e_neg}}
    x = torch.randn(1, 4, 8, 8)
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), 10, 0, 2, None)
    with torch.no_grad():
        executor = BranchExecutor(call, table, "eps", defaults=guider.branch_defaults())
        preds = executor(guider.branches(step), x, 10, step)
        assert executor.nfe_per_step == [2] and executor.passes_per_step == [1]
        assert (preds["nag"].value - unet(x, 10, e_pos).sample).abs().max() > 1e-6
        apart = BranchExecutor(call, table, "eps", batch=False, defaults=guider.branch_defaults())
        with pytest.raises(GuidanceError, match="nag: branch 'nag-negative' is not in this forward pass .*one batched"):
            apart(guider.branches(step), x, 10, step)
    assert no_hooks_left(unet)


# -- SAG: parity with diffusers' pipeline ---------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sag_matches_diffusers_sag_pipeline(guidance):
    import tiny_pipelines as TP
    from diffusers import StableDiffusionSAGPipeline

    pipe = TP.sd()
    pipe.set_progress_bar_config(disable=True)
    sag = StableDiffusionSAGPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                     unet=pipe.unet, scheduler=copy.deepcopy(pipe.scheduler), safety_checker=None,
                                     feature_extractor=None, requires_safety_checker=False)
    sag.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red circle", height=16, width=16, num_inference_steps=3, output_type="latent")
    theirs = sag(generator=torch.Generator().manual_seed(0), guidance_scale=guidance, sag_scale=0.75, **kw).images
    with omniguide.guide(pipe, SAG(scale=guidance, sag_scale=0.75)) as handle:
        ours = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert handle.nfe_per_step == [3 if guidance > 1 else 2] * 3 and handle.passes_per_step == [2] * 3
    assert no_hooks_left(pipe.unet)


def test_sag_refuses_joint_attention(sd3):
    with pytest.raises(GuidanceError, match="joint text-image attention; SAG needs a self-attention map"):
        SAG().recorder.targets(sd3)


# -- every new perturbed guider: changes the output, leaves no trace ----------------------------------------------
@pytest.mark.parametrize("make", [lambda: TPG(scale=1.0), lambda: TSG(t=(0.0, 1.0)), lambda: S2Guidance(scale=1.0),
                                  lambda: NAG(), lambda: VSF(), lambda: PLADIS()],
                         ids=["tpg", "tsg", "s2", "nag", "vsf", "pladis"])
def test_guided_prediction_differs_and_model_is_restored(make):
    torch.manual_seed(5)
    model = tiny_pixart()
    call = ModelCall(model, sample="hidden_states", timestep="timestep",
                     fixed={"return_dict": False, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}})
    e_pos, e_neg = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    table = {"cond": {"encoder_hidden_states": e_pos}, "uncond": {"encoder_hidden_states": e_neg}}
    guider = make()
    x = torch.randn(1, 4, 8, 8)
    step = GuidanceStep(x, NoiseLevel(torch.tensor(0.6), torch.tensor(0.8), torch.tensor(0.6)), torch.tensor([500]),
                        0, 2, None)
    with torch.no_grad():
        plain = call(x, torch.tensor([500]), {"encoder_hidden_states": e_pos})
        executor = BranchExecutor(call, table, "eps", defaults=guider.branch_defaults())
        preds = executor(guider.branches(step), x, torch.tensor([500]), step)
        out = guider.combine(preds, step)
        again = call(x, torch.tensor([500]), {"encoder_hidden_states": e_pos})
    assert (out.eps - plain).abs().max() > 1e-5
    assert torch.equal(again, plain) and no_hooks_left(model)


def test_a_missing_perturbation_target_lists_the_available_blocks(unet):
    with pytest.raises(GuidanceError, match=r"tpg: layer selector 'down_blocks.7' matches no transformer block of "
                                            r"UNet2DConditionModel \(.*candidates: down_blocks"):
        ShuffledTokens(("down_blocks.7",)).targets(unet)
    with pytest.raises(GuidanceError, match="pladis: layer selector 'mid_block.nothing' matches no context-attention"):
        SparseAttention(("mid_block.nothing",)).targets(unet)
