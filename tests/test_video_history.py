"""History guidance as weighted branch tables: hand-computed weights for every scheme (DFoT's
``history_guidance.py`` re-derived in the test), materialized per-frame levels (stabilization,
noised and masked history), merging counted in forward passes, predictions combined, and the
reference code's defect (generated history left unguided) pinned."""

from __future__ import annotations

import pytest
import torch

from omniguide import ConfigError, GuidanceError, Interval
from omniguide.core.guider import GuidanceStep
from omniguide.core.model_call import ModelCall
from omniguide.core.noise import NoiseLevel, NoiseSchedule
from omniguide.core.registry import build_guider
from omniguide.core.schedulers import build_scheduler
from omniguide.modalities.video.history import HistoryGuidance, Key, Segment
from omniguide.modalities.video.protocol import GENERATED, GIVEN, History, HistoryDenoiser, stabilization_levels
from omniguide.modalities.video.rollout import Rollout, RolloutPlan

G, N = False, True            # given / generated, as the tables see them
STATE = (GIVEN, GIVEN, GENERATED, GENERATED)


def weights(guider, generated=(G, G, N, N)):
    return {(k.levels, k.drop): float(w) for k, w in guider.composed(generated).items() if float(w) != 0.0}


def test_vanilla_fractional_temporal_tables_by_hand():
    # HG-v: s(x|∅) + w [s(x|h) - s(x|∅)], the masked branch also drops the caption
    assert weights(HistoryGuidance(scheme="vanilla", scale=3.0)) == {
        ((0.0,) * 4, False): 3.0, ((1.0,) * 4, True): -2.0}
    # HG-f: s(x|h) + (w - 1)[s(x|h~_k) - s(x|∅)]
    assert weights(HistoryGuidance(scheme="fractional", scale=3.0, k=0.4)) == {
        ((0.0,) * 4, False): 1.0, ((0.4,) * 4, False): 2.0, ((1.0,) * 4, True): -2.0}
    # HG-t: s(x|∅) + sum_i w_i [s(x|h_Hi) - s(x|∅)]; subsets by (negative) frame index
    assert weights(HistoryGuidance(scheme="temporal", subsets=[[-1], "all", [0, 1]], weights=[1.5, 2.0, 0.5])) == {
        ((1.0, 1.0, 1.0, 0.0), False): 1.5, ((0.0,) * 4, False): 2.0, ((0.0, 0.0, 1.0, 1.0), False): 0.5,
        ((1.0,) * 4, True): 1.0 - 4.0}
    # conditional: one branch, never drops the caption
    assert weights(HistoryGuidance(scheme="conditional")) == {((0.0,) * 4, False): 1.0}
    # without dropping the condition the masked branch keeps the caption
    assert weights(HistoryGuidance(scheme="vanilla", scale=3.0, drop_condition=False)) == {
        ((0.0,) * 4, False): 3.0, ((1.0,) * 4, False): -2.0}


def test_text_cfg_composes_inside_the_table():
    # HG-v (w = 3) + text CFG (w_t = 4) on the full-history branch:
    #   s(∅,∅c) + 3 [s(h,c) - s(∅,∅c)] + 3 [s(h,c) - s(h,∅c)]
    assert weights(HistoryGuidance(scheme="vanilla", scale=3.0, text_scale=4.0), (G, N)) == {
        ((0.0, 0.0), False): 6.0, ((1.0, 1.0), True): -2.0, ((0.0, 0.0), True): -3.0}


def test_custom_segments_follow_dfot_rules():
    # rule 2 (two ranges interpolated over the chosen frames) and ranges_if_generated
    seg = Segment(frames=None, ranges=((0.0, 1.0), (0.4, 1.0)), ranges_if_generated=((0.1, 1.0),))
    assert seg.levels((G, G, N)) == ((0.0, 0.2, 0.1), (1.0, 1.0, 1.0))
    # frames outside a segment are masked in both of its branches
    assert Segment(frames=(-1,), ranges=((0.2, 0.8),)).levels((G, G, G)) == ((1.0, 1.0, 0.2), (1.0, 1.0, 0.8))
    guider = build_guider({"name": "history", "scheme": "custom", "weights": [2.0, -0.5], "segments": [
        {"frames": "all", "ranges": "all"}, {"frames": [-2, -1], "ranges": [[0.3, 0.6]]}]})
    # ∅ + 2[(0,0,0) - ∅] - 0.5[(1,0.3,0.3) - (1,0.6,0.6)|null]
    assert weights(guider, (G, G, N)) == {((0.0,) * 3, False): 2.0, ((1.0,) * 3, True): -1.0,
                                          ((1.0, 0.3, 0.3), False): -0.5, ((1.0, 0.6, 0.6), True): 0.5}
    assert abs(sum(weights(guider, (G, G, N)).values()) - 1.0) < 1e-12


