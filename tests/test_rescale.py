"""The Rescale wrapper: Lin et al.'s std rescale of any guider's prediction (diffusers' guidance_rescale)."""

import pytest
import torch

from omniguide import APG, CFG, CFGPlusPlus, CFGRescale, GuidanceError, Rescale
from omniguide.core import Axes, GuidanceStep, NoiseLevel, Prediction


def step_and_preds(kind="v"):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    noise = NoiseLevel.vp(torch.tensor(0.4, dtype=torch.float64))
    c, u = (torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    step = GuidanceStep(x, noise, None, 2, 10, Axes.from_layout("BCHW"))
    return step, {"cond": Prediction(c, kind, x, noise), "uncond": Prediction(u, kind, x, noise)}


def test_rescale_of_cfg_is_cfg_rescale():
    step, preds = step_and_preds()
    ours = Rescale(CFG(5.0), rescale=0.7, space="v").combine(preds, step).eps
    torch.testing.assert_close(ours, CFGRescale(5.0, rescale=0.7, space="v").combine(preds, step).eps)


def test_rescale_formula_on_apg_recomputed():
    step, preds = step_and_preds()
    inner = APG(4.0, eta=0.2).combine(preds, step).to("v")
    c = preds["cond"].value
    dims = (1, 2, 3)
    expected = 0.6 * inner * c.std(dim=dims, keepdim=True) / inner.std(dim=dims, keepdim=True) + 0.4 * inner
    out = Rescale(APG(4.0, eta=0.2), rescale=0.6).combine(preds, step).to("v")
    torch.testing.assert_close(out, expected)


def test_rescale_refuses_an_inconsistent_pair_and_passes_cond_through():
    step, preds = step_and_preds()
    with pytest.raises(GuidanceError, match="rescale: cfg\\+\\+ returns an inconsistent"):
        Rescale(CFGPlusPlus(0.5)).combine(preds, step)
    only = {"cond": preds["cond"]}
    torch.testing.assert_close(Rescale(CFG(1.0)).combine(only, step).to("v"), preds["cond"].value)
    assert Rescale(CFG(1.0)).branches(step) == ("cond",)


@pytest.mark.parametrize("name", ["cfg-rescale", "apg", "tcfg", "cfg-zero-star"])
def test_space_none_is_the_models_own_output_for_every_space_taking_guider(name):
    """``space: null`` (diffusers' behaviour: the model's own output) is accepted alike, in code and recipes."""
    from omniguide.core.registry import build_guider

    assert build_guider({"name": name, "space": None}).space is None


def test_cfg_rescale_with_space_none_rescales_the_models_own_output():
    step, preds = step_and_preds(kind="eps")
    c, u = preds["cond"].value, preds["uncond"].value
    g = u + 5.0 * (c - u)
    dims = (1, 2, 3)
    expected = 0.7 * g * c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True) + 0.3 * g
    torch.testing.assert_close(CFGRescale(5.0, rescale=0.7, space=None).combine(preds, step).eps, expected)
    v_space = CFGRescale(5.0, rescale=0.7, space="v").combine(preds, step).eps
    assert (v_space - expected).abs().max() > 1e-3          # the space matters: None is not v
