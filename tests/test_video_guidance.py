"""Spatiotemporal and multi-condition guidance for video: per-frame / region / decaying scales, the
piecewise schedules of LTX-Video and Wan 2.2, per-band FDG over height and width, STG's four modes
on a video transformer, the STG and LTX-2 combine formulas (the latter against diffusers), nested
multi-condition guidance and phase-aware negatives."""

from __future__ import annotations

import math

import pytest
import torch

from omniguide import CFG, FDG, GuidanceError
from omniguide.core.axes import Axes
from omniguide.core.guider import GuidanceStep
from omniguide.core.noise import NoiseLevel
from omniguide.core.prediction import Prediction
from omniguide.core.registry import build_guider
from omniguide.core.scale import Piecewise, resolve
from omniguide.modalities.video.multicond import MultiModal, Nested
from omniguide.modalities.video.scales import Decay, FrameRamp, FrameScales, RegionScale
from omniguide.modalities.video.stg import STG, DropResidual, SkipAttention, stg_perturbation
from omniguide.modalities.video.wan import expert_scale
from omniguide.zoo.video_denoiser import VideoDenoiser, VideoDenoiserConfig

LTX_13B = dict(values=(1, 1, 6, 8, 6, 1, 1), at=(1.0, 0.996, 0.9933, 0.9850, 0.9767, 0.9008, 0.6180))


def step_at(x, t=0.5, index=0, num_steps=10, layout="BCFHW"):
    return GuidanceStep(x, NoiseLevel.flow(torch.tensor(t, dtype=x.dtype)), t * 1000, index, num_steps,
                        Axes.from_layout(layout))


# -- scales ---------------------------------------------------------------------------------------------
def test_frame_ramp_is_svds_linspace_in_either_layout():
    for layout, shape, dim in (("BFCHW", (2, 7, 4, 3, 3), 1), ("BCFHW", (2, 4, 7, 3, 3), 2)):
        w = resolve(FrameRamp(1.0, 3.0), step_at(torch.zeros(shape), layout=layout))
        expected = torch.linspace(1.0, 3.0, 7)        # diffusers' SVD: torch.linspace(min, max, num_frames)
        torch.testing.assert_close(w.squeeze(), expected)
        assert w.shape[dim] == 7 and w.numel() == 7


def test_region_point_box_mask_and_decay_by_hand():
    x = torch.zeros(1, 1, 2, 4, 6)
    st = step_at(x)
    gauss = resolve(RegionScale(inside=5.0, outside=1.0, point=(0.5, 0.5), sigma=0.25), st)
    dy, dx = (2 + 0.5) - 2.0, (1 + 0.5) - 3.0       # pixel (row 2, col 1) centre to the point, in pixels
    d2 = (dx ** 2 + dy ** 2) / 6 ** 2                # as a fraction of the larger side (6)
    assert math.isclose(float(gauss[0, 0, 0, 2, 1]), 1 + 4 * math.exp(-d2 / (2 * 0.25 ** 2)), rel_tol=1e-6)
    box = resolve(RegionScale(inside=3.0, box=(0.0, 0.0, 0.5, 0.5)), st)[0, 0, 0]
    assert box[:2, :3].eq(3).all() and box[2:].eq(1).all() and box[:, 3:].eq(1).all()
    mask = torch.zeros(2, 4, 6)
    mask[1, 0, 0] = 0.5
    per_frame = resolve(RegionScale(inside=3.0, mask=mask), st)
    assert float(per_frame[0, 0, 1, 0, 0]) == 2.0 and float(per_frame[0, 0, 0, 0, 0]) == 1.0
    # decay: neutral + (w - neutral)(1 - (1 - end) g(p)), cosine g, p = index / (N - 1)
    p = 3 / 9
    expected = 1 + 2 * (1 - 0.5 * (1 - math.cos(math.pi * p)) / 2)
    assert math.isclose(float(resolve(Decay(3.0, end=0.5), step_at(x, index=3))), expected, rel_tol=1e-9)
    ramp = resolve(Decay(FrameRamp(1.0, 3.0), end=0.0, shape="linear"), step_at(x, index=9))
    torch.testing.assert_close(ramp, torch.ones_like(ramp))        # fully decayed to the neutral scale


