"""Side by side with diffusers 0.42.1's PerturbedAttentionGuidance, SkipLayerGuidance and
SmoothedEnergyGuidance, driven the way the modular denoise loops drive them
(set_state / prepare_inputs / prepare_models / model / cleanup_models / __call__), on the same tiny
models and inputs as omniguide's PAG / SkipLayer / SEG.

Convention mapping (diffusers native form, ``use_original_formulation=False``):
    guidance_scale = scale (w),  perturbed/skip_layer/seg_guidance_scale = perturbed_scale (s)
    both on:  diffusers u + w (c - u) + s (c - p)  ==  ours            (agree to 1e-5 below)
    CFG off:  diffusers p + s (c - p)  = ours with s - 1  -- but diffusers never perturbs there (#3):
              its 'perturbed' pass gets the *unconditional* inputs (tuple slot 1) and no hook, so
              its PAG / SLG at guidance_scale=1 is CFG with scale s.
Defects pinned here (guidance_anchors.md 1.5): SEG never applies its hook (#1), SEG's blur
branches are swapped (#2), SLG/PAG are no-ops with CFG off (#3), the ``*_layers`` int shorthand
crashes (#4). Where a defect is patched in a test subclass, diffusers agrees with us.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omniguide import PAG, SEG, NoiseLevel, SkipLayer
from omniguide.core import BranchExecutor, GuidanceStep, ModelCall

diffusers = pytest.importorskip("diffusers")
from diffusers.guiders import (  # noqa: E402
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    SmoothedEnergyGuidance,
)
from diffusers.hooks import LayerSkipConfig  # noqa: E402
from diffusers.hooks.smoothed_energy_guidance_utils import (  # noqa: E402
    SmoothedEnergyGuidanceConfig,
    _gaussian_blur_2d,
)
from tiny_models import tiny_dit, tiny_unet  # noqa: E402

STEP, STEPS, T = 3, 10, 500
MID = "mid_block.attentions.0.transformer_blocks"


@pytest.fixture(scope="module")
def unet_case():
    """(model callable, module, sample, condition key, cond value, uncond value)."""
    unet = tiny_unet()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ec, eu = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    return (
        (lambda s, t, encoder_hidden_states: unet(s, t, encoder_hidden_states).sample),
        unet,
        x,
        "encoder_hidden_states",
        ec,
        eu,
    )


@pytest.fixture(scope="module")
def dit_case():
    dit = tiny_dit()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def f(s, t, class_labels):
        return dit(s, torch.as_tensor(t).reshape(-1).expand(s.shape[0]), class_labels=class_labels).sample

    return f, dit, x, "class_labels", torch.tensor([3]), torch.tensor([10])  # 10 = DiT's null class


def run_diffusers(guider, case):
    """The modular denoise loop for one step: one forward per pass, hooks around each pass."""
    f, module, x, key, cond, uncond = case
    guider.set_state(step=STEP, num_inference_steps=STEPS, timestep=torch.tensor(T))
    batches = guider.prepare_inputs({key: (cond, uncond)})
    with torch.no_grad():
        for batch in batches:
            guider.prepare_models(module)
            batch.noise_pred = f(x, T, **{key: getattr(batch, key)})
            guider.cleanup_models(module)
    out = guider(batches)
    return out.pred, {b.__guidance_identifier__: b.noise_pred for b in batches}


def run_ours(guider, case, batch=False):
    """Our executor; ``batch=False`` runs one forward per branch like diffusers' loop, so the two
    differ by rounding only (batching cond+uncond moves fp32 outputs by ~5e-6 on these models)."""
    f, module, x, key, cond, uncond = case
    step = GuidanceStep(x, NoiseLevel.vp(torch.tensor(0.5)), T, STEP, STEPS)
    executor = BranchExecutor(ModelCall(f, module=module), {"cond": {key: cond}, "uncond": {key: uncond}}, batch=batch,
                              defaults=guider.branch_defaults())
    with torch.no_grad():
        preds = executor(guider.branches(step), x, T, step)
    return guider.combine(preds, step).eps, {k: v.value for k, v in preds.items()}


def assert_far(a, b, atol=1e-3):
    assert (a - b).abs().max() > atol


# -- where the formulas agree: CFG on, perturbation on --------------------------------------------------
def test_pag_matches_diffusers_on_unet(unet_case):
    config = LayerSkipConfig(
        indices=[0], fqn=MID, skip_attention=False, skip_attention_scores=True, skip_ff=False
    )
    theirs, their_preds = run_diffusers(
        PerturbedAttentionGuidance(
            guidance_scale=5.0,
            perturbed_guidance_scale=3.0,
            perturbed_guidance_start=0.0,
            perturbed_guidance_stop=1.0,
            perturbed_guidance_config=config,
        ),
        unet_case,
    )
    ours, our_preds = run_ours(PAG(scale=5.0, perturbed_scale=3.0, layers="mid"), unet_case)
    torch.testing.assert_close(our_preds["perturbed"], their_preds["pred_cond_skip"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert_far(our_preds["perturbed"], our_preds["cond"])


def test_pag_matches_diffusers_on_dit(dit_case):
    theirs, _ = run_diffusers(
        PerturbedAttentionGuidance(
            guidance_scale=4.0,
            perturbed_guidance_scale=2.0,
            perturbed_guidance_start=0.0,
            perturbed_guidance_stop=1.0,
            perturbed_guidance_layers=[1],
        ),
        dit_case,
    )
    ours, _ = run_ours(PAG(scale=4.0, perturbed_scale=2.0, layers=1), dit_case)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "case_name,fqn,layers", [("dit_case", "transformer_blocks", 1), ("unet_case", MID, "mid")]
)
def test_skip_layer_matches_diffusers(case_name, fqn, layers, request):
    case = request.getfixturevalue(case_name)
    theirs, their_preds = run_diffusers(
        SkipLayerGuidance(
            guidance_scale=4.0,
            skip_layer_guidance_scale=2.8,
            skip_layer_guidance_start=0.0,
            skip_layer_guidance_stop=1.0,
            skip_layer_config=LayerSkipConfig(indices=[layers] if isinstance(layers, int) else [0], fqn=fqn),
        ),
        case,
    )
    ours, our_preds = run_ours(SkipLayer(scale=4.0, perturbed_scale=2.8, layers=layers), case)
    torch.testing.assert_close(our_preds["perturbed"], their_preds["pred_cond_skip"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert_far(our_preds["perturbed"], our_preds["cond"])


# -- defect #3: with CFG off diffusers' PAG / SLG never perturb ------------------------------------------
class FixedPAG(PerturbedAttentionGuidance):
    """diffusers' PAG with defect #3 patched: with CFG off, pass 2 is the perturbed pass and gets the
    conditional inputs (diffusers hands it tuple slot 1, the unconditional ones)."""

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared in (1, 3) or (self._count_prepared == 2 and not self._is_cfg_enabled())

    def prepare_inputs(self, data):
        batches = super().prepare_inputs(data)
        if self.num_conditions == 2 and not self._is_cfg_enabled():
            batches[1] = self._prepare_batch(data, 0, "pred_cond_skip")
        return batches


def clean_predictions(case):
    f, _, x, key, cond, uncond = case
    with torch.no_grad():
        return f(x, T, **{key: cond}), f(x, T, **{key: uncond})


def test_pag_at_cfg_scale_one(unet_case):
    """diffusers at guidance_scale=1: the 'perturbed' pass is the *unconditional* prediction, not
    perturbed, so its PAG becomes CFG with scale s. Ours: c + s (c - p) with p really perturbed."""
    config = dict(
        perturbed_guidance_start=0.0,
        perturbed_guidance_stop=1.0,
        perturbed_guidance_config=LayerSkipConfig(
            indices=[0], fqn=MID, skip_attention=False, skip_attention_scores=True, skip_ff=False
        ),
    )
    theirs, their_preds = run_diffusers(PerturbedAttentionGuidance(1.0, 3.0, **config), unet_case)
    c, u = clean_predictions(unet_case)
    assert list(their_preds) == ["pred_cond", "pred_cond_skip"]
    torch.testing.assert_close(their_preds["pred_cond_skip"], u, rtol=0, atol=1e-6)  # unperturbed uncond
    torch.testing.assert_close(theirs, u + 3.0 * (c - u), rtol=0, atol=1e-6)  # = CFG with w = s

    ours, our_preds = run_ours(PAG(scale=1.0, perturbed_scale=3.0, layers="mid"), unet_case)
    p = our_preds["perturbed"]
    torch.testing.assert_close(our_preds["cond"], c, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, c + 3.0 * (c - p), rtol=0, atol=1e-6)
    assert_far(p, c)
    assert_far(ours, theirs)

    # with both patched, diffusers' native form is p + s (c - p): ours with s - 1
    fixed, fixed_preds = run_diffusers(FixedPAG(1.0, 4.0, **config), unet_case)
    torch.testing.assert_close(fixed_preds["pred_cond_skip"], p, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, fixed, rtol=0, atol=1e-5)


def test_skip_layer_at_cfg_scale_one(dit_case):
    config = LayerSkipConfig(indices=[1], fqn="transformer_blocks")
    theirs, their_preds = run_diffusers(
        SkipLayerGuidance(1.0, 2.8, 0.0, 1.0, skip_layer_config=config), dit_case
    )
    c, u = clean_predictions(dit_case)
    torch.testing.assert_close(their_preds["pred_cond_skip"], u, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs, u + 2.8 * (c - u), rtol=0, atol=1e-5)
    ours, our_preds = run_ours(SkipLayer(scale=1.0, perturbed_scale=2.8, layers=1), dit_case)
    torch.testing.assert_close(ours, c + 2.8 * (c - our_preds["perturbed"]), rtol=0, atol=1e-5)
    assert_far(our_preds["perturbed"], c)


# -- defect #4: the `*_layers` int shorthand -----------------------------------------------------------
def test_layer_shorthand(dit_case):
    with pytest.raises(TypeError):
        run_diffusers(SkipLayerGuidance(4.0, 2.8, 0.0, 1.0, skip_layer_guidance_layers=[1]), dit_case)
    with pytest.raises(TypeError):
        run_diffusers(PerturbedAttentionGuidance(4.0, 2.0, 0.0, 1.0, perturbed_guidance_layers=1), dit_case)
    # ours: an int, a list of ints and a tuple mean the same
    results = [run_ours(SkipLayer(scale=4.0, layers=layers), dit_case)[0] for layers in (1, [1], (1,))]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# -- SEG: defects #1 and #2, and agreement once both are accounted for ------------------------------------
class FixedSEG(SmoothedEnergyGuidance):
    """diffusers' SEG with defect #1 patched: count the passes, so pass 3 gets the hook."""

    def prepare_models(self, denoiser):
        self._count_prepared += 1
        super().prepare_models(denoiser)


