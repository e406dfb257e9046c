"""The commands a new user types first answer without importing the heavy libraries.

``--help``, ``--version`` and ``show`` import none of torch, Lightning, diffusers, transformers;
``list`` imports torch (the guider registry) but none of the others. Asserted on the modules a fresh
interpreter has loaded after the command, not on wall time (machines are noisy)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import omniguide
from omniguide.recipes.schema import MixtureSection
from omniguide.zoo import MixtureSpec

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "diffusers", "transformers")

# runs the CLI in-process, then prints which heavy top-level packages were imported
PROBE = """
import json, sys
from omniguide.recipes.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
print("\\nLOADED " + json.dumps(loaded))
""".replace("HEAVY", repr(HEAVY))


def loaded_after(*argv: str) -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED "), proc.stdout + proc.stderr
    return json.loads(last[len("LOADED "):]), proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["show", "configs/quickstart.yaml"],
                                  ["show", "configs/sample/mixture_cfg.yaml", "guider.scale=5"],
                                  ["run", "--help"]])
def test_help_version_and_show_import_no_heavy_library(argv):
    loaded, out = loaded_after(*argv)
    assert loaded == [], f"{argv} imported {loaded}"
    if argv[0] == "show":
        assert "kind:" in out


def test_list_imports_torch_but_not_lightning_diffusers_or_transformers():
    loaded, out = loaded_after("list")
    assert loaded == ["torch"]
    assert "  cfg" in out and "  lr-monitor" in out and "  small-denoiser" in out


def test_version_prints_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "omniguide", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"omniguide {omniguide.__version__}\n"


def test_the_recipe_testbed_section_mirrors_the_zoo_spec():
    """MixtureSection repeats MixtureSpec's fields so that schemas load without torch."""
    def fields(cls):
        return [(f.name, f.type, f.default) for f in dataclasses.fields(cls)]

    assert fields(MixtureSection) == fields(MixtureSpec)
    section = MixtureSection(dim=3, classes=2, radius=2.0)
    assert section.spec() == MixtureSpec(dim=3, classes=2, radius=2.0)


def test_the_public_names_load_on_first_use():
    from omniguide import CFG, sample

    assert CFG(scale=2.0).scale == 2.0 and callable(sample)
    assert set(omniguide.__all__) <= set(dir(omniguide))
    with pytest.raises(AttributeError):
        omniguide.NoSuchThing  # noqa: B018