def test_weights_sum_to_one_for_every_scheme_and_explicit_tables_are_checked():
    for guider in (HistoryGuidance(scheme="vanilla", scale=4.5), HistoryGuidance(scheme="fractional", scale=2.5, k=0.7),
                   HistoryGuidance(scheme="temporal", subsets=[[0], [1, 2]], weights=[0.3, 2.2], text_scale=2.0)):
        assert abs(sum(weights(guider, (G, N, N)).values()) - 1.0) < 1e-12
    ok = HistoryGuidance(scheme="custom", table=[{"levels": 0.0, "weight": 2.5}, {"levels": [1, 1], "drop": True,
                                                                                 "weight": -1.5}])
    assert weights(ok, (G, N)) == {((0.0, 0.0), False): 2.5, ((1.0, 1.0), True): -1.5}
    with pytest.raises(ConfigError, match=r"^table: history table weights must sum to 1, they sum to 1.5$"):
        HistoryGuidance(scheme="custom", table=[{"levels": 0.0, "weight": 2.5}, {"levels": 1.0, "weight": -1.0}])
    with pytest.raises(ConfigError, match="unknown history guidance scheme 'vanila'"):
        HistoryGuidance(scheme="vanila")
    with pytest.raises(GuidanceError, match="segment 0: frame 5 is outside a history of 3 frames"):
        HistoryGuidance(scheme="temporal", subsets=[[5]], weights=[1.0]).composed((G, G, G))


def test_scales_resolve_per_step_and_tensor_scales_are_per_frame():
    step = GuidanceStep(torch.zeros(1, 1, 2, 1, 1), NoiseLevel.flow(torch.tensor(0.5)), None, 0, 10)
    ramp = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)          # per generated frame
    table = HistoryGuidance(scheme="vanilla", scale=ramp).composed((G,), step)
    torch.testing.assert_close(table[Key((0.0,), False)], ramp)
    torch.testing.assert_close(table[Key((1.0,), True)], 1 - ramp)


def history(state=STATE, stabilization=0.0, frames=None):
    frames = torch.arange(len(state), dtype=torch.float32).view(1, 1, -1, 1, 1).expand(2, 3, -1, 2, 2).clone() \
        if frames is None else frames
    noise = torch.full_like(frames, 10.0)
    return History(frames, state, noise, NoiseSchedule.flow(1000), stabilization=stabilization)


def test_history_inputs_clean_noised_masked_on_a_flow_path():
    h = history()
    inputs = h.inputs((0.0, 0.25, 1.0, 0.5))
    x = inputs["history"][0, 0, :, 0, 0]
    # x_k = (1 - k) x0 + k noise with x0 = frame index and noise = 10
    torch.testing.assert_close(x, torch.tensor([0.0, 0.75 * 1 + 2.5, 10.0, 0.5 * 3 + 5.0]))
    torch.testing.assert_close(inputs["history_timestep"], torch.tensor([[0.0, 250.0, 1000.0, 500.0]] * 2))
    assert inputs["history_at"] == (0, 1, 2, 3)
    with pytest.raises(GuidanceError, match=r"levels \(0.0, 1.5\) must lie in \[0, 1\]"):
        history((GIVEN, GIVEN)).inputs((0.0, 1.5))


