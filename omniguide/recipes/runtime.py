"""The Lightning runtime: ``trainer:`` section -> :class:`lightning.Trainer`, atomic checkpoints,
resume discovery, and a guard so that no rank outlives a dead peer.

Lightning does the training loop, the DDP launch (it re-executes the command line for ranks > 0),
gradient averaging, checkpointing and logging; this module only translates the recipe's section
into its arguments and plugs in the two behaviours recipes promise on top:

* checkpoints are written atomically (temporary file + rename), so a SIGKILL never leaves a
  half-written ``.ckpt`` that ``resume: auto`` would pick up;
* a rank whose parent (rank 0, the launcher) died exits instead of waiting in a collective;
  the reverse case (a child dies) is handled by Lightning's own child-process observer, and the
  DDP ``timeout_s`` bounds everything else.

And two for the terminal: progress bars on stderr that leave no finished bar behind (the run
folder stays the last line of stdout), and the model summary as a log record (``log.txt``; the
terminal with ``--verbose``) instead of Rich's table.

torch and Lightning are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import sys
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

from .. import errors
from .run import RunContext, atomic_path
from .schema import TrainerConfig, check_trainer_values, find_file

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
OWN_KEYS = ("logger", "process_group_backend", "timeout_s", "threads", "extra")  # ours, not Trainer arguments


def check_trainer(tcfg: TrainerConfig, path: str = "trainer") -> None:
    """Values Lightning would reject later (devices, precision, strategy, accelerator, ``extra``
    keys), checked now."""
    from lightning.pytorch.strategies import StrategyRegistry

    check_trainer_values(tcfg, path)
    if tcfg.accelerator not in ACCELERATORS:
        raise errors.ConfigError(f"{path}.accelerator", f"unknown accelerator '{tcfg.accelerator}'"
                                 f"{errors.did_you_mean(tcfg.accelerator, ACCELERATORS)}")
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if tcfg.strategy not in strategies:
        raise errors.ConfigError(f"{path}.strategy", f"unknown strategy '{tcfg.strategy}'"
                                 f"{errors.did_you_mean(tcfg.strategy, strategies)}")
    import lightning

    params = inspect.signature(lightning.Trainer.__init__).parameters
    for key in tcfg.extra:
        if key not in params or key == "self":
            hint = errors.did_you_mean(key, params)
            raise errors.ConfigError(f"{path}.extra.{key}", f"not a lightning.Trainer argument{hint}")
    if tcfg.logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise errors.ConfigError(f"{path}.logger", "'tensorboard' needs the tensorboard package "
                                     "(pip install tensorboard)") from None


def build_trainer(tcfg: TrainerConfig, run: RunContext, callbacks: list | None = None, path: str = "trainer",
                  **overrides: Any) -> Any:
    """A :class:`lightning.Trainer` for the recipe: run folder as root, CSV/TensorBoard logger,
    atomic checkpoint IO, DDP with the configured backend and timeout."""
    import lightning
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.loggers import TensorBoardLogger

    check_trainer(tcfg, path)
    if tcfg.num_nodes > 1 and not run.explicit_dir:
        raise errors.ConfigError("run.dir", "a multi-node job needs an explicit run.dir on a shared filesystem "
                                 "(each node would otherwise create its own timestamped folder)")
    kwargs = {k: v for k, v in vars(tcfg).items() if k not in OWN_KEYS}
    kwargs["strategy"] = _strategy(tcfg)
    kwargs.update(tcfg.extra)
    kwargs.update(overrides)
    if tcfg.logger == "csv":
        kwargs["logger"] = appending_csv_logger(run.dir)
    elif tcfg.logger == "tensorboard":
        kwargs["logger"] = TensorBoardLogger(run.dir, name="logs", version="")
    else:
        kwargs["logger"] = False
    kwargs.setdefault("default_root_dir", str(run.dir))
    kwargs["plugins"] = [*(kwargs.get("plugins") or []), AtomicCheckpointIO()]
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *(callbacks or [])]
    kwargs["callbacks"] += terminal_callbacks(kwargs["callbacks"], kwargs.get("enable_progress_bar", True),
                                              kwargs.get("enable_model_summary", True))
    if any(isinstance(c, ModelSummary) for c in kwargs["callbacks"]):
        kwargs["enable_model_summary"] = False   # a summary callback is there; Lightning need not add one
    if tcfg.threads:
        import torch

        torch.set_num_threads(tcfg.threads)
    # Our dataloaders yield whole items or step numbers: worker processes and batch indices do not apply.
    warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    start_parent_watchdog()
    try:
        return lightning.Trainer(**kwargs)
    except (ValueError, TypeError, RuntimeError) as err:  # MisconfigurationException is a ValueError
        raise errors.ConfigError(path, " ".join(str(err).split())) from None


def appending_csv_logger(root: Path) -> Any:
    """Lightning's CSV logger to ``root/logs/metrics.csv``, appending to the file a resumed run
    left (Lightning's own deletes it; :func:`trim_csv_log` drops the rows past the checkpoint)."""
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):   # its header: the columns new rows extend
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = next(csv.reader(f), [])

    class AppendingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> AppendingWriter:
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(root, name="logs", version="")


