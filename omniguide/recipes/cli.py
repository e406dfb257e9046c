"""``omniguide run | show | validate | list``.

    omniguide run configs/sample/mixture_cfg.yaml guider.scale=5 trainer.devices=2
    omniguide show CONFIG [key=value ...]       # the resolved config
    omniguide validate CONFIG [key=value ...]   # check everything, run nothing
    omniguide list [KIND]                       # registered components, one name per line
    omniguide --version

A user error (bad key, type, range, file, component, YAML) prints one line on stderr and exits
with code 2; ``--debug`` shows the traceback. ``run`` prints the run folder as its last stdout line;
a run whose recipe fails leaves a ``FAILED`` marker in its folder (see :func:`_run`). Library
chatter (Lightning's banners and tips, transformers' and diffusers' warnings and loading bars, warnings)
goes to the run's ``log.txt`` (bars: nowhere), and to the terminal
too with ``--verbose``.

This module and what ``--help`` and ``show`` import stay free of torch, Lightning and diffusers:
those are imported by the commands that build something (``validate``, ``run``, ``list``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from .. import errors

EXIT_USER_ERROR = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands share ``--plugin``, ``--debug`` and ``--verbose``)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="omniguide", description="Run omniguide YAML recipes.")
    parser.add_argument("--version", action="version", version=f"omniguide {__version__}")
    _add_common(parser, default=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, default=False)   # after the subcommand too, without resetting earlier ones
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a recipe"), ("show", "print the resolved config"),
                       ("validate", "check a recipe without running it")):
        p = sub.add_parser(name, help=text, parents=[common])
        p.add_argument("config", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. guider.scale=5")
    p = sub.add_parser("list", help="list registered components", parents=[common])
    p.add_argument("kind", nargs="?", help="recipes, guiders, models, schedulers, callbacks, objectives, trainables")
    return parser


def _add_common(parser: argparse.ArgumentParser, default: bool) -> None:
    parser.add_argument("--plugin", action="append", default=[] if default else argparse.SUPPRESS,
                        metavar="MODULE",
                        help="import MODULE (dotted name or .py file) first; it may register components")
    parser.add_argument("--debug", action="store_true", default=False if default else argparse.SUPPRESS,
                        help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true", default=False if default else argparse.SUPPRESS,
                        help="show the libraries' messages and warnings (Lightning's banners and tips, "
                             "deprecations); they always go to the run's log.txt")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omniguide`` console script; returns the exit code."""
    from .console import console

    args = parse_args(argv)
    with console(verbose=args.verbose):
        try:
            return _dispatch(args)
        except (errors.ConfigError, errors.OmniguideError) as err:
            return _report(err, args.debug, EXIT_USER_ERROR)
        except RecipeFailed as failed:
            return _report(failed.error, args.debug, EXIT_FAILED, failed.where)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with flags anywhere: ``run recipe.yaml --verbose guider.scale=5`` too.

    argparse stops filling ``overrides`` at the first flag after them; the overrides that follow
    the flag come back as unknown arguments and are put back in order."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    flags = [a for a in unknown if a.startswith("-")]
    if flags or (unknown and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(flags or unknown)}")
    if unknown:
        args.overrides = [*args.overrides, *unknown]
    return args


def _report(err: BaseException, debug: bool, code: int, where: str = "") -> int:
    """Print ``err`` as one ``error:`` line (after its traceback with ``--debug``); return ``code``."""
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    print(f"error: {one_line(err)}{where}", file=sys.stderr, flush=True)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    from . import runners
    from .config import import_plugins, load_recipe
    from .console import quiet_libraries

    runners.load_all()
    import_plugins(args.plugin, path="--plugin")
    if args.command == "list":
        return _list(args.kind, args.plugin)
    resolved = load_recipe(args.config, args.overrides)
    if args.command == "show":
        print(resolved.yaml, end="")
        return 0
    with quiet_libraries(args.verbose):   # transformers' torchvision warning, loading bars: log.txt only
        if resolved.recipe.check is not None:
            resolved.recipe.check(resolved.cfg)
        if args.command == "validate":
            print(f"ok: {args.config} ({resolved.recipe.name})")
            return 0
        return _run(resolved)


