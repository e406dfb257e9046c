"""MusicGen (a tiny random model built from configs, saved and reloaded) guided on its logits: CFG equals
transformers' own ``guidance_scale`` to 1e-5 (batch of prompts, several samples each), intervals and
schedules over decoding steps, rescale / APG on the logits, negative prompts, refusals, and the
``musicgen`` sample model in a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_audio as TA
import torch
from guider_names import core_guider_names
from test_adapter import METHODS_II

from omniguide import APG, CFG, GuidanceError, build_guider
from omniguide.modalities.audio.musicgen import GuidedLogitsProcessor, guide_musicgen

PROMPTS = ["a rising chirp", "a rising chirp", "piano music", "piano music"]   # 2 prompts x 2 samples
KW = dict(do_sample=True, max_new_tokens=8, output_scores=True, return_dict_in_generate=True)


@pytest.fixture(scope="module")
def musicgen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("musicgen")
    model, processor = TA.musicgen(folder)
    return model, processor, folder


def generate(model, inputs, seed=0, **kwargs):
    torch.manual_seed(seed)
    return model.generate(**inputs, **{**KW, **kwargs})


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.scores, b.scores))


def test_cfg_reproduces_transformers_guidance_scale(musicgen):
    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS, padding=True, return_tensors="pt")
    theirs = generate(model, inputs, guidance_scale=3.0)
    with guide_musicgen(model, CFG(scale=3.0)) as handle:
        ours = generate(model, inputs)
    assert max_diff(ours, theirs) < 1e-5
    torch.testing.assert_close(ours.sequences, theirs.sequences, rtol=0, atol=1e-5)
    assert handle.nfe_per_step == [2] * 8 and handle.guided_steps == 8
    plain = generate(model, inputs, guidance_scale=1.0)
    assert max_diff(plain, theirs) > 1e-4                     # guidance changed the logits
    assert "generate" not in model.__dict__                    # restored


def test_interval_and_schedule_over_decoding_steps(musicgen):
    """An interval over the step coordinate leaves the steps outside it unguided (the conditional
    logits), and t = 1 - step runs from 1 at the first token to 0 at the last."""
    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    guider = build_guider({"name": "interval", "guider": {"name": "cfg", "scale": 4.0}, "step": [0.0, 0.45]})
    with guide_musicgen(model, guider) as handle:
        ours = generate(model, inputs)
    assert handle.guided_steps == 4 and handle.nfe == 16           # steps 0..3 of 8; the batch is doubled anyway
    with guide_musicgen(model, CFG(scale=4.0)):
        full = generate(model, inputs)
    unguided = generate(model, inputs, guidance_scale=1.0)
    assert float((ours.scores[0] - full.scores[0]).abs().max()) < 1e-6
    assert float((ours.scores[0] - unguided.scores[0]).abs().max()) > 1e-4
    processor_ = GuidedLogitsProcessor(CFG(scale=2.0), num_steps=5)
    ts = []
    for i in range(5):
        processor_.index = i
        ts.append(float(processor_.step(torch.zeros(2, 4)).coordinate("t")))
    assert ts == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    schedule = build_guider({"name": "schedule", "guider": {"name": "cfg", "scale": 4.0}, "shape": "linear"})
    with guide_musicgen(model, schedule):
        scheduled = generate(model, inputs)
    assert max_diff(scheduled, full) > 1e-5


def test_rescale_and_apg_act_on_the_logits(musicgen):
    """One step by hand: rescale matches the std of each row to the conditional row's; APG removes the
    update's component along the conditional logits (per row, over the vocabulary)."""
    cond = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    uncond = cond + 0.3 * torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(3, 1, dtype=torch.long)
    rescaled = GuidedLogitsProcessor(build_guider({"name": "cfg-rescale", "scale": 5.0, "rescale": 1.0}), 4)(
        ids, torch.cat([cond, uncond]))
    torch.testing.assert_close(rescaled.std(1), cond.std(1), rtol=1e-5, atol=1e-5)
    apg = GuidedLogitsProcessor(APG(scale=5.0, space=None), 4)(ids, torch.cat([cond, uncond]))
    update = (apg - cond) / 4.0
    torch.testing.assert_close((update * cond).sum(1), torch.zeros(3), rtol=0, atol=1e-4)


