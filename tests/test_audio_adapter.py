"""The pipeline adapter on tiny text-to-audio pipelines (Stable Audio, AudioLDM, AudioLDM2, MusicLDM,
built from configs, saved and reloaded with ``from_pretrained``): faithfulness to each pipeline's
own CFG with a batch of prompts, several waveforms per prompt and a negative prompt; every guider
on every family with its work counted; declared axes; one-line refusals of bad calls."""

from __future__ import annotations

import copy

import pytest
import tiny_audio as TA
import tiny_pipelines as TP
import torch
from guider_names import core_guider_names, perturbing_guiders
from test_adapter import METHODS_II

import omniguide
from omniguide import CFG, CFGRescale, GuidanceError, Interval, guide
from omniguide.core.axes import Axes
from omniguide.core.registry import build_guider

PROMPTS, NEGATIVES = ["a rising chirp", "a dog barking in the rain"], ["noise", "quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: tmp_path_factory.mktemp(name) for name in TA.BUILDERS}


@pytest.fixture(scope="module")
def pipes(folders):
    out = {}
    for name, build in TA.BUILDERS.items():
        pipe = TP.saved(build(), folders[name])
        if name == "musicldm":   # the deprecated pipeline's own path needs a tensor on transformers 5
            from omniguide.modalities.audio.musicldm import fix_text_features

            fix_text_features(pipe)
        out[name] = pipe
    return out


def run(pipe, name, steps=3, seed=0, **kwargs):
    kwargs = {**TA.CALL_KWARGS[name], "num_inference_steps": steps, "output_type": "pt", **kwargs}
    return torch.as_tensor(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).audios)


def run_latents(pipe, name, **kwargs):
    """The final latents (what the VAE decodes) and the waveforms of one call."""
    seen = []
    decode = pipe.vae.decode

    def spy(latents, *args, **kw):
        seen.append(latents.clone())
        return decode(latents, *args, **kw)

    pipe.vae.decode = spy
    try:
        audio = run(pipe, name, **kwargs)
    finally:
        del pipe.vae.decode
    return seen[-1], audio


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


@pytest.mark.parametrize("negative", [True, False], ids=["negative", "default-uncond"])
@pytest.mark.parametrize("name", list(TA.BUILDERS))
def test_cfg_reproduces_the_pipelines_own_guidance(pipes, name, negative):
    """``guide(pipe, CFG(s))`` equals ``pipe(guidance_scale=s)`` to 1e-5: two prompts, two waveforms
    each, with a negative prompt (also given to guide() instead) and with the pipeline's default
    unconditional input (Stable Audio: zeros for text and duration)."""
    pipe = pipes[name]
    args = dict(prompt=PROMPTS, num_waveforms_per_prompt=2, **({"negative_prompt": NEGATIVES} if negative else {}))
    latents, theirs = run_latents(pipe, name, **args, guidance_scale=4.5)
    with guide(pipe, CFG(scale=4.5)) as handle:
        ours_latents, ours = run_latents(pipe, name, **args)
    assert ours.shape == theirs.shape and ours.shape[0] == 4
    torch.testing.assert_close(ours_latents, latents, rtol=0, atol=1e-5)
    peak = theirs.abs().max()        # the tiny vocoders' waveforms are ~1e-7: compare at their scale
    torch.testing.assert_close(ours / peak, theirs / peak, rtol=0, atol=1e-5)
    assert handle.nfe_per_step == [2, 2, 2] and handle.passes_per_step == [1, 1, 1]
    if negative:
        with guide(pipe, CFG(scale=4.5), negative_prompt=NEGATIVES):
            again, _ = run_latents(pipe, name, prompt=PROMPTS, num_waveforms_per_prompt=2)
        torch.testing.assert_close(again, latents, rtol=0, atol=1e-5)
    plain, _ = run_latents(pipe, name, **args, guidance_scale=1.0)
    assert (plain - latents).abs().max() > 1e-3   # guidance changed the output (the test can fail)


