"""The `imagebuild` command.  Each subcommand lives in a cmd_*.py module that
registers its arguments; heavy libraries are imported only by the command that
runs, so `imagebuild --help` and `imagebuild qcow2 info` start fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from imagebuild.errors import ImageBuildError, show_path

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every verb (each verb group module registers its own)."""
    from imagebuild.cli import build as cmd_build
    from imagebuild.cli import qcow2 as cmd_qcow2
    from imagebuild.cli import read as cmd_inspect

    parser = argparse.ArgumentParser(
        prog="imagebuild", description="Build 9front distribution disk images."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (cmd_build, cmd_inspect, cmd_qcow2):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv`; the exit status: 0, 1 (an error, one line on
    stderr), 2 (usage), 130 (interrupted)."""
    parser = build_parser()
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
    except RecursionError:  # input nested deeper than any real one (a last resort)
        print("imagebuild: input nested too deeply", file=sys.stderr)
        return 1


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