def test_negative_prompt_replaces_the_null_states(musicgen):
    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    negative = processor(text=["a dog barking in the rain"], return_tensors="pt")
    seen = []
    hook = model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        with guide_musicgen(model, CFG(scale=3.0), negative=negative):
            with_negative = generate(model, inputs)
    finally:
        hook.remove()
    states = seen[0]
    assert states.shape[0] == 4 and states[2:].abs().sum() > 0              # not the zeros of the default
    with guide_musicgen(model, CFG(scale=3.0)):
        default = generate(model, inputs)
    assert max_diff(with_negative, default) > 1e-5


def test_every_guider_runs_or_is_refused_in_one_line(musicgen):
    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    refused = {"pag", "seg", "skip-layer", "autoguidance", "cfg++"}
    special = {"adaptive": {"guider": {"name": "cfg", "scale": 3.0}},
               "interval": {"guider": {"name": "cfg", "scale": 3.0}, "step": [0.0, 0.7]},
               "schedule": {"guider": {"name": "cfg", "scale": 3.0}}, "terms": {"terms": {"uncond": 2.0}},
               "fdg": {"transform": "fft"}, "autoguidance": {"scale": 2.0, "weak_model": torch.nn.Identity()},
               "cfg-zero-star": {"scale": 3.0, "zero_init_steps": 0}, "cfg++": {"scale": 0.5},
               "rescale": {"guider": {"name": "apg", "scale": 3.0}, "rescale": 0.7}}
    plain = generate(model, inputs, guidance_scale=1.0, max_new_tokens=4)
    for name in sorted(core_guider_names() - METHODS_II):   # Methods II: not yet checked on logits
        guider = build_guider({"name": name, **special.get(name, {"scale": 3.0})})
        if name in refused:
            with pytest.raises(GuidanceError) as err:
                with guide_musicgen(model, guider):
                    generate(model, inputs, max_new_tokens=4)
            assert "\n" not in str(err.value)
            continue
        with guide_musicgen(model, guider):
            out = generate(model, inputs, max_new_tokens=4)
        assert all(torch.isfinite(s).any(-1).all() for s in out.scores), name
        assert max_diff(out, plain) > 1e-6, name
    with guide_musicgen(model, CFG(scale=3.0)):
        with pytest.raises(GuidanceError, match=r"generate\(guidance_scale=3.0\) is MusicGen's own CFG scale"):
            generate(model, inputs, guidance_scale=3.0)


# -- Methods II on the logits ----------------------------------------------------------------------------
# Methods II guiders the logits processor refuses, with their one-line reason: it sees only the logits of the
# decoder batch -- no model to perturb (time embedding, tokens, blocks, attention), no other model, no
# condition redrawn at every step, no second round within a step, no diffusion sample, no autograd
MUSICGEN_REFUSED = {
    "tsg": "runs the model under TimestepNoiseSchedule", "tpg": "runs the model under ShuffledTokens",
    "s2-guidance": "runs the model under DroppedBlocks", "nag": "runs the model under NormalizedAttention",
    "vsf": "runs the model under FlippedValues", "pladis": "runs the model under SparseAttention",
    "prior-guidance": "calls another model", "icg": "whose condition is drawn afresh at every step",
    "sag": "runs follow-up branches", "gfcg": "runs follow-up branches",
    "residual-cfg": "needs a noisy sample x_t", "scorer-guidance": "needs autograd on the sample"}


