"""Pipelines held to the one-line contract: inside ``guide()`` each argument of the pipeline's own
guidance is refused, naming the argument and the omniguide equivalent (its "off" value passes); a
denoiser the adapter cannot map is named; recipe mistakes on diffusers pipelines are caught at
``validate`` with the full key path."""

from __future__ import annotations

import pytest
import tiny_pipelines as TP
import torch

from omniguide import CFG, GuidanceError, guide


@pytest.fixture(scope="module")
def pipes():
    return {name: TP.BUILDERS[name]() for name in ("sd", "sdxl", "sd3")}


def run(pipe, name, **kwargs):
    kwargs = {**TP.CALL_KWARGS[name], "prompt": "a red circle", "num_inference_steps": 2, "output_type": "latent",
              **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


OWN = [("sd", "guidance_scale", 7.5, r"CFG\(scale=7.5\)"),
       ("sd", "guidance_rescale", 0.7, r"Rescale\(\.\.\.\) or CFGRescale"),
       ("sdxl", "guidance_rescale", 0.7, r"Rescale\(\.\.\.\) or CFGRescale"),
       ("sd3", "skip_guidance_layers", [0], r"SkipLayer\(\.\.\.\)"),
       ("sd3", "skip_layer_guidance_scale", 2.0, r"SkipLayer\(\.\.\.\)"),
       ("sd3", "skip_layer_guidance_start", 0.2, r"SkipLayer\(\.\.\.\)"),
       ("sd3", "skip_layer_guidance_stop", 0.5, r"SkipLayer\(\.\.\.\)")]


@pytest.mark.parametrize("name, argument, value, equivalent", OWN)
def test_own_guidance_arguments_are_refused_naming_the_equivalent(pipes, name, argument, value, equivalent):
    pipe = pipes[name]
    with guide(pipe, CFG(scale=2.0)):
        with pytest.raises(GuidanceError, match=rf"\({argument}=\.\.\.\) is the pipeline's own .*{equivalent}") as err:
            run(pipe, name, **{argument: value})
    assert "\n" not in str(err.value) and f"{argument}={value!r}" in str(err.value)


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3"])
def test_off_values_are_accepted_and_change_nothing(pipes, name):
    """``guidance_scale=1`` (and ``guidance_rescale=0`` where the pipeline has it) is the pipeline's
    guidance switched off: harmless inside guide(), bitwise the same result."""
    pipe = pipes[name]
    off = {"guidance_scale": 1.0, **({} if name == "sd3" else {"guidance_rescale": 0.0})}
    with guide(pipe, CFG(scale=2.0)):
        plain = run(pipe, name)
        torch.testing.assert_close(run(pipe, name, **off), plain, rtol=0, atol=0)
        assert not torch.equal(plain, run(pipe, name, guidance_scale=1.0, prompt="something else"))


def test_a_forward_wrapper_without_names_is_a_one_line_error(pipes):
    """An instance ``forward`` that is a plain ``(*args, **kwargs)`` wrapper hides which argument is the
    sample: one line naming the denoiser and the cure, and the wrapper is restored after the error;
    the same wrapper with ``functools.wraps`` runs, equal to the bare denoiser."""
    import functools

    pipe = pipes["sd"]
    with guide(pipe, CFG(scale=2.0)):
        bare = run(pipe, "sd")
    original = pipe.unet.forward
    pipe.unet.forward = lambda *args, **kwargs: original(*args, **kwargs)
    wrapper = pipe.unet.forward
    try:
        with guide(pipe, CFG(scale=2.0)):
            with pytest.raises(GuidanceError, match=r"unet's forward\(\*args, \*\*kwargs\) does not name its "
                                                    r"'sample' and 'timestep' inputs.*functools.wraps") as err:
                run(pipe, "sd")
        assert "\n" not in str(err.value) and pipe.unet.forward is wrapper
        pipe.unet.forward = functools.wraps(original)(lambda *args, **kwargs: original(*args, **kwargs))
        with guide(pipe, CFG(scale=2.0)):
            torch.testing.assert_close(run(pipe, "sd"), bare, rtol=0, atol=0)
    finally:
        del pipe.unet.forward


# -- recipes on a saved tiny pipeline: caught at `validate`, exit 2, one line naming the key ----------
RECIPE = """kind: sample
model: {{name: diffusers, path: {path}, call: {{height: 16, width: 16}}}}
guider: {{name: cfg, scale: 4.0}}
prompts: ["a red circle"]
steps: 2
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    TP.sd().save_pretrained(folder / "models" / "sd", safe_serialization=True)
    (folder / "recipe.yaml").write_text(RECIPE.format(path=folder / "models" / "sd"))
    return folder


def validate(folder, *overrides):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "omniguide", "validate", "recipe.yaml", *overrides], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr.strip().splitlines()


BAD = [("model.call.guidance_scale=7.5", "model.call.guidance_scale", r"own CFG scale.*CFG\(scale=7.5\)"),
       ("model.call.guidance_rescale=0.7", "model.call.guidance_rescale", r"Rescale\(\.\.\.\) or CFGRescale"),
       ("model.call.num_inference_steps=0", "model.call.num_inference_steps", "the recipe's steps instead"),
       ("model.rerank=2", "model.rerank", r"needs a scorer with per-output scores \(model.scorer\)"),
       ("model.path=models/nothing", "model.path", "pipeline folder not found: models/nothing"),
       ("model.path=./models/nothing", "model.path", "pipeline folder not found: ./models/nothing")]


@pytest.mark.parametrize("override, key, why", BAD)
def test_pipeline_recipe_mistakes_are_one_line_at_validate(recipe, override, key, why):
    import re

    rc, lines = validate(recipe, override)
    assert rc == 2 and 1 <= len(lines) <= 2, lines
    assert key in lines[-1] and re.search(why, lines[-1]), lines


def test_a_relative_path_is_found_with_or_without_dot_slash(recipe):
    for path in ("models/sd", "./models/sd"):
        rc, lines = validate(recipe, f"model.path={path}", "model.call.guidance_scale=1.0")
        assert rc == 0, lines


@pytest.mark.parametrize("guider", ["pag", "nag"])
def test_a_bad_layer_name_is_named_at_validate(recipe, guider):
    rc, lines = validate(recipe, f"guider={{name: {guider}, layers: down.0}}")
    assert rc == 2 and 1 <= len(lines) <= 2 and "guider.layers" in lines[-1] and "UNet2DConditionModel" in lines[-1]
    rc, lines = validate(recipe, f"guider={{name: {guider}}}")
    assert rc == 0, lines