def test_region_point_gaussian_is_round_on_a_non_square_latent():
    """sigma is a fraction of the larger side: on a 4 x 8 latent (sigma = 0.25 -> 2 px) the two cells
    sqrt(2.5) px from the centre, one 1.5 px across and 0.5 px down, the other 0.5 across and 1.5 down,
    weigh the same exp(-2.5 / 8) = 0.732 (per-side fractions gave 0.666 and 0.315)."""
    m = resolve(RegionScale(inside=2.0, outside=1.0, point=(0.5, 0.5), sigma=0.25),
                step_at(torch.zeros(1, 1, 1, 4, 8)))[0, 0, 0] - 1.0
    expected = math.exp(-2.5 / (2 * 2.0 ** 2))
    assert math.isclose(expected, 0.732, abs_tol=5e-4)
    assert math.isclose(float(m[1, 2]), expected, rel_tol=1e-6)      # centre (2.5, 1.5) vs point (4, 2)
    assert math.isclose(float(m[0, 3]), expected, rel_tol=1e-6)      # centre (3.5, 0.5)
    wide = RegionScale(point=(0.5, 0.5), sigma=0.25).weights(8, 4)   # the transpose is the transpose
    torch.testing.assert_close(wide, RegionScale(point=(0.5, 0.5), sigma=0.25).weights(4, 8).T)


def test_scales_that_do_not_broadcast_are_one_line_errors():
    st = step_at(torch.zeros(1, 4, 5, 6, 8))
    with pytest.raises(GuidanceError, match=r"^frame-scales: 3 scales do not broadcast to a video of 5 frames$"):
        resolve(FrameScales((1.0, 2.0, 3.0)), st)
    with pytest.raises(GuidanceError,
                       match=r"^scale of shape \(3,\) does not broadcast to the sample \(1, 4, 5, 6, 8\)$"):
        resolve(torch.ones(3), st)
    with pytest.raises(GuidanceError,
                       match=r"^region: a mask of shape \(3, 3\) does not broadcast to the video's 6 x 8"):
        resolve(RegionScale(inside=2.0, mask=torch.ones(3, 3)), st)
    with pytest.raises(GuidanceError, match="frame-ramp: needs the sample's layout with axes F"):
        resolve(FrameRamp(), GuidanceStep(torch.zeros(1, 4, 8, 8), NoiseLevel.flow(torch.tensor(0.5))))


def test_piecewise_reproduces_ltx_guidance_timesteps_and_wan_boundary():
    """LTX-Video: index = first i with guidance_timesteps[i] <= t, else the last (re-derived here)."""
    scale = Piecewise(**LTX_13B)
    for t in (1.0, 0.999, 0.996, 0.995, 0.99, 0.98, 0.95, 0.9, 0.7, 0.3):
        hits = [i for i, v in enumerate(LTX_13B["at"]) if v <= t]
        index = hits[0] if hits else len(LTX_13B["at"]) - 1
        assert resolve(scale, step_at(torch.zeros(1), t=t)) == LTX_13B["values"][index], t
    # Wan 2.2: transformer (high noise) where t >= boundary, transformer_2 below
    wan = expert_scale(4.0, 3.0, 0.875)
    assert resolve(wan, step_at(torch.zeros(1), t=0.875)) == 4.0
    assert resolve(wan, step_at(torch.zeros(1), t=0.874)) == 3.0
    steps = Piecewise(values=(2.0, 5.0, 1.0), at=(0.0, 0.2, 0.8), coordinate="step")
    assert [resolve(steps, step_at(torch.zeros(1), index=i, num_steps=11)) for i in (0, 1, 2, 7, 8, 10)] == \
        [2.0, 2.0, 5.0, 5.0, 1.0, 1.0]
    assert build_guider({"name": "cfg", "scale": {"name": "piecewise", **{k: list(v) for k, v in LTX_13B.items()}}}
                        ).scale == scale
    with pytest.raises(Exception, match="bin starts over 't' must be strictly descending"):
        Piecewise(values=(1, 2), at=(0.5, 0.9))