def test_stabilization_per_frame_older_noisier():
    assert stabilization_levels((GIVEN, GENERATED, GENERATED, GENERATED), [0.1, 0.02]) == (0.0, 0.1, 0.06, 0.02)
    assert stabilization_levels((GENERATED, GIVEN), 0.02) == (0.02, 0.0)
    # stabilized HG-v: generated frames fed at their stabilization level in the clean branch (DFoT's
    # freq_ranges_if_generated = (k_s, 1)); the masked branch masks them like given ones
    guider = HistoryGuidance(scheme="stabilized_vanilla", scale=2.0)
    guider.bind(history(stabilization=[0.1, 0.02]), {"caption": "null"})
    branches = guider.branch_defaults()
    assert branches["cond"].inputs["history_timestep"][0].tolist() == [0.0, 0.0, 100.0, 20.0]
    masked = branches["history(1,1,1,1)|null"]
    assert masked.inputs["history_timestep"][0].tolist() == [1000.0] * 4 and masked.inputs["caption"] == "null"
    # stabilized HG-f: the low-frequency branch noises every frame to k (no stabilization there)
    frac = HistoryGuidance(scheme="stabilized_fractional", scale=2.0, k=0.5)
    frac.bind(history(stabilization=0.02), {})
    assert frac.branch_defaults()["history(0.5,0.5,0.5,0.5)"].inputs["history_timestep"][0].tolist() == [500.0] * 4
    assert frac.branch_defaults()["cond"].inputs["history_timestep"][0].tolist() == [0.0, 0.0, 20.0, 20.0]