def test_methods2_guiders_on_the_logits(musicgen):
    """Every Methods II guider (test_adapter's settings) with a named negative prompt, so the decoder batch
    is [cond; uncond; negative] (NFE 3 per step): the combine rules run and change the logits, the others
    are refused in one line naming why, and Perp-Neg without its negative prompt names the fix."""
    from test_adapter import guider_configs

    from omniguide.core.methods import PerpNeg

    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    negative = processor(text=["a dog barking in the rain"], return_tensors="pt")
    plain = generate(model, inputs, guidance_scale=1.0, max_new_tokens=4)
    ran = []
    for key, guider in guider_configs(torch.nn.Identity(), torch.zeros(1, 4, 16)).items():
        if key not in METHODS_II:
            continue
        if key in MUSICGEN_REFUSED:
            with pytest.raises(GuidanceError, match=MUSICGEN_REFUSED[key]) as err:
                with guide_musicgen(model, guider, prompts={"negative": negative}):
                    generate(model, inputs, max_new_tokens=4)
            assert "\n" not in str(err.value)
            continue
        with guide_musicgen(model, guider, prompts={"negative": negative}) as handle:
            out = generate(model, inputs, max_new_tokens=4)
        assert all(torch.isfinite(s).any(-1).all() for s in out.scores), key
        assert max_diff(out, plain) > 1e-6, key
        assert handle.nfe_per_step == [3] * 4, (key, handle.nfe_per_step)
        ran.append(key)
    assert sorted(ran) == ["cfg-norm", "fresca", "magnitude-aware", "momentum", "perp-neg", "scale-search", "smc-cfg"]
    with pytest.raises(GuidanceError, match=r"branch 'negative' is needed at step 0 but not defined \(defined: cond, "
                                            r"uncond\); MusicGen's batch holds 'cond' and 'uncond' \(add a prompt "
                                            r"with guide_musicgen\(prompts="):
        with guide_musicgen(model, PerpNeg(3.0)):
            generate(model, inputs, max_new_tokens=4)


def test_methods2_combines_match_their_formulas_on_the_logits():
    """One step by hand, per row over the vocabulary: Perp-Neg ``u + w (d - perp(n - u, d))``, magnitude-aware
    ``u + w' (c - u)`` with ``w' = 1 + (w - 1) exp(-a ||c - u|| / ||u||)``, CFG-norm ``g min(1, ||c|| / ||g||)``."""
    from omniguide.core.methods import CFGNorm, MagnitudeAware, PerpNeg

    g = torch.Generator().manual_seed(0)
    c, u, n = (torch.randn(3, 16, generator=g) for _ in range(3))
    ids = torch.zeros(3, 1, dtype=torch.long)
    d, dn = c - u, n - u
    perp = dn - (dn * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True) * d
    out = GuidedLogitsProcessor(PerpNeg(3.0, negatives={"negative": 0.7}), 4, branches=("cond", "uncond", "negative"))(
        ids, torch.cat([c, u, n]))
    torch.testing.assert_close(out, u + 3.0 * (d - 0.7 * perp), rtol=1e-5, atol=1e-5)
    out = GuidedLogitsProcessor(MagnitudeAware(5.0, alpha=2.0), 4)(ids, torch.cat([c, u]))
    w = 1 + 4.0 * torch.exp(-2.0 * d.norm(dim=1, keepdim=True) / u.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out, u + w * d, rtol=1e-5, atol=1e-5)
    out = GuidedLogitsProcessor(CFGNorm(5.0), 4)(ids, torch.cat([c, u]))
    guided = u + 5.0 * d
    torch.testing.assert_close(out, guided * (c.norm(dim=1, keepdim=True) / guided.norm(dim=1, keepdim=True)).clamp(
        max=1.0), rtol=1e-5, atol=1e-5)