def seg_config():
    return SmoothedEnergyGuidanceConfig(indices=[0], fqn=MID)


def test_seg_never_applies_its_hook(unet_case):
    theirs, their_preds = run_diffusers(
        SmoothedEnergyGuidance(5.0, 3.0, seg_blur_sigma=1.0, seg_guidance_config=seg_config()), unet_case
    )
    assert list(their_preds) == ["pred_cond", "pred_uncond", "pred_cond_seg"]  # three passes, ...
    assert torch.equal(their_preds["pred_cond_seg"], their_preds["pred_cond"])  # ... none perturbed
    c, u = their_preds["pred_cond"], their_preds["pred_uncond"]
    torch.testing.assert_close(theirs, u + 5.0 * (c - u), rtol=0, atol=1e-6)  # plain CFG

    ours, our_preds = run_ours(SEG(scale=5.0, perturbed_scale=3.0, layers="mid"), unet_case)
    assert_far(our_preds["perturbed"], our_preds["cond"], atol=1e-4)
    assert_far(ours, theirs, atol=1e-4)


def test_seg_blur_branches_are_swapped_in_diffusers():
    """diffusers blurs with a Gaussian only *above* the infinity threshold and takes the mean below
    it; SEG-SDXL (and we) do the opposite."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 36, 5, generator=g)
    kernel = lambda sigma: math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2  # noqa: E731
    small = _gaussian_blur_2d(q.clone(), kernel(1.0), 1.0, 9999.0)
    torch.testing.assert_close(small, q.mean(dim=1, keepdim=True).expand_as(q))  # sigma = 1 -> the mean
    huge = _gaussian_blur_2d(q.clone(), kernel(1e7), 1e7, 9999.0)
    assert_far(huge, q.mean(dim=1, keepdim=True).expand_as(q), atol=1e-3)  # "infinite" -> not the mean
    # what diffusers runs above the threshold is the Gaussian formula (7 taps clipped to the 6x6 grid,
    # reflect padding): where the formulas agree, so do the numbers
    taps = np.exp(-0.5 * (np.linspace(-3, 3, 7) / 1e7) ** 2)
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    grid = np.pad(q[0].reshape(6, 6, 5).double().numpy(), ((3, 3), (3, 3), (0, 0)), mode="reflect")
    ref = np.stack(
        [np.einsum("ab,abc->c", kernel, grid[i : i + 7, j : j + 7]) for i in range(6) for j in range(6)]
    )
    np.testing.assert_allclose(huge[0].numpy(), ref, atol=1e-5)


def test_seg_matches_diffusers_once_defects_are_accounted_for(unet_case):
    """Patch #1 and feed diffusers sigma = 1 (which its swapped branch turns into the mean): equal
    to our SEG with blur_sigma = inf, the paper's infinite blur, on a square 4x4 token grid."""
    theirs, their_preds = run_diffusers(
        FixedSEG(5.0, 3.0, seg_blur_sigma=1.0, seg_guidance_config=seg_config()), unet_case
    )
    ours, our_preds = run_ours(
        SEG(scale=5.0, perturbed_scale=3.0, layers="mid", blur_sigma=math.inf), unet_case
    )
    torch.testing.assert_close(our_preds["perturbed"], their_preds["pred_cond_seg"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_seg_layer_shorthand_crashes_once_the_hook_runs(dit_case):
    with pytest.raises(TypeError):
        run_diffusers(FixedSEG(5.0, 3.0, seg_guidance_layers=0), dit_case)
    ours, preds = run_ours(SEG(scale=5.0, perturbed_scale=3.0, layers=0), dit_case)
    assert_far(preds["perturbed"], preds["cond"], atol=1e-4)


def test_seg_non_square_grid(unet_case):
    """On an 8x16 latent (4x8 = 32 mid-block tokens) diffusers blurs only the first isqrt(32)^2 = 25
    tokens as a 5x5 square; we average over the 4x8 grid."""
    f, unet, _, key, ec, eu = unet_case
    x = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    case = (f, unet, x, key, ec, eu)
    _, theirs = run_diffusers(FixedSEG(5.0, 3.0, seg_blur_sigma=1.0, seg_guidance_config=seg_config()), case)
    _, ours = run_ours(SEG(scale=5.0, perturbed_scale=3.0, layers="mid"), case)
    assert_far(ours["perturbed"], theirs["pred_cond_seg"], atol=1e-5)