def test_stable_audio_unconditional_is_zeros_without_a_negative(pipes):
    """The unconditional branch sees zeros for the whole text + duration sequence (no negative), or the
    negative text followed by the positive's duration states (with one); global states are shared."""
    pipe = pipes["stable_audio"]
    seen = []

    def spy(module, args, kwargs):
        if kwargs["encoder_hidden_states"].shape[0] == 2:   # the adapter's batched cond + uncond pass
            seen.append((kwargs["encoder_hidden_states"].clone(), kwargs["global_hidden_states"].clone()))

    hook = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with guide(pipe, CFG(scale=3.0)):
            run(pipe, "stable_audio", prompt="a rising chirp", steps=1)
        with guide(pipe, CFG(scale=3.0), negative_prompt="noise"):
            run(pipe, "stable_audio", prompt="a rising chirp", steps=1)
    finally:
        hook.remove()
    (states, glob), (states_n, _) = seen[0], seen[1]
    assert states.shape[0] == 2 and torch.equal(glob[0], glob[1])
    cond = [s for s in states if s.abs().sum() > 0]
    assert len(cond) == 1 and any(s.abs().sum() == 0 for s in states)
    uncond_n = [s for s in states_n if not torch.equal(s, cond[0])]
    assert len(uncond_n) == 1
    torch.testing.assert_close(uncond_n[0][-2:], cond[0][-2:])                   # same duration states
    assert (uncond_n[0][:-2] - cond[0][:-2]).abs().max() > 0                      # other text


# -- every guider on every family ----------------------------------------------------------------------
def guider_configs(weak) -> dict[str, omniguide.Guider]:
    made = {
        "adaptive": build_guider({"name": "adaptive", "guider": {"name": "cfg", "scale": 3.0}}),
        "autoguidance": omniguide.AutoGuidance(scale=2.0, weak_model=weak),
        "cfg++": omniguide.CFGPlusPlus(scale=0.5),
        "interval": build_guider({"name": "interval", "guider": {"name": "cfg", "scale": 3.0}, "t": [0.5, 1.0]}),
        "schedule": build_guider({"name": "schedule", "guider": {"name": "cfg", "scale": 3.0}, "shape": "cosine"}),
        "terms": build_guider({"name": "terms", "terms": {"uncond": 2.0}}),
        "fdg": build_guider({"name": "fdg", "transform": "fft"}),
        "rescale": build_guider({"name": "rescale", "guider": {"name": "apg", "scale": 3.0}, "rescale": 0.7}),
    }
    for name in sorted(core_guider_names()):
        if name not in made and name not in METHODS_II:
            made[name] = build_guider({"name": name, "scale": 3.0})
    return made


PERTURBED = tuple(sorted(perturbing_guiders() - METHODS_II))   # pag, seg, skip-layer
# the mel families share AudioLDM's UNet and differ only in conditioning: AudioLDM runs by default,
# AudioLDM2 and MusicLDM (slower: GPT-2 generation, CLAP) with -m slow
EVERY_FAMILY = ["stable_audio", "audioldm",
                *(pytest.param(n, marks=pytest.mark.slow) for n in ("audioldm2", "musicldm"))]


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_every_guider_runs_on_every_family(pipes, name):
    pipe = pipes[name]
    weak = copy.deepcopy(denoiser(pipe))
    with torch.no_grad():
        for p in weak.parameters():
            p.mul_(0.9)
    base, _ = run_latents(pipe, name, prompt="a rising chirp")
    for key, guider in guider_configs(weak).items():
        with guide(pipe, guider, negative_prompt="noise") as handle:
            out, audio = run_latents(pipe, name, prompt="a rising chirp")
        assert torch.isfinite(out).all() and torch.isfinite(audio).all(), key
        assert (out - base).abs().max() > 1e-5, f"{key} did not change the {name} output"
        expected = 3 if key in PERTURBED else 2
        assert max(handle.nfe_per_step) == expected, (key, handle.nfe_per_step)
        assert len(handle.nfe_per_step) == 3
        assert max(handle.passes_per_step) == (2 if key in (*PERTURBED, "autoguidance") else 1), key


