"""``validate`` rejects every value ``run`` would trip over -- non-finite, textual or list scales,
device counts, precisions -- with one line naming the full dotted path, for every recipe kind that
has the setting; ``run`` gives the same line before creating a run folder (in-process, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniguide.recipes.cli import main
from omniguide.recipes.schema import precision_choices

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "recipes" / "sample_base.yaml"
TRAIN = ROOT / "tests" / "data" / "recipes" / "train_tiny.yaml"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BENCH = ROOT / "configs" / "bench"

NUMBER_OR_SCHEDULE = "expected a number or a schedule {shape: linear, scale: 7}"
DEVICES = "expected a number of devices >= 1, -1 (all), 'auto' or a list of device ids"
PRECISIONS = ("16, 16-mixed, 16-true, 32, 32-true, 64, 64-true, bf16, bf16-mixed, bf16-true, transformer-engine, "
              "transformer-engine-float16")

CASES = {
    # name: (recipe, override, the error line after "error: ")
    "sample-scale-nan": (SAMPLE, "guider.scale=nan", "guider.scale: must be a finite number, got 'nan'"),
    "sample-scale-inf": (SAMPLE, "guider.scale=inf", "guider.scale: must be a finite number, got 'inf'"),
    "sample-scale-yaml-inf": (SAMPLE, "guider.scale=-.inf", "guider.scale: must be a finite number, got -inf"),
    "sample-scale-text": (SAMPLE, "guider.scale=abc", f"guider.scale: {NUMBER_OR_SCHEDULE}, got 'abc'"),
    "sample-scale-list": (SAMPLE, "guider.scale=[1,2]", f"guider.scale: {NUMBER_OR_SCHEDULE}, got a list [1, 2]"),
    "sample-schedule-scale": (SAMPLE, "guider.scale={shape: linear, scale: .nan}",
                              "guider.scale.scale: must be a finite number, got nan"),
    "sample-inner-scale": (SAMPLE, "guider={name: interval, guider: {name: cfg, scale: abc}, sigma: [0.28, 5.42]}",
                           f"guider.guider.scale: {NUMBER_OR_SCHEDULE}, got 'abc'"),
    "sample-item-scale": (SAMPLE, "prompts=[0, {prompt: 1, guider: {scale: .nan}}]",
                          "prompts.1.guider.scale: must be a finite number, got nan"),
    "sample-float-field": (SAMPLE, "guider={name: cfg-rescale, rescale: abc}",
                           "guider.rescale: expected a number, got 'abc'"),
    "sample-guider-name": (SAMPLE, "guider.name.guider=0", "guider.name: expected the name of a guider, got a "
                                                            "mapping {'guider': 0}"),
    "sample-inner-name": (SAMPLE, "guider={name: interval, guider: {name: [1]}, sigma: [0.28, 5.42]}",
                          "guider.guider.name: expected the name of a guider, got a list [1]"),
    "sample-model-name": (SAMPLE, "model.name.x=1", "model.name: expected the name of a model, got a mapping {'x': 1}"),
    "sample-devices-0": (SAMPLE, "trainer.devices=0", f"trainer.devices: {DEVICES}, got 0"),
    "sample-devices-neg": (SAMPLE, "trainer.devices=-2", f"trainer.devices: {DEVICES}, got -2"),
    "sample-devices-ids": (SAMPLE, "trainer.devices=[0,0]", f"trainer.devices: {DEVICES} (distinct ids >= 0), "
                                                            "got a list [0, 0]"),
    "sample-precision-int": (SAMPLE, "trainer.precision=17", "trainer.precision: unknown precision 17; "
                                                             "did you mean '16'?"),
    "sample-precision-text": (SAMPLE, "trainer.precision=banana",
                              f"trainer.precision: unknown precision 'banana'; valid: {PRECISIONS}"),
    "sample-timeout-inf": (SAMPLE, "trainer.timeout_s=inf", "trainer.timeout_s: must be a finite number, got inf"),
    "train-devices-0": (TRAIN, "trainer.devices=0", f"trainer.devices: {DEVICES}, got 0"),
    "train-devices-neg": (TRAIN, "trainer.devices=-2", f"trainer.devices: {DEVICES}, got -2"),
    "train-devices-text": (TRAIN, "trainer.devices=many", f"trainer.devices: {DEVICES}, got 'many'"),
    "train-precision": (TRAIN, "trainer.precision=17", "trainer.precision: unknown precision 17; did you mean '16'?"),
    "train-batch-split": (TRAIN, "trainer.devices=3", "batch_size: 64 is not divisible by the 3 processes"),
    "train-lr-nan": (TRAIN, "lr=nan", "lr: must be a finite number, got nan"),
    "quickstart-scales-nan": (QUICKSTART, "guiders.0.scales=[1,nan]",
                              "guiders.0.scales.1: must be a finite number, got nan"),
    "quickstart-scales-inf": (QUICKSTART, "guiders.3.scales.2=inf", "guiders.3.scales.2: must be a finite number, "
                                                                     "got inf"),
    "quickstart-scales-text": (QUICKSTART, "guiders.0.scales=[1,abc]",
                               "guiders.0.scales.1: Value 'abc' of type 'str' is not a valid Float"),
    "quickstart-guider-field": (QUICKSTART, "guiders.1.guider.rescale=abc",
                                "guiders.1.guider.rescale: expected a number, got 'abc'"),
    "bench-core-scale": (BENCH / "core.yaml", "guiders.cfg.scale=nan", "guiders.cfg.scale: must be a finite number, "
                                                                        "got 'nan'"),
    "bench-core-inner-scale": (BENCH / "core.yaml", "guiders.interval.guider.scale=abc",
                               f"guiders.interval.guider.scale: {NUMBER_OR_SCHEDULE}, got 'abc'"),
    "bench-core-band-scales": (BENCH / "core.yaml", "extra.fdg-fft.scale_high=[1,nan]",
                               "extra.fdg-fft.scale_high.1: must be a finite number, got 'nan'"),
    "bench-diffusers-scale": (BENCH / "diffusers_step.yaml", "scale=nan", "scale: must be a finite number, got nan"),
    "bench-diffusers-text": (BENCH / "diffusers_step.yaml", "perturbed_scale=abc",
                             "perturbed_scale: Value 'abc' of type 'str' is not a valid Float"),
    "bench-guiders-scales": (BENCH / "guiders.yaml", "methods.0.scales=[1,nan]",
                             "methods.0.scales.1: must be a finite number, got nan"),
    "bench-guiders-auto": (BENCH / "guiders.yaml", "auto_scales=[2,.inf]",
                           "auto_scales.1: must be a finite number, got inf"),
    "bench-guiders-field": (BENCH / "guiders.yaml", "methods.1.guider.rescale=abc",
                            "methods.1.guider.rescale: expected a number, got 'abc'"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_and_run_reject_with_the_same_line_and_no_folder(name, tmp_path, capsys):
    recipe, override, expected = CASES[name]
    assert main(["validate", str(recipe), override]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {expected}"], (out, err)
    assert main(["run", str(recipe), override, f"run.root={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {expected}"] and out == ""
    assert not list(tmp_path.iterdir())     # nothing that looks like a run


def test_precisions_are_read_from_lightning():
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT

    expected = {v for arg in get_args(_PRECISION_INPUT) for v in get_args(arg)}
    assert set(precision_choices()) == expected and {"32-true", "bf16-mixed", 16} <= expected


@pytest.mark.parametrize("override", ["trainer.devices=auto", "trainer.devices=-1", "trainer.devices=[0]",
                                      "trainer.devices='0,1'", "trainer.precision=bf16-mixed",
                                      "trainer.precision=64", "guider.scale={shape: cosine, scale: 4}"])
def test_valid_values_still_validate(override, capsys):
    assert main(["validate", str(SAMPLE), override]) == 0, capsys.readouterr().err