def test_a_named_prompt_is_a_block_of_the_decoder_batch(musicgen):
    """``prompts={"negative": ...}`` runs the decoder on [cond; uncond; negative]: the negative rows see the
    negative prompt's text states (the unconditional ones stay transformers' zeros), and at the first step
    the negative and conditional rows' logits are those the model gives each prompt on its own."""
    from omniguide.core.methods import PerpNeg

    model, processor, _ = musicgen
    inputs = processor(text=PROMPTS[:2], padding=True, return_tensors="pt")
    text = "a dog barking in the rain"
    seen, states = [], []

    class Spy(PerpNeg):
        def combine(self, preds, step):
            seen.append({name: p.value.clone() for name, p in preds.items()})
            return super().combine(preds, step)

    hook = model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: states.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        with guide_musicgen(model, Spy(3.0), prompts={"negative": processor(text=[text], return_tensors="pt")}):
            generate(model, inputs, max_new_tokens=2)
    finally:
        hook.remove()
    assert states[0].shape[0] == 6 and states[0][2:4].abs().sum() == 0 and (states[0][4:].abs().sum(-1) > 0).any()
    alone = generate(model, processor(text=[text, text], return_tensors="pt"), guidance_scale=1.0, max_new_tokens=1)
    torch.testing.assert_close(seen[0]["negative"], alone.scores[0].float(), rtol=0, atol=1e-5)
    cond = generate(model, inputs, guidance_scale=1.0, max_new_tokens=1)
    torch.testing.assert_close(seen[0]["cond"], cond.scores[0].float(), rtol=0, atol=1e-5)
    assert "prepare_inputs_for_generation" not in model.__dict__              # restored


def test_musicgen_sample_recipe_writes_wavs(musicgen, tmp_path, capsys):
    from omniguide.recipes.cli import main

    _, _, folder = musicgen
    recipe = tmp_path / "musicgen.yaml"
    recipe.write_text(f"""kind: sample
model: {{name: musicgen, path: {folder}, call: {{max_new_tokens: 6}}}}
guider: {{preset: musicgen}}
negative_prompt: noise
prompts: ["a rising chirp", {{prompt: "piano music", num_samples: 2, guider: {{preset: null, name: apg, scale: 4.0}}}}]
output: {{format: float}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}}
""")
    rc = main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    metas = [json.loads(p.read_text()) for p in sorted((run_dir / "items").glob("*.json"))]
    assert [len([f for f in m["files"] if f.endswith(".wav")]) for m in metas] == [1, 2]
    assert metas[0]["nfe"] == 12 and metas[0]["rate"] == 8000
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["clips"] == 3 and metrics["audio_seconds"] > 0
    long = recipe.read_text().replace("max_new_tokens: 6", "audio_length_in_s: 600")
    recipe.write_text(long)
    rc = main(["validate", str(recipe)])
    _, err = capsys.readouterr()
    assert rc != 0 and "cannot be produced by this model (at most 62 frames" in err



def test_logits_have_no_noise_level():
    """A decoding step carries no noise level: a prediction is its own value in every parameterization, t and
    step run over the decoding steps, and a guider that reads sigma is refused in one line before generation."""
    from omniguide import Interval, Terms
    from omniguide.core.prediction import Prediction

    step = GuidedLogitsProcessor(CFG(2.0), num_steps=5).step(torch.zeros(2, 4))
    assert step.noise is None
    logits = torch.randn(2, 4)
    pred = Prediction(logits, "x0", step.x, step.noise)
    assert all(pred.to(kind) is logits for kind in ("x0", "eps", "v", "flow"))
    assert float(step.coordinate("t")) == 1.0 and float(step.coordinate("step")) == 0.0
    with pytest.raises(GuidanceError, match=r"^'sigma' does not exist at step 0: it has no noise level \(logits\)$"):
        step.coordinate("sigma")
    for guider, why in [(Interval(CFG(3.0), sigma=(0.1, 5.0)), "the interval is over the 'sigma' coordinate"),
                        (Terms({"uncond": {"scale": 2.0, "sigma": [0.0, 1.0]}}), "term 'uncond' reads the 'sigma'")]:
        need = rf"guider '{guider.name}' needs a noise level \(alpha, sigma\) for the sample \({why}"
        with pytest.raises(GuidanceError, match=need + ".*which the MusicGen logits processor does not provide"):
            guide_musicgen(torch.nn.Identity(), guider)