# -- Methods II on every family ------------------------------------------------------------------------
NO_CONTEXT = r"attn2 was called without a context \(encoder_hidden_states=None\)"
# Methods II guiders a family refuses, with their one-line reason: AudioLDM and MusicLDM take the prompt as
# CLAP class labels, so their UNets' cross-attention runs without a context (NAG, VSF and PLADIS have no
# prompt attention to act on); SAG blurs image latents [B, C, H, W], which Stable Audio's [B, C, T] is not,
# and the tiny mel latents (32 frames x 4 mel bins) are narrower than its 9-tap blur needs (a real
# AudioLDM latent has 16 mel bins; SAG runs below with 3 taps)
MEL = ("audioldm", "audioldm2", "musicldm")
AUDIO_REFUSED = {("sag", "stable_audio"): r"needs image samples \[B, C, H, W\], got \(1, 3, 4\)",
                 **{("sag", n): "a 32 x 4 sample is too small for the 9-tap" for n in MEL},
                 **{(k, n): NO_CONTEXT for k in ("nag", "vsf", "pladis") for n in ("audioldm", "musicldm")}}


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_methods2_guiders_on_every_family(pipes, name):
    """Every Methods II guider (test_adapter's settings; GFCG's pool over the family's prompt input) runs
    with the NFE and forward passes it takes on the image families and moves the final latents away from
    the unguided conditional ones -- so a one-pass method that did nothing would fail -- or is refused in
    one line naming why."""
    from test_adapter import WORK, guider_configs

    from omniguide.core.methods import SAG
    from omniguide.modalities.base import family_for

    pipe, key_input = pipes[name], family_for(pipes[name]).embeddings[0]
    weak = copy.deepcopy(denoiser(pipe))
    with torch.no_grad():
        for p in weak.parameters():
            p.mul_(0.9)
    seen = {}

    def record(module, args, kwargs):
        seen.setdefault("condition", kwargs[key_input])

    hook = denoiser(pipe).register_forward_pre_hook(record, with_kwargs=True)
    try:
        base, _ = run_latents(pipe, name, prompt="a rising chirp", steps=2, guidance_scale=1.0)
    finally:
        hook.remove()
    configs = guider_configs(weak, seen["condition"], key_input)
    if name != "stable_audio":
        configs["sag (3 taps)"] = SAG(scale=3.0, kernel_size=3)
    for key, guider in configs.items():
        if key.split(" ")[0] not in METHODS_II:
            continue
        if (key, name) in AUDIO_REFUSED:
            with pytest.raises(GuidanceError, match=AUDIO_REFUSED[key, name]) as err:
                with guide(pipe, guider, negative_prompt="noise"):
                    run_latents(pipe, name, prompt="a rising chirp", steps=2)
            assert "\n" not in str(err.value)
            continue
        with guide(pipe, guider, negative_prompt="noise", prompts={"negative": "quiet"}) as handle:
            out, audio = run_latents(pipe, name, prompt="a rising chirp", steps=2)
        assert torch.isfinite(out).all() and torch.isfinite(audio).all(), key
        assert (out - base).abs().max() > 1e-5, f"{key} did not change the {name} output"
        nfe, passes = WORK.get(key.split(" ")[0], (2, 1))
        assert handle.nfe_per_step == [nfe] * 2 and handle.passes_per_step == [passes] * 2, (key, handle.nfe_per_step)


def test_stable_audio_parts_the_methods2_perturbations_act_on(pipes):
    """On Stable Audio's DiT, TSG perturbs the declared time embedding (``timestep_proj``, not found by
    diffusers' usual names), and NAG / VSF / PLADIS act on the text cross-attention (``attn2``, whose
    context is the [text, start, end] sequence), never on the self-attention over the latent frames."""
    from omniguide.core.methods import NAG, PLADIS, TSG, VSF

    pipe = pipes["stable_audio"]
    dit = pipe.transformer
    with guide(pipe, TSG(t=(0.0, 1.0))) as handle:
        assert list(handle.branch_defaults["tsg"].perturbation.targets(dit)) == ["timestep_proj"]
        first, second = (run_latents(pipe, "stable_audio", prompt="a rising chirp", steps=2)[0] for _ in range(2))
    with guide(pipe, TSG(t=(0.0, 1.0), seed=1)):
        other = run_latents(pipe, "stable_audio", prompt="a rising chirp", steps=2)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)      # the guider's reset reseeds the noise
    assert (first - other).abs().max() > 1e-5
    assert handle.passes_per_step == [2, 2, 2, 2]
    cross = [f"transformer_blocks.{i}.attn2" for i in range(len(dit.transformer_blocks))]
    contexts = []
    hooks = [dit.get_submodule(n).register_forward_pre_hook(
        lambda module, args, kwargs: contexts.append(kwargs["encoder_hidden_states"].shape), with_kwargs=True)
        for n in cross]
    try:
        for guider in (NAG(), VSF(), PLADIS()):
            assert sorted(guider.branch_defaults()[guider.branch].perturbation.targets(dit)) == cross
            with guide(pipe, guider, negative_prompt="noise"):
                run(pipe, "stable_audio", prompt="a rising chirp", steps=1)
    finally:
        for h in hooks:
            h.remove()
    text = pipe.tokenizer.model_max_length
    assert contexts and all(shape[1] == text + 2 for shape in contexts)      # [text, start, end]


