"""A failed run leaves no folder that looks like a finished run (in-process, fast).

Every check ``validate`` does runs before the run folder exists; a recipe that fails afterwards
keeps its outputs, gets a ``FAILED`` marker with the error line, and a fresh timestamped folder is
renamed ``<name>.failed`` -- a folder named with ``run.dir`` (or inherited) keeps its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omniguide.recipes.cli import main
from omniguide.recipes.run import RUN_DIR_ENV

DATA = Path(__file__).parent / "data"
PLUGIN = str(DATA / "plugins" / "failing.py")
SAMPLE = str(DATA / "recipes" / "sample_base.yaml")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "half.yaml"
    path.write_text("kind: half-done\n")
    return path


def test_a_crash_marks_and_renames_the_fresh_folder_and_keeps_its_outputs(recipe, tmp_path, capsys):
    root = tmp_path / "runs"
    rc, out, err = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), f"run.root={root}")
    assert rc == 1 and out == ""
    [folder] = list(root.iterdir())
    assert folder.name.startswith("half-") and folder.name.endswith(".failed")
    assert err.splitlines() == [f"error: RuntimeError: disk on fire second line of the message "
                                f"(run folder: {folder}; --debug shows the traceback)"]
    assert (folder / "FAILED").read_text() == "RuntimeError: disk on fire second line of the message\n"
    assert (folder / "part.txt").read_text() == "produced before the failure\n"   # produced work is kept
    assert (folder / "config.yaml").is_file() and not (folder / "metrics.json").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_user_error_at_run_time_exits_2_and_is_marked_too(recipe, tmp_path, capsys):
    root = tmp_path / "runs"
    rc, _, err = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), "fail=config", f"run.root={root}")
    assert rc == 2 and err.splitlines() == ["error: fail: found wrong only at run time"]
    [folder] = list(root.iterdir())
    assert folder.name.endswith(".failed")
    assert (folder / "FAILED").read_text() == "fail: found wrong only at run time\n"


def test_debug_prints_the_traceback_before_the_error_line(recipe, tmp_path, capsys):
    rc, _, err = cli(capsys, "--plugin", PLUGIN, "--debug", "run", str(recipe), f"run.root={tmp_path}")
    assert rc == 1 and "Traceback" in err and "disk on fire" in err
    assert err.strip().splitlines()[-1].startswith("error: RuntimeError: disk on fire")


def test_a_named_folder_keeps_its_name_and_a_later_success_clears_the_marker(recipe, tmp_path, capsys):
    folder = tmp_path / "mine"
    rc, _, _ = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), f"run.dir={folder}")
    assert rc == 1 and (folder / "FAILED").is_file() and not (tmp_path / "mine.failed").exists()
    rc, out, err = cli(capsys, "--plugin", PLUGIN, "run", str(recipe), "fail=none", f"run.dir={folder}")
    assert rc == 0, err
    assert out.splitlines()[-1] == str(folder)
    assert not (folder / "FAILED").exists()
    assert json.loads((folder / "metrics.json").read_text()) == {"ok": True}


def test_an_inherited_folder_keeps_its_name(recipe, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "from-launcher"
    folder.mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(folder))
    rc, _, _ = cli(capsys, "--plugin", PLUGIN, "run", str(recipe))
    assert rc == 1 and (folder / "FAILED").read_text().startswith("RuntimeError: disk on fire")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-launcher", "half.yaml"]


@pytest.mark.parametrize("override", ["guider.scale=abc", "trainer.devices=0", "trainer.precision=banana",
                                      "prompts=[0, 9]"])
def test_what_validate_rejects_creates_no_folder(override, tmp_path, capsys):
    rc, _, err = cli(capsys, "run", SAMPLE, override, f"run.root={tmp_path}")
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not list(tmp_path.iterdir())