class MixingNet(torch.nn.Module):
    """A tiny full-sequence 'denoiser' whose output depends on every frame's content and level:
    each frame predicts the level-weighted mean of the window plus its own timestep / 1000."""

    config = type("C", (), {"max_frames": 8})()

    def forward(self, window, timestep, caption=None):
        w = (1 - timestep / 1000).view(*timestep.shape[:2]).unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
        mean = (window * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp_min(1e-3)
        bias = 0.0 if caption is None else caption.float().view(-1, 1, 1, 1, 1)
        return mean + timestep.view(*timestep.shape[:2]).unsqueeze(1).unsqueeze(-1).unsqueeze(-1) / 1000 + bias


def test_history_denoiser_places_history_and_checks_the_window():
    net = MixingNet()
    model = HistoryDenoiser(net)
    sample = torch.zeros(1, 1, 2, 1, 1)
    hist = torch.ones(1, 1, 3, 1, 1)
    out = model(sample, 400.0, history=hist, history_timestep=torch.tensor([[0.0, 0.0, 1000.0]]), history_at=(0, 1, 4))
    # window = [h, h, x, x, h(masked)], weights (1, 1, 0.6, 0.6, 0) -> mean 2 / 3.2; + 0.4
    torch.testing.assert_close(out.flatten(), torch.full((2,), 2 / 3.2 + 0.4))
    with pytest.raises(GuidanceError,
                       match="history of 7 frames plus 2 to generate is longer than the model's window of 8"):
        model(sample, 400.0, history=torch.ones(1, 1, 7, 1, 1), history_timestep=torch.zeros(1, 7))


def rollout(guider, given, total=12, context=4, chunk=4, steps=2, stabilization=0.0):
    model = ModelCall(HistoryDenoiser(MixingNet()), module=None)
    roll = Rollout(model, build_scheduler("flow-euler"), guider, RolloutPlan(8, context, chunk),
                   NoiseSchedule.flow(1000),
                   conditions={"caption": torch.ones(given.shape[0])}, null={"caption": torch.zeros(given.shape[0])},
                   steps=steps, stabilization=stabilization, progress=False)
    frames = []
    result = roll(given, total, lambda f, s: frames.append(f), torch.Generator().manual_seed(0))
    return torch.cat(frames, dim=2), result


def test_predictions_are_combined_with_the_table_weights():
    """One window: the guided prediction equals sum_i w_i pred_i of the branches, each computed by hand."""
    given = torch.randn(2, 1, 4, 1, 1, generator=torch.Generator().manual_seed(1))
    guider = HistoryGuidance(scheme="fractional", scale=2.5, k=0.5)
    seen = {}

    def callback(i, step, result, preds):
        seen.setdefault("step", (step, result, preds))
    model = ModelCall(HistoryDenoiser(MixingNet()), module=None)
    roll = Rollout(model, build_scheduler("flow-euler"), guider, RolloutPlan(8, 4, 4), NoiseSchedule.flow(1000),
                   conditions={"caption": torch.ones(2)}, null={"caption": torch.zeros(2)}, steps=2, progress=False)
    import omniguide.modalities.video.rollout as R
    original = R.sample

    def spy(*args, **kwargs):
        return original(*args, **{**kwargs, "callback": callback})
    R.sample = spy
    try:
        roll(given, 8, lambda f, s: None, torch.Generator().manual_seed(0))
    finally:
        R.sample = original
    step, result, preds = seen["step"]
    assert set(preds) == {"cond", "history(0.5,0.5,0.5,0.5)", "history(1,1,1,1)|null"}
    expected = preds["cond"].value + 1.5 * (preds["history(0.5,0.5,0.5,0.5)"].value
                                            - preds["history(1,1,1,1)|null"].value)
    torch.testing.assert_close(result.to("flow"), expected)
    # the masked branch dropped the caption (bias 0), the others kept it (bias 1)
    x = step.x
    assert not torch.allclose(preds["cond"].value, preds["history(1,1,1,1)|null"].value)
    assert x.shape == (2, 1, 4, 1, 1)


def test_merged_branches_cost_one_evaluation_and_are_counted():
    given = torch.randn(1, 1, 4, 1, 1, generator=torch.Generator().manual_seed(2))
    # the same subset twice: one table entry of weight 2 (table merge)
    _, twice = rollout(HistoryGuidance(scheme="temporal", subsets=["all", "all"], weights=[1.0, 1.0]), given, total=8)
    _, once = rollout(HistoryGuidance(scheme="vanilla", scale=2.0), given, total=8)
    assert twice.nfe == once.nfe == 2 * 2 and twice.forward_passes == 2     # 2 branches x 2 steps, batched
    # two keys that materialize to the same inputs (explicit level 0.02 == the stabilization level of
    # generated frames, and level 0 of given frames) are merged by the executor: 3 keys, 2 evaluations
    table = HistoryGuidance(scheme="custom", weights=[1.0, 1.0], segments=[
        {"frames": "all", "ranges": "all"}, {"frames": "all", "ranges": "all", "ranges_if_generated": [[0.02, 1.0]]}])
    table.bind(history((GENERATED,) * 4, stabilization=0.02), {})
    assert len([k for k, w in table.composed((N,) * 4).items() if w != 0]) == 3
    frames, merged = rollout(table, given, total=12, stabilization=0.02)
    assert merged.window_log[1]["generated_history"] == 4
    assert merged.window_log[1]["nfe"] == 2 * 2      # cond and masked; the 0.02-key merged into cond


def test_generated_history_is_guided_and_the_reference_defect_is_pinned():
    """DFoT issue #4 / commit 2afc548: the simple manager masked only ground-truth history
    (``mask == 1``) in the unconditional branch, so once the history was all generated, the
    'unconditional' branch equalled the conditional one and guidance did nothing."""
    state = (GENERATED,) * 4

    def defective_uncond_levels(state):            # the reference code before the fix
        return tuple(1.0 if s == GIVEN else 0.0 for s in state)
    assert defective_uncond_levels(state) == (0.0,) * 4          # = the conditional branch: no guidance
    table = HistoryGuidance(scheme="vanilla", scale=3.0).composed(tuple(s == GENERATED for s in state))
    assert Key((1.0,) * 4, True) in table and float(table[Key((1.0,) * 4, True)]) == -2.0
    # end to end: the second window (all history generated) changes with the guidance weight
    given = torch.randn(1, 1, 4, 1, 1, generator=torch.Generator().manual_seed(3))
    plain, _ = rollout(HistoryGuidance(scheme="conditional"), given)
    guided, result = rollout(HistoryGuidance(scheme="vanilla", scale=3.0), given)
    assert [w["generated_history"] for w in result.window_log] == [0, 4]
    assert (guided[:, :, 8:] - plain[:, :, 8:]).abs().max() > 1e-3
    assert result.window_log[1]["nfe"] == 2 * 2


def test_history_guidance_composes_with_core_wrappers():
    given = torch.randn(1, 1, 4, 1, 1, generator=torch.Generator().manual_seed(4))
    guider = Interval(HistoryGuidance(scheme="vanilla", scale=3.0), step=(0.0, 0.0))
    _, result = rollout(guider, given, total=8, steps=3)
    assert result.nfe == 2 + 1 + 1           # guided at the first step only, conditional after
    plain, _ = rollout(HistoryGuidance(scheme="conditional"), given, total=8, steps=3)
    same, _ = rollout(HistoryGuidance(scheme="vanilla", scale=1.0), given, total=8, steps=3)
    torch.testing.assert_close(same, plain)    # w = 1 is the conditional table (one branch)