def test_fdg_bands_over_height_and_width_are_per_frame_2d():
    g = torch.Generator().manual_seed(0)
    # float64: the batched and per-frame convolutions may sum in another order at another thread count
    c, u = (torch.randn(2, 3, 4, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    fdg = FDG(2.0, 6.0)
    video = fdg.combine({"cond": Prediction(c, "eps", c, NoiseLevel.flow(torch.tensor(0.5))),
                         "uncond": Prediction(u, "eps", c, NoiseLevel.flow(torch.tensor(0.5)))},
                        step_at(c, layout="BCFHW")).eps
    for f in range(4):
        cf, uf = c[:, :, f], u[:, :, f]
        image = fdg.combine({"cond": Prediction(cf, "eps", cf, NoiseLevel.flow(torch.tensor(0.5))),
                             "uncond": Prediction(uf, "eps", cf, NoiseLevel.flow(torch.tensor(0.5)))},
                            step_at(cf, layout="BCHW")).eps
        torch.testing.assert_close(video[:, :, f], image, rtol=0, atol=1e-12)


# -- STG on a video transformer -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = VideoDenoiser(VideoDenoiserConfig(size=16, patch=4, dim=48, depth=3, heads=2, max_frames=4))
    with torch.no_grad():
        for p in model.parameters():       # the zero-initialised output layers would hide every perturbation
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 4, 16, 16, generator=g), torch.rand(2, 4, generator=g) * 1000


def reference(net, patch):
    """Run ``net`` with the attention modules of block 1 replaced by ``patch(attention, hidden)``."""
    x, t = inputs()
    originals = {}
    for name in ("attn_space", "attn_time"):
        attention = getattr(net.blocks[1], name)
        originals[attention] = attention.forward
        attention.forward = (lambda a: (lambda hidden_states: patch(a, hidden_states)))(attention)
    try:
        return net(x, t)
    finally:
        for attention, forward in originals.items():
            attention.forward = forward


@pytest.mark.parametrize("mode", ["attention_values", "attention_skip", "transformer_block"])
def test_stg_modes_perturb_exactly_the_selected_block(net, mode):
    x, t = inputs()
    plain = net(x, t)
    with stg_perturbation(mode, [1])(net, x):
        perturbed = net(x, t)
    assert (perturbed - plain).abs().max() > 1e-4
    if mode == "attention_values":       # softmax(QK^T) V -> V
        expected = reference(net, lambda a, h: a.to_out[0](a.to_v(h)))
    elif mode == "attention_skip":       # the attention core returns its input
        expected = reference(net, lambda a, h: a.to_out[0](h))
    else:                                # the block returns its input
        forward = net.blocks[1].forward
        net.blocks[1].forward = lambda hidden_states, emb: hidden_states
        try:
            expected = net(x, t)
        finally:
            net.blocks[1].forward = forward
    torch.testing.assert_close(perturbed, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(net(x, t), plain)          # removed after the branch


def test_stg_residual_mode_drops_the_attentions_own_residual_and_refuses_a_no_op(net):
    from diffusers.models.attention_processor import Attention

    block = torch.nn.Module()
    block.blocks = torch.nn.ModuleList([torch.nn.Module()])
    block.blocks[0].attn1 = Attention(query_dim=8, heads=2, dim_head=4, residual_connection=True)
    h = torch.randn(1, 5, 8)
    with_residual = block.blocks[0].attn1(h)
    with DropResidual([0])(block, h):
        dropped = block.blocks[0].attn1(h)
    torch.testing.assert_close(dropped, with_residual - h, rtol=0, atol=1e-6)
    assert block.blocks[0].attn1.residual_connection is True
    with pytest.raises(GuidanceError,
                       match="stg\\(residual\\): none of the 2 selected attention layers has a residual"):
        DropResidual([1]).targets(net)
    with pytest.raises(GuidanceError, match="stg\\(attention_skip\\): layer 9 is out of range"):
        SkipAttention([9]).targets(net)


def preds(seed=0, shape=(2, 3, 4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    level = NoiseLevel.flow(torch.tensor(0.6))
    return x, {n: Prediction(torch.randn(shape, generator=g), "flow", x, level) for n in ("cond", "uncond", "perturbed",
                                                                                          "isolated", "text")}


def test_stg_combine_with_ltx_videos_rescale():
    x, p = preds()
    c, u, q = p["cond"].value, p["uncond"].value, p["perturbed"].value
    guider = STG(scale=3.0, perturbed_scale=1.5, rescaling_scale=0.7, layers=[0])
    out = guider.combine(p, step_at(x)).to("flow")
    raw = u + 3.0 * (c - u) + 1.5 * (c - q)
    factor = c.view(2, -1).std(1) / raw.view(2, -1).std(1)     # LTX-Video: per sample, all non-batch dims
    expected = raw * (0.7 * factor + 0.3).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # rescaling_scale 1 is off in LTX-Video's code (13B configs use 1 where they mean "no rescale")
    off = STG(scale=3.0, perturbed_scale=1.5, rescaling_scale=1.0).combine(p, step_at(x)).to("flow")
    torch.testing.assert_close(off, raw, rtol=1e-5, atol=1e-5)
    # per-bin blocks (LTX 13B skip_block_list): an empty bin runs no perturbed branch
    binned = STG(scale=Piecewise(**LTX_13B), perturbed_scale=1.0, layer_bins=[[], [0], [1, 2]],
                 layer_at=[1.0, 0.99, 0.95])
    assert binned.branches(step_at(x, t=1.0)) == ("cond",)
    assert binned.branches(step_at(x, t=0.992)) == ("cond", "uncond", "perturbed:1")
    assert set(binned.branch_defaults()) == {"perturbed:1", "perturbed:2"}


def test_multimodal_matches_diffusers_ltx2_guidance():
    from diffusers.guiders import LTX2Guidance

    x, p = preds(seed=3)
    for g, s, m, r in ((3.0, 1.0, 3.0, 0.7), (7.0, 0.0, 1.0, 0.0), (1.0, 2.0, 1.0, 0.5)):
        theirs_guider = LTX2Guidance(guidance_scale=g, stg_scale=s, modality_scale=m, guidance_rescale=r)
        theirs_guider.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(600.0))
        theirs = theirs_guider.forward(pred_cond=p["cond"].x0, pred_uncond=p["uncond"].x0,
                                       pred_cond_stg=p["perturbed"].x0, pred_cond_modality=p["isolated"].x0).pred
        ours_guider = MultiModal(guidance_scale=g, stg_scale=s, modality_scale=m, guidance_rescale=r)
        st = step_at(x)
        needed = ours_guider.branches(st)
        expected = {"cond"} | ({"uncond"} if g != 1 else set()) | ({"perturbed"} if s else set()) | \
            ({"isolated"} if m != 1 else set())
        assert set(needed) == expected
        ours = ours_guider.combine({n: p[n] for n in needed}, st).x0
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_nested_multi_condition_by_hand_with_windows():
    """EchoMimicV3: e_∅ + s_t (e_t - e_∅) + s_a (e_ta - e_t) with chain [uncond, text, cond]."""
    x, p = preds(seed=5)
    e0, et, eta = p["uncond"].value, p["text"].value, p["cond"].value
    guider = Nested(chain=["uncond", "text", "cond"], scales=[4.5, 2.5])
    out = guider.combine(p, step_at(x)).to("flow")
    torch.testing.assert_close(out, e0 + 4.5 * (et - e0) + 2.5 * (eta - et), rtol=1e-5, atol=1e-5)
    assert guider.coefficients(step_at(x)) == {"uncond": -3.5, "text": 2.0, "cond": 2.5}
    # the audio term only on the first half of the steps: outside, its scale is 1 (no extrapolation)
    windowed = Nested(chain=["uncond", "text", "cond"], scales=[4.5, {"scale": 2.5, "step": [0.0, 0.5]}])
    late = step_at(x, index=8)
    assert windowed.coefficients(late) == {"uncond": -3.5, "text": 3.5, "cond": 1.0}
    assert Nested(chain=["uncond", "cond"], scales=[1.0]).branches(late) == ("cond",)   # one pass


def test_phase_aware_negatives_scale_the_term_and_never_mutate_embeddings():
    """EchoMimicV3 multiplies the negative embeddings by neg_scale inside its step loop: the factor
    compounds (1.5^3 after steps 0-2) and persists. Here the *term* is scaled by 1.5 on the first 3
    of 20 steps, 1 after, and the branch inputs are untouched."""
    negative = torch.randn(1, 4, 8)
    reference = negative.clone()
    for i in range(20):                       # the reference loop's effect on its embeddings
        if i <= 2:
            reference = reference * 1.5
    torch.testing.assert_close(reference, negative * 1.5 ** 3)
    phase = {"name": "piecewise", "values": [4.5 * 1.5, 4.5], "at": [0.0, 2.5 / 19], "coordinate": "step"}
    guider = build_guider({"name": "nested", "chain": ["uncond", "cond"], "scales": [phase]})
    x, p = preds(seed=7)
    scales = [float(guider.coefficients(step_at(x, index=i, num_steps=20))["cond"]) for i in range(20)]
    assert scales[:3] == [6.75] * 3 and scales[3:] == [4.5] * 17
    kept = negative.clone()
    guider.combine(p, step_at(x, index=0, num_steps=20))
    torch.testing.assert_close(negative, kept)


def test_cfg_with_spatiotemporal_scales_runs_through_the_sampler():
    from omniguide import sample
    from omniguide.core.schedulers import build_scheduler

    def model(x, t, labels):
        return 0.1 * x + labels.view(-1, 1, 1, 1, 1).float()
    labels = {"cond": {"labels": torch.ones(2)}, "uncond": {"labels": torch.zeros(2)}}
    noise = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    scale = Decay(RegionScale(inside=FrameRamp(1.0, 4.0), outside=1.0, box=(0.0, 0.0, 0.5, 1.0)), end=0.5)
    out = sample(model, build_scheduler("flow-euler"), CFG(scale=scale), noise, labels, num_steps=4, axes="BCFHW",
                 progress=False)
    assert out.nfe_per_step == [2] * 4
    plain = sample(model, build_scheduler("flow-euler"), CFG(scale=1.0), noise, labels, num_steps=4, axes="BCFHW",
                   progress=False)
    diff = (out.sample - plain.sample).abs()
    assert diff[..., 3:].max() < 1e-6               # right half: scale 1 everywhere
    assert diff[:, :, 0, :, :3].max() < 1e-6        # first frame: ramp at 1
    assert diff[:, :, 3, :, :3].min() > 1e-3        # last frame, left half: guided
