"""Recipe loading, strict checking and the CLI's user-error contract (in-process, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniguide.core.registry import GUIDERS
from omniguide.recipes.cli import main
from omniguide.recipes.config import load_recipe
from omniguide.recipes.run import RunContext, RunSection, new_run_dir

DATA = Path(__file__).parent / "data"
RECIPES = DATA / "recipes"
PLUGIN = str(DATA / "plugins" / "slow_steps.py")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_extends_overrides_and_file_prompts_resolve():
    resolved = load_recipe(RECIPES / "sample_child.yaml", ["guider.scale=6", "trainer.devices=1", "steps=9"])
    cfg = resolved.cfg
    assert resolved.recipe.name == "sample"
    assert cfg.guider == {"name": "cfg", "scale": 6}          # base name kept, child scale, override wins
    assert cfg.steps == 9 and cfg.num_samples == 32            # override, and a value from the base
    assert cfg.prompts == [2]                                  # a list replaces, it does not append
    assert Path(cfg.prompts_file).is_absolute() and Path(cfg.prompts_file).is_file()   # next to the recipe
    shown = yaml.safe_load(resolved.yaml)
    assert shown["kind"] == "sample" and shown["guider"]["scale"] == 6 and shown["trainer"]["max_steps"] == -1


def test_show_prints_resolved_config(capsys):
    rc, out, err = cli(capsys, "show", str(RECIPES / "sample_base.yaml"), "guider.scale=7.5", "prompts=[1,2]")
    assert rc == 0, err
    shown = yaml.safe_load(out)
    assert shown["guider"] == {"name": "cfg", "scale": 7.5}
    assert shown["prompts"] == [1, 2]
    assert shown["run"] == {"root": "runs", "name": None, "dir": None}


def test_list_guiders_prints_every_registered_guider(capsys):
    rc, out, _ = cli(capsys, "list", "guiders")
    assert rc == 0
    # guiders registered by --plugin files earlier in the session (tests/data/plugins) are not built in
    built_in = [n for n in GUIDERS.names() if not GUIDERS.get(n).__module__.startswith("omniguide_plugin_")]
    assert out.split() == built_in
    rc, out, _ = cli(capsys, "list", "recipes")
    assert {"sample", "train", "distill"} <= set(out.split())


def test_list_unknown_kind_is_a_user_error(capsys):
    rc, _, err = cli(capsys, "list", "guidrs")
    assert rc == 2 and err.strip() == "error: list: unknown component kind 'guidrs'; did you mean 'guiders'?"


def test_plugin_recipe_runs_with_run_context(capsys, tmp_path):
    recipe = tmp_path / "echo.yaml"
    recipe.write_text("kind: echo\nguiders: [{name: cfg, scale: 2}, {name: cfg++, scale: 0.5}]\nseed: 4\n")
    rc, out, err = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), f"run.root={tmp_path / 'runs'}")
    assert rc == 0, err
    run_dir = Path(out.strip().splitlines()[-1])                # the run folder is the last stdout line
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("echo-")
    assert json.loads((run_dir / "metrics.json").read_text()) == {"n": 2, "seed": 4}
    assert json.loads((run_dir / "table.json").read_text()) == {"n": 2}
    assert (run_dir / "raw.bin").read_bytes() == b"\x00" * 10
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 4
    assert "echo done" in (run_dir / "log.txt").read_text()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]   # no temporary files left
    # a second run never reuses the folder, even within the same second
    rc, out2, _ = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), f"run.root={tmp_path / 'runs'}")
    assert rc == 0 and Path(out2.strip().splitlines()[-1]) != run_dir


def test_new_run_dir_never_collides(tmp_path):
    dirs = {new_run_dir(tmp_path, "x") for _ in range(5)}
    assert len(dirs) == 5 and all(d.is_dir() for d in dirs)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    run = RunContext.create(RunSection(dir=str(tmp_path / "r")), "x", "a: 1\n")
    run.write_text("keep.txt", "old")
    with pytest.raises(RuntimeError):
        with run.atomic("keep.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert run.path("keep.txt").read_text() == "old"
    assert sorted(p.name for p in run.dir.iterdir()) == ["config.yaml", "keep.txt"]


# -- malformed recipes: exit code 2 and one line naming the path, the problem and a hint -----------
BASE = (RECIPES / "sample_base.yaml").read_text()
TRAIN = (RECIPES / "train_tiny.yaml").read_text()

BAD = {
    # name: (recipe text, extra overrides, expected substrings of the single error line)
    "typo-top": (BASE + "stesp: 3\n", [], ["stesp: unknown key", "did you mean 'steps'"]),
    "typo-depth2": (BASE, ["trainer.max_step=3"], ["trainer.max_step: unknown key", "'max_steps'"]),
    "typo-guider": (BASE.replace("scale: 3.0}", "scle: 3.0}"), [], ["guider.scle: unknown key", "'scale'"]),
    "typo-item-depth3": (BASE.replace("prompts: [0, 1, 2]", "prompts: [0, {prompt: 1, guider: {scael: 2}}]"),
                         [], ["prompts.1.guider.scael", "'scale'"]),
    "typo-item-key": (BASE.replace("prompts: [0, 1, 2]", "prompts: [0, {prompt: 1, sede: 2}]"), [],
                      ["prompts.1.sede: unknown item key", "'seed'"]),
    "typo-scheduler-key": (BASE.replace("{name: ddim}", "{name: ddim, clip_smaple: true}"), [],
                           ["scheduler.clip_smaple", "'clip_sample'"]),
    "typo-model-key": (BASE.replace("classes: 3}", "clases: 3}"), [], ["model.clases", "'classes'"]),
    "typo-trainer-extra": (BASE, ["trainer.extra.gradient_clip_algoritm=norm"],
                           ["trainer.extra.gradient_clip_algoritm", "'gradient_clip_algorithm'"]),
    "wrong-type-int": (BASE, ["steps=many"], ["steps:", "not a valid Integer"]),
    "wrong-type-section": (BASE, ["trainer=5"], ["trainer: expected a section"]),
    "wrong-type-bool": (BASE, ["trainer.enable_progress_bar=maybe"], ["trainer.enable_progress_bar", "bool"]),
    "wrong-type-list": (BASE, ["prompts=3"], ["prompts: expected a list"]),
    "missing-file": (BASE, ["prompts_file=no_such_prompts.txt"], ["prompts_file: file not found"]),
    "missing-extends": ("extends: no_such_base.yaml\n", [], ["extends: file not found: no_such_base.yaml"]),
    "missing-weights": (BASE.replace("{name: mixture, classes: 3}", "{name: small-denoiser}"), [],
                        ["model.weights: required value is missing"]),
    "range-steps": (BASE, ["steps=0"], ["steps: must be >= 1, got 0"]),
    "range-dropout": (TRAIN, ["cond_dropout=1.5"], ["cond_dropout: must be <= 1"]),
    "range-max-steps": (TRAIN, ["trainer.max_steps=0"], ["trainer.max_steps", ">= 1"]),
    "choice-logger": (BASE, ["trainer.logger=tensorbord"], ["trainer.logger", "'tensorboard'"]),
    "unknown-guider": (BASE.replace("name: cfg,", "name: cgf,"), [],
                       ["guider.name: unknown guider 'cgf'", "'cfg'"]),
    "unknown-scheduler": (BASE.replace("ddim", "ddimm"), [],
                          ["scheduler.name: unknown scheduler 'ddimm'", "'ddim'"]),
    "unknown-model": (BASE.replace("name: mixture", "name: mixtur"), [],
                      ["model.name: unknown model", "'mixture'"]),
    "unknown-kind": (BASE.replace("kind: sample", "kind: smaple"), [],
                     ["kind: unknown recipe 'smaple'", "'sample'"]),
    "missing-kind": (BASE.replace("kind: sample", ""), [], ["kind: missing"]),
    "unknown-strategy": (BASE, ["trainer.strategy=dpp"], ["trainer.strategy: unknown strategy", "'ddp'"]),
    "unknown-class": (BASE.replace("prompts: [0, 1, 2]", "prompts: [0, 7]"), [],
                      ["prompts.1: unknown class 7"]),
    "unknown-trainable": (TRAIN.replace("name: small-denoiser", "name: small-denoser"), [],
                          ["model.name: unknown trainable model", "'small-denoiser'"]),
    "bad-yaml": (BASE + "steps: [1, 2\n", [], ["invalid YAML at line"]),
    "bad-yaml-tab": (BASE + "a:\n\t- b\n", [], ["invalid YAML"]),
    "bad-override": (BASE, ["steps"], ["override 'steps': expected key.path=value"]),
    "resume-missing": (TRAIN, ["resume=nowhere.ckpt"], ["resume: file not found"]),
    "distill-unknown-objective": ("kind: distill\nprompt: a chair\nobjective: {name: sdss}\n", [],
                                  ["objective.name: unknown distillation objective 'sdss'", "'sds'"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_recipe_gives_one_line_and_exit_2(name, tmp_path, capsys):
    text, overrides, expected = BAD[name]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    rc, out, err = cli(capsys, "validate", str(recipe), *overrides)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in expected:
        assert part in lines[0], lines[0]
    assert "Traceback" not in err


def test_prompt_file_errors_name_file_and_line(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": 0}\n{"prompt": 1, "guider": {"scle": 2}}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "prompts_file: p.jsonl\n")
    rc, _, err = cli(capsys, "validate", str(recipe))
    expected = "error: p.jsonl:2.guider.scle: unknown key for guider 'cfg'; did you mean 'scale'?"
    assert rc == 2 and err.strip() == expected
    (tmp_path / "p.jsonl").write_text('{"prompt": 0}\n{"prompt": 1,\n')
    rc, _, err = cli(capsys, "validate", str(recipe))
    assert rc == 2 and err.strip().startswith("error: p.jsonl:2: invalid JSON")


def test_debug_shows_the_traceback(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(BASE + "stesp: 3\n")
    rc, _, err = cli(capsys, "--debug", "validate", str(recipe))
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: stesp")


def test_valid_recipes_validate(capsys):
    root = Path(__file__).parent.parent / "configs"
    for path in [RECIPES / "sample_base.yaml", RECIPES / "sample_child.yaml", RECIPES / "train_tiny.yaml",
                 root / "sample" / "mixture_cfg.yaml", root / "train" / "small_denoiser.yaml"]:
        rc, out, err = cli(capsys, "validate", str(path))
        assert rc == 0, (path, err)


# -- property: any key path either validates or names a prefix of itself -----------------------------
SEGMENTS = st.sampled_from(["guider", "scale", "trainer", "max_steps", "model", "classes", "steps", "prompts",
                            "0", "1", "extra", "run", "root", "seed", "name", "x", "scle", "devices"])
WORDS = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.one_of(SEGMENTS, WORDS), min_size=1, max_size=4), value=st.integers(-3, 40))
def test_random_key_paths_fail_cleanly(path, value, capsys):
    key = ".".join(path)
    rc, out, err = cli(capsys, "validate", str(RECIPES / "sample_base.yaml"), f"{key}={value}")
    assert rc in (0, 2), err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        culprit = lines[0][len("error: "):].split(": ")[0]
        assert key.startswith(culprit), (key, err)


def test_multi_node_needs_an_explicit_run_dir_and_creates_nothing(tmp_path, capsys):
    rc, _, err = cli(capsys, "run", str(RECIPES / "sample_base.yaml"), "trainer.num_nodes=2", f"run.root={tmp_path}")
    assert rc == 2 and err.strip().startswith("error: run.dir: a multi-node job needs an explicit run.dir")
    assert not list(tmp_path.iterdir())


def test_continuing_a_folder_of_another_kind_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("kind: train\n")
    rc, _, err = cli(capsys, "run", str(RECIPES / "sample_base.yaml"), f"run.dir={run_dir}")
    assert rc == 2 and err.strip() == f"error: run.dir: {run_dir} holds a 'train' run; this recipe is 'sample'"


def test_an_in_process_run_gives_the_caller_its_torch_thread_count_back(capsys, tmp_path):
    """A recipe's ``threads`` applies to its run only: the session calling ``main`` keeps its count."""
    import torch

    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    recipe = Path(__file__).parents[1] / "configs" / "sample" / "mixture_cfg.yaml"
    rc, _, err = cli(capsys, "run", str(recipe), f"run.root={tmp_path}", f"trainer.threads={wanted}",
                     "num_samples=16", "steps=3")
    assert rc == 0, err
    assert torch.get_num_threads() == before
