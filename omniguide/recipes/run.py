"""Run folders: ``<root>/<name>-<timestamp>/`` with the resolved config, outputs, metrics and logs.

A run never overwrites an existing folder (a collision gets a ``-1``, ``-2`` ... suffix), unless the
user names one with ``run.dir`` to continue it (resume training, skip finished samples). Every
output goes through :meth:`RunContext.atomic`: written to a hidden temporary file in the same
folder, then renamed, so a killed run leaves either the complete file or none under its final name.

Lightning's DDP launcher re-executes the command line for ranks > 0; they find the folder that
rank 0 created through the ``OMNIGUIDE_RUN_DIR`` environment variable they inherit.

A run whose recipe fails is marked: a ``FAILED`` file holds the error line, and a folder the run
created itself is renamed ``<name>.failed`` (:meth:`RunContext.mark_failed`); its outputs stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_path, remove_temporaries

RUN_DIR_ENV = "OMNIGUIDE_RUN_DIR"
FAILED_MARKER = "FAILED"        # in a run folder: the run failed; the file holds the error line
FAILED_SUFFIX = ".failed"       # appended to the name of a failed run's timestamped folder


@dataclass
class RunSection:
    """The common ``run:`` section of every recipe."""

    root: str = "runs"                # folder that holds run folders
    name: str | None = None           # folder prefix; default: the recipe file's stem
    dir: str | None = None            # an explicit folder to create or continue (resume, multi-node)


def env_rank() -> int:
    """This process's global rank as far as the environment tells (0 outside distributed jobs)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var])
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return local + node  # only zero-ness matters here: rank 0 is local 0 on node 0


@dataclass
class RunContext:
    """What a recipe function gets besides its config: the run folder and helpers to write into it."""

    dir: Path
    recipe: str = ""
    rank: int = field(default_factory=env_rank)
    explicit_dir: bool = False   # the folder was named (run.dir) or inherited, not freshly created

    # -- creation ------------------------------------------------------------------------------
    @staticmethod
    def create(section: RunSection, prefix: str, config_yaml: str, recipe: str = "") -> RunContext:
        """Create (rank 0) or join (other ranks) the run folder and write ``config.yaml``."""
        inherited = os.environ.get(RUN_DIR_ENV)
        if inherited:
            run = RunContext(Path(inherited), recipe, explicit_dir=True)
        elif section.dir:
            path = Path(section.dir)
            path.mkdir(parents=True, exist_ok=True)
            run = RunContext(path, recipe, explicit_dir=True)
        else:
            run = RunContext(new_run_dir(Path(section.root), section.name or prefix), recipe)
        if run.is_main:
            remove_temporaries(run.dir)   # a killed run's, in a folder being continued
            if (run.dir / "config.yaml").exists():
                _check_same_kind(run.dir / "config.yaml", config_yaml)
                run.write_text(f"config.{time.strftime('%Y%m%d-%H%M%S')}.yaml", config_yaml)
            else:
                run.write_text("config.yaml", config_yaml)
        return run

    @property
    def is_main(self) -> bool:
        """True on the process that writes shared files (global rank 0)."""
        return self.rank == 0

    def path(self, name: str) -> Path:
        """``dir / name``."""
        return self.dir / name

    # -- atomic writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """Yield a temporary path; on success rename it to ``dir / name`` (parents created)."""
        with atomic_path(self.dir / name) as tmp:
            yield tmp

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` to ``dir / name`` atomically."""
        with self.atomic(name) as tmp:
            tmp.write_text(text)
        return self.dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as indented JSON to ``dir / name`` atomically."""
        return self.write_text(name, json.dumps(obj, indent=2, default=_jsonable) + "\n")

    # -- failure -------------------------------------------------------------------------------
    def mark_failed(self, message: str) -> Path:
        """Write ``FAILED`` (atomically) holding ``message``; rename a folder this run created to
        ``<name>.failed`` so that it no longer looks like a run. A folder named with ``run.dir`` or
        inherited keeps its name (it may be continued). Outputs are never removed. Returns the
        folder's path now."""
        self.write_text(FAILED_MARKER, message.rstrip("\n") + "\n")
        if self.explicit_dir:
            return self.dir
        target = self.dir.with_name(self.dir.name + FAILED_SUFFIX)
        try:
            os.rename(self.dir, target)   # same parent folder: atomic; refuses to replace a non-empty folder
        except OSError:
            return self.dir
        self.dir = target
        return target

    def clear_failed(self) -> None:
        """Remove the ``FAILED`` marker a previous failed run left in this folder."""
        (self.dir / FAILED_MARKER).unlink(missing_ok=True)

    def log(self, message: str) -> None:
        """Append a line to ``dir/log.txt`` and print it to stderr."""
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.dir / "log.txt", "a") as f:
            f.write(line + "\n")


def _check_same_kind(existing: Path, config_yaml: str) -> None:
    """Continuing a folder is for the same kind of recipe (a sample run cannot resume a train run)."""
    import yaml

    from ..core.errors import ConfigError

    old = (yaml.safe_load(existing.read_text()) or {}).get("kind")
    new = (yaml.safe_load(config_yaml) or {}).get("kind")
    if old != new:
        raise ConfigError("run.dir", f"{existing.parent} holds a '{old}' run; this recipe is '{new}'")


def new_run_dir(root: Path, prefix: str) -> Path:
    """Create ``root/prefix-<timestamp>`` (``-1``, ``-2`` ... on collision); never reuse a folder."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(10_000):
        path = root / (stem if i == 0 else f"{stem}-{i}")
        try:
            path.mkdir()   # atomic: fails if another process took the name first
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder under {root}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