@pytest.mark.parametrize("name", ["audioldm", pytest.param("audioldm2", marks=pytest.mark.slow)])
def test_icg_replaces_every_prompt_input_of_the_family(pipes, name):
    """ICG's independent condition is Gaussian noise on the family's prompt inputs: AudioLDM's CLAP class
    labels, both of AudioLDM2's cross-attention contexts (GPT-2 and T5 states); the masks stay."""
    from omniguide.core.methods import ICG
    from omniguide.modalities.base import family_for

    pipe = pipes[name]
    inputs = family_for(pipe).embeddings
    seen = []
    hook = denoiser(pipe).register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: kwargs[k].clone() for k in inputs}), with_kwargs=True)
    try:
        with guide(pipe, ICG(scale=3.0)):
            run(pipe, name, prompt="a rising chirp", steps=1)
    finally:
        hook.remove()
    batch = seen[-1]                     # the executor's pass: cond + independent (after the pipeline's own call)
    for k in inputs:
        cond, independent = batch[k]
        assert (cond - independent).abs().max() > 1e-3, k
        torch.testing.assert_close(independent.std(), cond.std(), rtol=0.5, atol=0)


@pytest.mark.parametrize("name", EVERY_FAMILY)
def test_a_step_outside_an_interval_costs_one_pass(pipes, name):
    with guide(pipes[name], Interval(CFG(scale=5.0), step=(0.0, 0.5))) as handle:
        run(pipes[name], name, prompt=PROMPTS, steps=5)
    assert handle.nfe_per_step == [2, 2, 2, 1, 1] and handle.forward_passes == 5


def test_declared_axes_and_recipe_axes(pipes):
    """Families declare their layouts; a guider's own ``axes`` (per channel as stable-audio-tools'
    rescale) overrides them and changes the result."""
    assert guide(pipes["stable_audio"], CFG()).axes == Axes.from_layout("BCT")
    assert guide(pipes["audioldm"], CFG()).axes == Axes((1, 2, 3), (2, 3), "BCTW")
    pipe = pipes["stable_audio"]
    outs = {}
    for axes in (None, (1,), (2,)):
        guider = build_guider({"name": "cfg-rescale", "scale": 6.0, "rescale": 1.0,
                               **({"axes": list(axes)} if axes else {})})
        with guide(pipe, guider):
            outs[axes] = run_latents(pipe, "stable_audio", prompt="a rising chirp")[0]
    assert (outs[None] - outs[(1,)]).abs().max() > 1e-5 and (outs[(1,)] - outs[(2,)]).abs().max() > 1e-5


def test_rescale_over_channels_matches_stable_audio_tools():
    """``CFGRescale(axes=(1,))`` on a ``[B, C, T]`` v prediction is stable-audio-tools' DiT rescale:
    ``std`` over dim 1 only (per frame), ``phi * cfg * std(cond)/std(cfg) + (1 - phi) * cfg``."""
    from omniguide.core.guider import GuidanceStep
    from omniguide.core.noise import NoiseLevel
    from omniguide.core.prediction import Prediction

    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 8, 16, generator=g, dtype=torch.float64) for _ in range(3))
    noise = NoiseLevel(torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64))
    preds = {k: Prediction(v, "v", x, noise) for k, v in (("cond", cond), ("uncond", uncond))}
    out = CFGRescale(scale=7.0, rescale=0.4, axes=(1,)).combine(preds, GuidanceStep(x, noise)).to("v")
    cfg = uncond + (cond - uncond) * 7.0          # stable_audio_tools/models/dit.py
    cond_std, cfg_std = cond.std(dim=1, keepdim=True), cfg.std(dim=1, keepdim=True)
    reference = 0.4 * (cfg * (cond_std / cfg_std)) + (1 - 0.4) * cfg
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)


