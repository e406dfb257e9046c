"""diffusers video pipelines through the adapter (tiny, built offline, saved and reloaded): plain CFG
reproduces each pipeline's own output with the same seed (SVD's per-frame scale, Wan 2.2's
per-expert scales, LTX's rescale included), the work is counted, and bad frame counts are one-line
errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import tiny_video_pipelines as TV
import torch

from omniguide import CFG, CFGRescale, GuidanceError, guide
from omniguide.modalities.video.scales import FrameRamp
from omniguide.modalities.video.wan import expert_scale, pipeline_expert_scale


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are faster on one thread (thread synchronisation dominates on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, one_thread):
    out = {}
    for name, build in TV.BUILDERS.items():
        pipe = build()
        folder = tmp_path_factory.mktemp(name)
        pipe.save_pretrained(folder, safe_serialization=True)
        loaded = type(pipe).from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        out[name] = loaded
    return out


def run(pipe, name, steps=3, seed=0, **kwargs):
    kwargs = {**TV.CALL_KWARGS[name], "num_inference_steps": steps, "output_type": "latent", **kwargs}
    first = {"image": TV.svd_image()} if name == "svd" else {"prompt": ["a red circle", "a blue square"]}
    out = pipe(**first, generator=torch.Generator().manual_seed(seed), **kwargs)
    return out.frames


def test_svd_per_frame_scale_reproduces_min_max_guidance(pipes):
    pipe = pipes["svd"]
    for low, high in ((1.0, 2.5), (1.5, 3.0)):
        theirs = run(pipe, "svd", min_guidance_scale=low, max_guidance_scale=high, num_videos_per_prompt=2)
        with guide(pipe, CFG(scale=FrameRamp(low, high))) as handle:
            ours = run(pipe, "svd", num_videos_per_prompt=2)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        assert handle.nfe_per_step == [2, 2, 2] and handle.passes_per_step == [1, 1, 1]
    plain = run_plain(pipe)
    with guide(pipe, CFG(scale=FrameRamp(1.0, 1.0))) as handle:          # SVD's max <= 1: CFG off
        torch.testing.assert_close(run(pipe, "svd"), plain, rtol=0, atol=1e-5)
    assert handle.nfe_per_step == [1, 1, 1]


def run_plain(pipe):
    with torch.no_grad():
        return pipe(image=TV.svd_image(), generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                    output_type="latent", min_guidance_scale=1.0, max_guidance_scale=1.0,
                    **TV.CALL_KWARGS["svd"]).frames


@pytest.mark.parametrize("name", ["wan", "ltx", "cogvideox"])
def test_text_to_video_cfg_reproduces_the_pipelines_own_guidance(pipes, name):
    pipe = pipes[name]
    theirs = run(pipe, name, guidance_scale=4.5, negative_prompt=["blurry", "low quality"])
    with guide(pipe, CFG(scale=4.5)) as handle:
        ours = run(pipe, name, negative_prompt=["blurry", "low quality"])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert handle.nfe_per_step == [2, 2, 2]
    # Wan runs its branches one at a time, as the pipeline does; the others batch them
    assert handle.passes_per_step == ([2, 2, 2] if name == "wan" else [1, 1, 1])
    if name == "wan":
        with guide(pipe, CFG(scale=4.5), batch=True) as batched:
            torch.testing.assert_close(run(pipe, name, negative_prompt=["blurry", "low quality"]), theirs,
                                       rtol=0, atol=1e-5)
        assert batched.passes_per_step == [1, 1, 1]


def test_ltx_guidance_rescale_is_cfg_rescale_in_the_models_space(pipes):
    pipe = pipes["ltx"]
    theirs = run(pipe, "ltx", guidance_scale=4.0, guidance_rescale=0.7)
    with guide(pipe, CFGRescale(scale=4.0, rescale=0.7, space="flow")):
        ours = run(pipe, "ltx")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_wan22_intercepts_both_experts_with_per_expert_scales(pipes):
    pipe = copy.copy(pipes["wan22"])
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, n).register_forward_pre_hook(lambda m, a, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in calls]
    try:
        theirs = run(pipe, "wan22", steps=6, guidance_scale=4.0, guidance_scale_2=2.0)
        assert calls["transformer"] > 0 and calls["transformer_2"] > 0     # the boundary is crossed
        scale = pipeline_expert_scale(pipe, 4.0, 2.0)
        assert scale == expert_scale(4.0, 2.0, 0.6)
        with guide(pipe, CFG(scale=scale)) as handle:
            ours = run(pipe, "wan22", steps=6)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        assert handle.nfe_per_step == [2] * 6
        # one scale for both experts is not the same thing
        with guide(pipe, CFG(scale=4.0)):
            assert (run(pipe, "wan22", steps=6) - theirs).abs().max() > 1e-4
    finally:
        for h in hooks:
            h.remove()
    assert "forward" not in pipe.transformer.__dict__ and "forward" not in pipe.transformer_2.__dict__


@pytest.mark.parametrize("name,frames,rule", [("wan", 6, "4 k \\+ 1"), ("ltx", 10, "4 k \\+ 1"),
                                              ("cogvideox", 8, "4 k \\+ 1")])
def test_frame_counts_a_pipeline_cannot_make_are_one_line_errors(pipes, name, frames, rule):
    pipe = pipes[name]
    with guide(pipe, CFG(scale=2.0)):
        with pytest.raises(GuidanceError, match=f"^guide\\(\\): .*: {name} pipelines make num_frames = {rule} frames"):
            run(pipe, name, num_frames=frames)


def test_svd_cfg_arguments_belong_to_the_guider(pipes):
    pipe = pipes["svd"]
    with guide(pipe, CFG(scale=FrameRamp(1.0, 3.0))):
        with pytest.raises(GuidanceError, match=r"max_guidance_scale=\.\.\.\) is the pipeline's own CFG scale"):
            run(pipe, "svd", max_guidance_scale=3.0)


RECIPE = """kind: sample
model: {{name: diffusers, path: {path}, call: {{height: 16, width: 16, num_frames: {frames}, max_sequence_length: 16}}}}
guider: {{name: cfg, scale: 4.0}}
prompts: ["a red circle", {{prompt: "a blue square", num_samples: 2}}]
steps: 2
output: {{formats: [mp4, gif], scale: 2}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}}
"""


def test_sample_recipe_writes_mp4_gif_sheets_and_metrics(pipes, tmp_path, capsys):
    import imageio.v3 as iio

    from omniguide.recipes.cli import main

    folder = tmp_path / "wan"
    pipes["wan"].save_pretrained(folder, safe_serialization=True)
    recipe = tmp_path / "wan.yaml"
    recipe.write_text(RECIPE.format(path=folder, frames=5))
    code = main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    names = sorted(p.name for p in (run_dir / "items").iterdir())
    assert "000001_1.mp4" in names and "000001_1_sheet.png" in names and "000000_0.gif" in names
    assert iio.imread(run_dir / "items" / "000000_0.mp4").shape == (5, 32, 32, 3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["videos"] == 3 and metrics["frames"] == 15 and metrics["nfe"] == 2 * 2 * 2
    recipe.write_text(RECIPE.format(path=folder, frames=6))     # caught by validate, before loading weights
    assert main(["validate", str(recipe)]) == 2
    assert "model.call.num_frames: wan pipelines make num_frames = 4 k + 1 frames" in capsys.readouterr().err


def test_sample_recipe_reads_svd_images_from_the_prompts(pipes, tmp_path, capsys):
    from omniguide.recipes.cli import main

    folder = tmp_path / "svd"
    pipes["svd"].save_pretrained(folder, safe_serialization=True)
    image = tmp_path / "start.png"
    TV.svd_image().save(image)
    recipe = tmp_path / "svd.yaml"
    recipe.write_text(f"""kind: sample
model: {{name: diffusers, path: {folder}, call: {{height: 16, width: 16, num_frames: 3, decode_chunk_size: 3}}}}
guider: {{name: cfg, scale: {{name: frame-ramp, start: 1.0, end: 2.5}}}}
prompts: ["{image}"]
steps: 2
output: {{formats: [gif]}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}}
""")
    code = main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = Path(out.strip().splitlines()[-1])
    assert (run_dir / "items" / "000000_0.gif").is_file() and (run_dir / "items" / "000000_0_sheet.png").is_file()
    recipe.write_text(recipe.read_text().replace(str(image), str(tmp_path / "missing.png")))
    assert main(["validate", str(recipe)]) == 2
    assert "prompts.0: Stable Video Diffusion needs an image file as the item's prompt" in capsys.readouterr().err