def trim_csv_log(path: Path, start_step: int) -> None:
    """Keep the rows of ``path`` (a CSV with a ``step`` column) logged before ``start_step``: a run
    resumed from step N logs N onwards again, so rows a killed run wrote past its checkpoint go."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step") and int(float(r["step"])) < start_step]
        header = reader.fieldnames or []
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def terminal_callbacks(given: list, progress_bar: bool, model_summary: bool) -> list:
    """The progress bar and model summary Lightning would add by default, unless ``given`` has its
    own: :func:`progress_bar_callback` instead of Lightning's (which writes to stdout and keeps the finished
    bar), a plain ``ModelSummary`` (a log record) instead of Rich's table printed to the terminal."""
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    out = []
    if progress_bar and not any(isinstance(c, ProgressBar) for c in given):
        out.append(progress_bar_callback())
    if model_summary and not any(isinstance(c, ModelSummary) for c in given):
        out.append(ModelSummary())
    return out


def progress_bar_callback() -> Any:
    """Lightning's tqdm progress bar, on stderr, leaving no finished bar behind."""
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class StderrProgressBar(TQDMProgressBar):
        """Every bar as Lightning makes it, but on stderr and with ``leave=False``."""

        def _bar(self, desc: str, offset: int = 0, **kwargs: Any) -> Tqdm:
            return Tqdm(desc=desc, position=2 * self.process_position + offset, disable=self.is_disabled,
                        leave=False, dynamic_ncols=True, file=sys.stderr, bar_format=self.BAR_FORMAT, **kwargs)

        def init_sanity_tqdm(self) -> Tqdm:
            return self._bar(self.sanity_check_description)

        def init_train_tqdm(self) -> Tqdm:
            return self._bar(self.train_description, smoothing=0)

        def init_predict_tqdm(self) -> Tqdm:
            return self._bar(self.predict_description, smoothing=0)

        def init_validation_tqdm(self) -> Tqdm:
            return self._bar(self.validation_description, offset=int(self.trainer.state.fn != "validate"))

        def init_test_tqdm(self) -> Tqdm:
            return self._bar("Testing")

    return StderrProgressBar()