# -- end to end: a recipe writes WAVs --------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TA.BUILDERS))
def test_each_family_runs_end_to_end_to_wav(pipes, folders, name, tmp_path, capsys):
    """``kind: sample`` loads the saved tiny pipeline with from_pretrained, guides it (a preset), and writes
    a WAV at the model's rate and a spectrogram per waveform, and metrics.json."""
    import json
    from pathlib import Path

    import soundfile
    import yaml

    from omniguide.recipes.cli import main

    assert pipes[name] is not None   # saved into folders[name]
    call = {k: v for k, v in TA.CALL_KWARGS[name].items()}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "sample", "model": {"name": "diffusers", "path": str(folders[name]), "call": call},
        "guider": {"preset": "stable-audio-tools" if name == "stable_audio" else "audioldm2"},
        "negative_prompt": "noise", "prompts": ["a rising chirp", {"prompt": "quiet", "num_samples": 2}],
        "steps": 2, "output": {"format": "float"},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": "none", "threads": 1}}))
    rc = main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    wavs = sorted((run_dir / "items").glob("*.wav"))
    assert len(wavs) == 3 and len(list((run_dir / "items").glob("*.png"))) == 3
    rate = pipes[name].vae.config.sampling_rate if name == "stable_audio" else pipes[name].vocoder.config.sampling_rate
    info = soundfile.info(str(wavs[0]))
    assert info.samplerate == rate and info.channels == (2 if name == "stable_audio" else 1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["clips"] == 3 and metrics["nfe"] == 2 * 2 * 2 and metrics["sample_rate"] == rate


# -- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,match", [
    ("stable_audio", {"prompt": []}, "the prompt list is empty"),
    ("audioldm", {"prompt": []}, "the prompt list is empty"),
    ("stable_audio", {"prompt": "a rising chirp", "audio_end_in_s": 60.0},
     r"audio_end_in_s - audio_start_in_s = 60 s cannot be produced by this model \(0 < duration <= 2 s\)"),
    ("audioldm2", {"prompt": "a rising chirp", "audio_length_in_s": 0.0001, "max_new_tokens": 4},
     r"audio_length_in_s=0.0001 s cannot be produced by this model \(at least 0.0005 s\)"),
    ("stable_audio", {"prompt": "a rising chirp " * 12}, r"prompt 0 .* tokens long; T5Tokenizer takes at most 16"),
    ("musicldm", {"prompt": "a rising chirp", "num_waveforms_per_prompt": 0}, "num_waveforms_per_prompt must be"),
])
def test_bad_calls_are_one_line_errors(pipes, name, kwargs, match):
    pipe = pipes[name]
    with guide(pipe, CFG(scale=3.0)), pytest.raises(GuidanceError, match=match) as err:
        pipe(**{**TA.CALL_KWARGS[name], **kwargs, "num_inference_steps": 2})
    assert "\n" not in str(err.value)


def test_guidance_scale_inside_guide_is_refused(pipes):
    with guide(pipes["audioldm"], CFG(scale=2.0)):
        with pytest.raises(GuidanceError, match="is the pipeline's own CFG scale"):
            run(pipes["audioldm"], "audioldm", prompt="a rising chirp", guidance_scale=3.0)



def test_musicldm_shares_audioldms_family_spec():
    """One spec: MusicLDM differs from AudioLDM only by its name, its class and the encoder wrapper
    that turns transformers 5's text-feature output into a tensor."""
    import dataclasses

    from omniguide.modalities.audio.audioldm import AUDIOLDM
    from omniguide.modalities.audio.musicldm import MUSICLDM

    differ = {f.name for f in dataclasses.fields(AUDIOLDM) if getattr(AUDIOLDM, f.name) != getattr(MUSICLDM, f.name)}
    assert differ == {"name", "pipelines", "encode"}
    assert (MUSICLDM.name, MUSICLDM.pipelines, MUSICLDM.check_call) == ("musicldm", ("MusicLDMPipeline",),
                                                                          AUDIOLDM.check_call)