class RecipeFailed(Exception):
    """A recipe function raised something other than a user error; ``where`` points at the run
    folder (for the message line)."""

    def __init__(self, error: BaseException, where: str):
        super().__init__(str(error))
        self.error, self.where = error, where


def _run(resolved: Any) -> int:
    """Run a checked recipe in a run folder; print the folder as the last stdout line.

    Everything ``validate`` checks has been checked before the folder is created. If the recipe
    function then fails, the folder keeps what it wrote but gets a ``FAILED`` file holding the
    error line, and a freshly created timestamped folder is renamed ``<name>.failed`` (a folder
    named with ``run.dir`` or inherited through ``OMNIGUIDE_RUN_DIR`` keeps its name: it may be
    continued). A later successful run in the same folder removes the marker."""
    from .console import log_to_file
    from .run import RUN_DIR_ENV, RunContext

    trainer = getattr(resolved.cfg, "trainer", None)
    if getattr(trainer, "num_nodes", 1) > 1 and not resolved.run.dir:
        raise errors.ConfigError("run.dir", "a multi-node job needs an explicit run.dir on a shared filesystem "
                                 "(each node would otherwise create its own timestamped folder)")
    prefix = resolved.source.stem if resolved.source is not None else resolved.recipe.name
    run = RunContext.create(resolved.run, prefix, resolved.yaml, resolved.recipe.name)
    # Lightning re-executes this command line for ranks > 0; they must join this folder.
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run.dir)
    threads = _torch_threads()
    try:
        with log_to_file(run.dir / ("log.txt" if run.is_main else f"log.rank{run.rank}.txt")):
            metrics = resolved.recipe.fn(resolved.cfg, run)
    except (Exception, KeyboardInterrupt) as err:
        folder = run.mark_failed(one_line(err)) if run.is_main else run.dir
        if isinstance(err, (errors.ConfigError, errors.OmniguideError, KeyboardInterrupt)):
            raise
        raise RecipeFailed(err, f" (run folder: {folder}; --debug shows the traceback)") from err
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        _restore_torch_threads(threads)
    if run.is_main:
        if metrics is not None:
            run.write_json("metrics.json", metrics)
        run.clear_failed()
        print(run.dir, flush=True)
    return 0


def _torch_threads() -> int | None:
    """Torch's CPU thread count when torch is already imported (a run inside a Python session)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads(threads: int | None) -> None:
    """Recipes set ``threads`` for their run; a run called in-process gives the caller its count back
    (a session left with more threads than free cores slows every later torch op badly)."""
    if threads is not None:
        sys.modules["torch"].set_num_threads(threads)


def _list(kind: str | None, plugins: Sequence[str] = ()) -> int:
    from .registry import RENAMED_LISTINGS, committed_names
    from .runners import FAILED

    for module, why in FAILED.items():
        print(f"warning: runner module '{module}' could not be imported: {why}", file=sys.stderr)
    # without --plugin the committed indexes (built-in names, each entry-point plugin's) are the
    # listing: no torch import
    index = {} if plugins else committed_names()
    if kind:
        kind = RENAMED_LISTINGS.get(kind, kind)
        key = next((k for k in (kind, kind + "s") if k in index), None)
        if key:
            names = index[key]
        else:
            from .components import component_kind  # imports torch: only when the index cannot answer

            names = component_kind(kind).names()
        if not names:
            print(f"(no {key or kind}s are registered yet)", file=sys.stderr)
        for name in names:
            print(name)
        return 0
    if not index:
        from .components import all_components

        index = {key: registry.names() for key, registry in all_components().items()}
    listing = index
    for key, names in listing.items():
        print(f"{key}:")
        for name in names:
            print(f"  {name}")
    return 0


def one_line(err: BaseException) -> str:
    """An exception as one line: a user error's own message, anything else prefixed with its type."""
    text = " ".join(str(err).split())
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, (errors.ConfigError, errors.OmniguideError)):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