def device_count(devices: Any) -> int | None:
    """The number of processes per node ``devices`` asks for, when it says (None for ``auto``, -1)."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices if devices >= 1 else None
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return None   # "auto", -1, "0,1": Lightning decides


def _strategy(tcfg: TrainerConfig) -> Any:
    """``ddp*`` strategy names become a DDPStrategy carrying the backend and timeout; so does
    ``auto`` with several devices or nodes (where Lightning would pick plain DDP)."""
    name = tcfg.strategy
    if name == "auto" and ((device_count(tcfg.devices) or 1) > 1 or tcfg.num_nodes > 1):
        name = "ddp"
    if not name.startswith("ddp"):
        return name
    from lightning.pytorch.strategies import DDPStrategy

    start = next((m for m in ("spawn", "fork", "notebook") if f"_{m}" in name), "popen")
    find_unused = name.endswith("find_unused_parameters_true")
    return DDPStrategy(process_group_backend=tcfg.process_group_backend,
                       timeout=timedelta(seconds=tcfg.timeout_s), start_method=start,
                       find_unused_parameters=find_unused)


class AtomicCheckpointIO:
    """Lightning checkpoint IO that writes ``path`` through a temporary file and a rename."""

    def __new__(cls):
        import torch
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        class _Atomic(TorchCheckpointIO):
            def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
                """``torch.save`` to a temporary file, renamed onto ``path``."""
                with atomic_path(Path(path)) as tmp:
                    torch.save(checkpoint, tmp)

        return _Atomic()


def fit_checkpointed(cfg: Any, run: RunContext, module: Any, callbacks: list, batch: str = "is") -> tuple:
    """``Trainer.fit`` for a recipe with ``trainer``, ``batch_size``, ``checkpoint_every`` and ``resume``:
    ``checkpoints/step-N.ckpt`` every N steps, resumed from ``resume`` (``auto``: the newest,
    ``never``, or a file), then ``checkpoints/final.ckpt``. Returns the trainer, the checkpoint
    resumed from and the seconds ``fit`` took; ``batch`` words the uneven-batch error."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    folder = run.path("checkpoints")
    checkpoints = ModelCheckpoint(dirpath=folder, filename="step-{step:06d}", auto_insert_metric_name=False,
                                  every_n_train_steps=cfg.checkpoint_every, save_top_k=-1)
    trainer = build_trainer(cfg.trainer, run, callbacks=[checkpoints, *callbacks])
    run.rank = trainer.global_rank
    if cfg.batch_size % trainer.world_size:
        raise errors.ConfigError("batch_size",
                                 f"{cfg.batch_size} {batch} not divisible by the {trainer.world_size} processes")
    ckpt = None
    if cfg.resume == "auto":
        newest = newest_checkpoint(folder)
        ckpt = str(newest) if newest is not None else None
    elif cfg.resume != "never":
        ckpt = str(find_file(cfg.resume, "resume"))
    if ckpt and run.is_main:
        run.log(f"resuming from {ckpt}")
    if run.is_main and cfg.trainer.logger == "csv":
        start_step = load_checkpoint(ckpt)["global_step"] if ckpt else 0
        trim_csv_log(run.path("logs") / "metrics.csv", start_step)
    start = time.perf_counter()
    trainer.fit(module, ckpt_path=ckpt)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(folder / "final.ckpt")
    return trainer, ckpt, seconds


_STEP = re.compile(r"step-(\d+)\.ckpt$")


def newest_checkpoint(folder: Path) -> Path | None:
    """The ``step-N.ckpt`` with the largest N in ``folder`` that loads (None when there is none).

    Files are written atomically, so a listed file is complete; loading it once more guards
    against files copied in by hand."""

    found = sorted(((int(m.group(1)), p) for p in Path(folder).glob("step-*.ckpt")
                    if (m := _STEP.search(p.name))), reverse=True)
    for _, path in found:
        try:
            load_checkpoint(path)
            return path
        except Exception:
            continue
    return None


def load_checkpoint(path: Path | str) -> dict:
    """A Lightning checkpoint's contents, on the CPU (memory-mapped: reading one key is cheap)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


_watchdog_started = False


def start_parent_watchdog(period_s: float = 1.0) -> None:
    """On a rank Lightning launched (``LOCAL_RANK`` > 0), exit with code 1 when the launching
    process disappears, instead of waiting in a collective for a rank that is gone."""
    global _watchdog_started
    if _watchdog_started or int(os.environ.get("LOCAL_RANK", "0")) == 0:
        return
    _watchdog_started = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(period_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="omniguide-parent-watchdog").start()
