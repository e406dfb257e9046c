"""What a command prints: its own lines, and the libraries' chatter only with ``--verbose``.

Lightning announces devices (``GPU available: ...``), tips (``💡 Tip: ...``) and ranks
(``LOCAL_RANK: ...``) at INFO level, and libraries emit deprecation and future warnings. By default
none of it reaches the terminal -- it goes to the run's ``log.txt`` (:func:`log_to_file`) when
there is a run folder; with ``--verbose`` it is shown as well. Errors (ERROR and above) from any
library are always shown.

The CLI owns the process's root logger for the duration of a command (:func:`console`): one
handler on stderr whose level the verbosity sets. Lightning's records are relayed to it (and to
the run's log file) instead of its own terminal handlers, and warnings are captured into logging
(``logging.captureWarnings``) unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

# Lightning's loggers: their records are relayed to the root logger's handlers and stop there, so
# that the terminal handler Lightning puts on its top-level "lightning" logger (at import time,
# whatever the root logger has) never sees them.
RELAYED_LOGGERS = ("lightning.pytorch", "lightning.fabric")
# Loggers that may already carry a terminal handler of their own (imported before this command).
ADOPTED_LOGGERS = ("lightning", *RELAYED_LOGGERS)
FORMAT = "[%(asctime)s] %(name)s: %(message)s"


class _ToRoot(logging.Handler):
    """Hands each record to the root logger's handlers (the console and the run's log file)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


@contextlib.contextmanager
def console(verbose: bool = False) -> Iterator[None]:
    """For one command: library log records and warnings on stderr only when ``verbose``."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.ERROR)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    saved = [_detach_terminal_handlers(logging.getLogger(name)) for name in ADOPTED_LOGGERS]
    relay = _ToRoot()
    for name in RELAYED_LOGGERS:
        logging.getLogger(name).addHandler(relay)
        logging.getLogger(name).propagate = False
    if not verbose:
        logging.captureWarnings(True)
    try:
        yield
    finally:
        if not verbose:
            logging.captureWarnings(False)
        for name in RELAYED_LOGGERS:
            logging.getLogger(name).removeHandler(relay)
        for logger, handlers, propagate in saved:
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
        root.removeHandler(handler)


# Libraries that put up a terminal handler of their own and loading bars when first used, often during
# the command (transformers' "requires torchvision" warning on every run, the pipelines' loading bars).
LIBRARY_LOGGERS = ("transformers", "diffusers")


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """For a command that builds something: transformers' and diffusers' records relayed to the root
    logger like Lightning's (so to ``log.txt``, and to the terminal with ``verbose``) and their
    progress bars off, unless ``verbose``. Imports their logging modules (both are light)."""
    import importlib

    if verbose:
        yield
        return
    saved, relay = [], _ToRoot()
    for name in LIBRARY_LOGGERS:
        try:
            lib = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        logger = lib.get_logger(name)      # configures the library's root logger (its terminal handler)
        saved.append((lib, lib.is_progress_bar_enabled(), _detach_terminal_handlers(logger)))
        lib.disable_progress_bar()
        logger.addHandler(relay)
    try:
        yield
    finally:
        for lib, bars, (logger, handlers, propagate) in saved:
            logger.removeHandler(relay)
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
            if bars:
                lib.enable_progress_bar()


def _detach_terminal_handlers(logger: logging.Logger) -> tuple[logging.Logger, list[logging.Handler], bool]:
    """Remove ``logger``'s own terminal handlers; returns what to restore afterwards."""
    own = [h for h in logger.handlers
           if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in own:
        logger.removeHandler(h)
    return logger, own, logger.propagate


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Every library log record at INFO and above, and every captured warning, also goes to
    ``path`` (the run's ``log.txt``) while the block runs."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
