"""The commands a new user types first answer without importing the heavy libraries.

``--help``, ``--version``, ``show`` and ``list`` import none of torch, Lightning, diffusers,
transformers (``list`` prints the committed index of built-in names, checked here against the
live registries; with plugins it imports the registries). Asserted on the modules a fresh
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


def test_list_imports_no_heavy_library_and_prints_every_builtin():
    loaded, out = loaded_after("list")
    assert loaded == []
    assert "  cfg" in out and "  lr-monitor" in out and "  small-denoiser" in out and "  bench-image-guiders" in out
    loaded, out = loaded_after("list", "guiders")
    assert loaded == [] and "magnitude-aware" in out.split()
    loaded, out = loaded_after("list", "rollout-models")
    assert loaded == [] and out.split()[:2] == ["toy-audio", "video-denoiser"]
    loaded, out = loaded_after("list", "families")
    assert loaded == [] and {"sdxl", "ltx", "stable-audio"} <= set(out.split())


def test_the_committed_name_indexes_match_the_live_registries():
    """The built-in index alone, and merged with the entry-point plugins' (the bench's), give the
    names of the live registries without, and with, the plugins loaded."""
    code = ("import json, sys; from omniguide.recipes.components import builtin_names; "
            "from omniguide.recipes.registry import committed_names; "
            "print(json.dumps([builtin_names(plugins=sys.argv[1] == '1'), committed_names()]))")
    for plugins in ("0", "1"):
        proc = subprocess.run([sys.executable, "-c", code, plugins], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        live, committed = json.loads(proc.stdout.strip().splitlines()[-1])
        if plugins == "0":
            committed = json.loads((ROOT / "omniguide/recipes/builtin_components.json").read_text())
        assert live == committed, ("a committed name index (omniguide/recipes/builtin_components.json or "
                                   "omniguide/bench/components.json) is stale; regenerate them with "
                                   'python -c "from omniguide.recipes.components import write_builtin_index as w; w()"')
    builtin = json.loads((ROOT / "omniguide/recipes/builtin_components.json").read_text())
    assert "bench-core" in live["recipes"] and not any(n.startswith("bench-") for n in builtin["recipes"])


def test_list_with_a_plugin_shows_the_plugins_components(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("from dataclasses import dataclass\nfrom omniguide.core.registry import GUIDERS\n"
                      "from omniguide.core.methods import CFG\n\n@GUIDERS.register('my-cfg')\n"
                      "@dataclass\nclass MyCFG(CFG):\n    pass\n")
    loaded, out = loaded_after("list", "guiders", "--plugin", str(plugin))
    assert "my-cfg" in out.split() and "cfg" in out.split() and "torch" in loaded


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


def test_validate_in_a_fresh_process_knows_the_modalities_presets_and_guiders():
    """``validate`` in a new interpreter (no test session registering the modalities first) accepts
    recipes naming an audio preset and a video guider: the recipe layer loads the modality packages
    before it builds a guider (it once answered "unknown guider preset 'stable-audio-tools'")."""
    for recipe in ("configs/bench/audio_guiders.yaml", "configs/bench/video_history.yaml"):
        proc = subprocess.run([sys.executable, "-m", "omniguide", "validate", recipe], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0 and proc.stdout.startswith("ok:"), (recipe, proc.stdout, proc.stderr[-500:])


def test_the_library_api_in_a_fresh_process_knows_every_name_the_modalities_register():
    """``preset``, ``build_guider`` and the scale builder in a new interpreter (nothing imported but
    the package) resolve the names the modalities register, as ``omniguide list`` shows them: the
    root registers a loader for the core's registries (it once said "unknown guider preset
    'ace-step'; valid: " and "did you mean 'tsg'?" for stg)."""
    code = ("import omniguide\n"
            "from omniguide.core.scale import build_scale\n"
            "print(type(omniguide.preset('ace-step')).__name__)\n"
            "print(omniguide.build_guider({'name': 'history'}).name, omniguide.build_guider({'name': 'stg'}).name)\n"
            "print(type(build_scale({'name': 'frame-ramp', 'start': 1.0, 'end': 2.0})).__name__)\n"
            "try:\n    omniguide.build_guider({'name': 'stgg'})\n"
            "except omniguide.ConfigError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["Interval", "history stg", "FrameRamp"]
    assert lines[3] == "guider.name: unknown guider 'stgg'; did you mean 'stg'?"
