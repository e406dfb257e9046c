"""Runs are quiet by default: no Lightning banners or tips, no library warnings, no progress bar
left behind, the run folder as the last (and only) line of stdout; ``--verbose`` shows Lightning's
lines, and ``log.txt`` keeps them either way."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

from omniguide.recipes.cli import main
from omniguide.recipes.console import console, log_to_file

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tests" / "data" / "recipes"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
NOISE = re.compile(r"Tip|GPU available|LOCAL_RANK|(?i:warn)")   # "warn" in any case: warnings
BAR = re.compile(r"\d+%\||it/s\]")


def run_cli(*argv: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-m", "omniguide", "run", *argv], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def assert_quiet(out: str, err: str, root: Path) -> Path:
    """Only the run folder on stdout; nothing noisy anywhere; no finished bar left on screen."""
    [line] = out.splitlines()
    folder = Path(line)
    assert folder.parent == root and (folder / "metrics.json").is_file()
    noisy = [piece for piece in re.split(r"[\r\n]", out + err) if NOISE.search(piece)]
    assert not noisy, noisy
    # the last bar frame was erased: what the terminal shows last is not a bar
    last = err.rstrip("\n").split("\n")[-1].rsplit("\r", 1)[-1]
    assert not BAR.search(last), repr(err[-500:])
    return folder


def test_lightning_bars_go_to_stderr_and_leave_nothing_behind(capsys):
    """Lightning's own bars write to stdout (where the run folder must be the last line) and keep
    the finished training bar; ours do neither, for every stage."""
    from omniguide.recipes.runtime import progress_bar_callback

    bar = progress_bar_callback()
    for make in (bar.init_sanity_tqdm, bar.init_train_tqdm, bar.init_predict_tqdm, bar.init_test_tqdm):
        tqdm = make()
        tqdm.update(1)
        assert tqdm.leave is False
        tqdm.close()
    out, err = capsys.readouterr()
    assert out == "" and "Training" in err and "Predicting" in err


def test_a_sample_run_is_quiet(tmp_path):
    out, err = run_cli(str(RECIPES / "sample_base.yaml"), "trainer.enable_progress_bar=true", f"run.root={tmp_path}")
    folder = assert_quiet(out, err, tmp_path)
    assert "Predicting" in err                       # the bars did run (on stderr), and were cleared
    assert "GPU available" in (folder / "log.txt").read_text()    # Lightning's lines are kept in the log


def test_a_train_run_is_quiet(tmp_path):
    out, err = run_cli(str(RECIPES / "train_tiny.yaml"), "trainer.enable_progress_bar=true",
                       "trainer.max_steps=20", f"run.root={tmp_path}")
    folder = assert_quiet(out, err, tmp_path)
    assert "Epoch 0" in err
    log = (folder / "log.txt").read_text()
    assert "GPU available" in log and "Trainable params" in log     # the model summary went to the log


def test_verbose_shows_lightnings_lines(tmp_path, capsys):
    rc = main(["run", str(RECIPES / "sample_base.yaml"), "--verbose", f"run.root={tmp_path}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "GPU available" in err and "Tip" in err
    assert Path(out.splitlines()[-1]).parent == tmp_path


def test_lightning_records_and_warnings_go_to_the_log_not_the_terminal(tmp_path, capsys):
    """What a GPU run would print (Lightning's LOCAL_RANK line), without a GPU."""
    import lightning  # noqa: F401  (sets its loggers up as in a run)

    cuda = logging.getLogger("lightning.pytorch.accelerators.cuda")
    log = tmp_path / "log.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with console(verbose=False), log_to_file(log):
            cuda.info("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]")
            warnings.warn("an old API", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""
    text = log.read_text()
    assert "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]" in text and "UserWarning: an old API" in text
    with console(verbose=True):
        cuda.info("LOCAL_RANK: 1 - CUDA_VISIBLE_DEVICES: [0,1]")
    assert capsys.readouterr().err == "LOCAL_RANK: 1 - CUDA_VISIBLE_DEVICES: [0,1]\n"


def test_validate_prints_nothing_but_its_result():
    """A recipe that loads a pipeline: transformers' warnings (its "requires torchvision" line) and
    the loading bars stay off the terminal unless --verbose."""
    argv = [sys.executable, "-m", "omniguide", "validate", "configs/distill3d/toy_sds.yaml"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok: configs/distill3d/toy_sds.yaml (distill)\n", "")
    loud = subprocess.run([*argv, "--verbose"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert loud.returncode == 0 and "Loading pipeline components" in loud.stderr    # --verbose still shows them
