"""Component sections replace, not merge: a recipe's ``guider: {name: interval, ...}`` does not
inherit the default CFG's ``scale`` (in-process, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omniguide.recipes.cli import main
from omniguide.recipes.config import load_recipe, merge_component

SAMPLE_BODY = """kind: sample
model: {name: mixture, classes: 3}
guider: GUIDER
prompts: [0, {prompt: 1, guider: {sigma: [0.5, 3.0]}}, {prompt: 2, guider: {name: cfg, scale: 2}}]
steps: 8
num_samples: 32
trainer: {accelerator: cpu, devices: 1, enable_progress_bar: false, logger: none, threads: 1}
"""
WRAPPERS = {
    "interval": "{name: interval, guider: {name: cfg, scale: 4}, sigma: [0.28, 5.42]}",
    "schedule": "{name: schedule, guider: {name: cfg, scale: 4}, shape: cosine}",
}


def items(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "items").glob("*.json"))]


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_wrapper_as_the_recipe_guider_runs_through_the_cli(wrapper, tmp_path, capsys):
    recipe = tmp_path / "wrapped.yaml"
    body = SAMPLE_BODY.replace("GUIDER", WRAPPERS[wrapper])
    if wrapper == "schedule":   # an item may only set fields of the recipe's guider
        body = body.replace("guider: {sigma: [0.5, 3.0]}", "guider: {shape: linear}")
    recipe.write_text(body)
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["show", str(recipe)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["guider"] == yaml.safe_load(WRAPPERS[wrapper])       # no default scale merged in
    assert main(["run", str(recipe), f"run.root={tmp_path / 'runs'}"]) == 0
    out, _ = capsys.readouterr()
    first, second, third = items(Path(out.splitlines()[-1]))
    assert first["guider"] == yaml.safe_load(WRAPPERS[wrapper])
    inner = {"name": "cfg", "scale": 4}
    if wrapper == "interval":     # the item's own interval merges into the recipe's (same name)
        assert second["guider"] == {"name": "interval", "guider": inner, "sigma": [0.5, 3.0]}
        assert first["nfe"] < 2 * 8                     # steps outside the interval cost one pass
    else:
        assert second["guider"] == {"name": "schedule", "guider": inner, "shape": "linear"}
    assert third["guider"] == {"name": "cfg", "scale": 2}   # another name replaces the recipe's guider


def test_extends_merges_a_nameless_or_same_name_guider_and_replaces_another(tmp_path):
    (tmp_path / "base.yaml").write_text("kind: sample\nguider: {name: cfg, scale: 5, form: c+w(c-u)}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nguider: {scale: 6}\n")
    assert load_recipe(child).cfg.guider == {"name": "cfg", "scale": 6, "form": "c+w(c-u)"}
    child.write_text("extends: base.yaml\nguider: {name: cfg, scale: 7}\n")
    assert load_recipe(child).cfg.guider == {"name": "cfg", "scale": 7, "form": "c+w(c-u)"}
    child.write_text("extends: base.yaml\nguider: {name: apg, eta: 0.5}\n")
    assert load_recipe(child).cfg.guider == {"name": "apg", "eta": 0.5}


def test_a_named_section_replaces_the_schema_default_even_with_the_same_name(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: sample\nguider: {name: cfg, form: c+w(c-u)}\n")
    assert load_recipe(recipe).cfg.guider == {"name": "cfg", "form": "c+w(c-u)"}    # not the default's scale 3
    recipe.write_text("kind: sample\nguider: {form: c+w(c-u)}\n")
    assert load_recipe(recipe).cfg.guider == {"name": "cfg", "scale": 3.0, "form": "c+w(c-u)"}


def test_renaming_a_component_on_the_command_line_drops_the_old_fields_whatever_the_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: sample\nguider: {name: cfg, scale: 5, form: c+w(c-u)}\n")
    for overrides in (["guider.scale=2", "guider.name=apg"], ["guider.name=apg", "guider.scale=2"]):
        assert load_recipe(recipe, overrides).cfg.guider == {"name": "apg", "scale": 2}
    assert load_recipe(recipe, ["guider.name=cfg"]).cfg.guider == {"name": "cfg", "scale": 5, "form": "c+w(c-u)"}
    assert load_recipe(recipe, ["guider={name: tcfg}"]).cfg.guider == {"name": "tcfg"}
    assert load_recipe(recipe, ["guider={scale: 9}"]).cfg.guider == {"name": "cfg", "scale": 9, "form": "c+w(c-u)"}
    # the run section's `name` is a folder prefix, not a component: it merges
    assert load_recipe(recipe, ["run={name: x}", "run.root=elsewhere"]).run.name == "x"


def test_merge_component_replaces_on_a_new_name_at_any_depth():
    base = {"name": "interval", "guider": {"name": "cfg", "scale": 4, "form": "c+w(c-u)"}, "sigma": [0.28, 5.42]}
    assert merge_component(base, {"guider": {"scale": 2}})["guider"] == {"name": "cfg", "scale": 2,
                                                                         "form": "c+w(c-u)"}
    assert merge_component(base, {"guider": {"name": "apg"}})["guider"] == {"name": "apg"}
    assert merge_component(base, {"name": "cfg", "scale": 1}) == {"name": "cfg", "scale": 1}
    assert base["guider"]["scale"] == 4                      # the inputs are not modified
