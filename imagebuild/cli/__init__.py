"""The `imagebuild` command.  Each verb group lives in a module of this package
that registers its verbs (build.py: build, list, demo-root, customize;
read.py: inspect, cat, ls, fsck; qcow2.py: qcow2).  Only the group of the
verb given is imported, and heavy libraries only by the command that runs, so
every command starts fast."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from imagebuild.errors import ImageBuildError, show_path

Handler = Callable[[argparse.Namespace], int]


GROUPS = ("build", "read", "qcow2")  # modules of imagebuild.cli, in --help order
# verb -> its group, so only that module is imported; a verb not listed loads every group
VERB_GROUPS = {"build": "build", "list": "build", "demo-root": "build", "customize": "build",
               "inspect": "read", "cat": "read", "ls": "read", "fsck": "read",
               "qcow2": "qcow2"}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser: only the verb `argv` names, else every verb of every group."""
    import importlib

    parser = _Parser(prog="imagebuild", description="Build 9front distribution disk images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    verb = next((a for a in (argv or ()) if not a.startswith("-")), None)
    if verb in VERB_GROUPS:
        importlib.import_module(f"imagebuild.cli.{VERB_GROUPS[verb]}").register(sub, verb)
        return parser
    for group in GROUPS:
        importlib.import_module(f"imagebuild.cli.{group}").register(sub)
    return parser


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter with the width found as shutil would find it: argparse asks
    shutil, and importing shutil (with bz2, lzma, fnmatch) costs every start."""
    return argparse.HelpFormatter(prog, width=_help_width())


@cache  # argparse makes a formatter per argument: ask the terminal once
def _help_width() -> int:
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (OSError, ValueError):
            columns = 80
    return max(columns - 2, 20)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser with _formatter (for the subcommands too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _formatter)
        super().__init__(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv`; the exit status: 0, 1 (an error, one line on
    stderr), 2 (usage), 130 (interrupted)."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # the reader went away (`| head`): end quietly
        _silence_stdout()
        return 0
    except ImageBuildError as err:
        print(f"imagebuild: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:  # unreadable input, unwritable output, disk full
        where = f"{show_path(err.filename)}: " if err.filename else ""
        print(f"imagebuild: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagebuild: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # an input larger than the memory the process may use
        print("imagebuild: out of memory", file=sys.stderr)
        return 1
    except RecursionError:  # input nested deeper than any real one (a last resort)
        print("imagebuild: input nested too deeply", file=sys.stderr)
        return 1


def run() -> int:
    """The `imagebuild` program (console script, `python -m imagebuild`): main() on sys.argv.

    The process ends when main returns, so the cyclic garbage collector is left out of it:
    paused for the command (imagebuild makes next to no reference cycles: a real-tree build
    peaks at the same memory without it, while its collections during start-up walk every
    module being imported), then every object still alive is frozen (gc.freeze) so the
    interpreter's collection at exit skips them too; the exit frees the memory anyway.
    main() itself leaves the collector alone, for callers that go on.
    """
    gc.disable()
    status = main()
    gc.freeze()
    return status


def _one_line(message: str) -> str:
    """A message on one line: a newline from a file name or a value is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
