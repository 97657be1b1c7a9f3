"""`imagebuild inspect` and `imagebuild cat`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagebuild.errors import ImageBuildError, show_path


def register(sub: Any, only: str | None = None) -> None:
    """Add this group's verbs (or only the verb `only`) to the subparsers `sub` of
    build_parser()."""
    for verb, add in _VERBS.items():
        if only is None or only == verb:
            add(sub)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show the layout of any image (qcow2 or raw)")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    p.add_argument("--verify", action="store_true",
                   help="read the MBR with libparted too; any disagreement is an error")
    p.set_defaults(handler=run_inspect)


def _add_cat(sub: Any) -> None:
    p = sub.add_parser("cat", help="print a file from an image: 9fat:plan9.ini, fs:/lib/ndb/local; "
                       "fs:adm:/users names a gefs dataset or cwfs file system")
    p.add_argument("image", type=Path)
    p.add_argument("file", metavar="PART:PATH")
    p.set_defaults(handler=run_cat)


def _add_ls(sub: Any) -> None:
    p = sub.add_parser("ls", help="list a directory of an image: fs:/usr, 9fat:/")
    p.add_argument("image", type=Path)
    p.add_argument("directory", metavar="PART:PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run_ls)


def _add_fsck(sub: Any) -> None:
    p = sub.add_parser("fsck", help="check the fs partition (hjfs or gefs): blocks, trees, dirs")
    p.add_argument("image", type=Path)
    p.add_argument("partition", nargs="?", default="fs")
    p.add_argument("--repair", action="store_true",
                   help="gefs: move an old ream's misplaced adm root backlink where it belongs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, metavar="OVERLAY",
                       help="with --repair: write the fix to this new qcow2 overlay over IMAGE")
    where.add_argument("--in-place", action="store_true",
                       help="with --repair: modify IMAGE itself, without asking")
    p.set_defaults(handler=run_fsck)


_VERBS = {"inspect": _add_inspect, "cat": _add_cat, "ls": _add_ls, "fsck": _add_fsck}


def run_inspect(args: argparse.Namespace) -> int:
    """`imagebuild inspect`: tables, or --json."""
    from imagebuild.readback import inspect_image

    with _naming_image(args.image):  # e.g. a partition table's error names the image too
        info = inspect_image(args.image, verify=args.verify)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        from imagebuild.cli.report import print_layout

        print_layout(info, plain=args.plain)
    if "unreadable" in info:  # an overlay whose backing file is missing: header only
        print(f"imagebuild: {info['unreadable']}", file=sys.stderr)
        return 1
    return 0


def run_cat(args: argparse.Namespace) -> int:
    """`imagebuild cat`: the file's bytes on stdout."""
    from imagebuild.readback import cat_stream

    with _naming_image(args.image):
        for chunk in cat_stream(args.image, args.file):  # hjfs files stream: bounded memory
            sys.stdout.buffer.write(chunk)
    return 0


@contextlib.contextmanager
def _naming_image(image: str) -> Iterator[None]:
    """Errors about a path inside the image (`/adm/x: file does not exist`) name the image
    too, so the one line says which file is meant."""
    try:
        yield
    except ImageBuildError as err:
        text = str(err)
        if Path(image).name in text:  # the reader named it already
            raise
        raise ImageBuildError(f"{show_path(image)}: {text}") from None


def run_ls(args: argparse.Namespace) -> int:
    """`imagebuild ls`: one line per entry, ls -l style, or --json."""
    from imagebuild.readback import listing

    with _naming_image(args.image):
        entries = listing(args.image, args.directory)
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        print()
        return 0
    import time

    lines = []
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e["mtime"]))
        mode = _plan9_mode(e["mode"]) if e["uid"] else ("d" if e["dir"] else "-")
        lines.append(f"{mode} {e['uid'] or '-':<8} {e['gid'] or '-':<8} {e['size']:>10} {when} "
                     f"{e['name']}{'/' if e['dir'] else ''}\n")
    # a name that is not UTF-8 is kept as surrogates: its bytes go out as they are on disk
    sys.stdout.flush()
    sys.stdout.buffer.write("".join(lines).encode("utf-8", "surrogateescape"))
    return 0


def _plan9_mode(mode: int) -> str:
    """ls -l's mode column: d/a/l/t, then rwx three times."""
    kind = "d" if mode & 0x80000000 else "a" if mode & 0x40000000 else (
        "l" if mode & 0x20000000 else "t" if mode & 0x04000000 else "-")
    perms = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + perms


def run_fsck(args: argparse.Namespace) -> int:
    """`imagebuild fsck`: each problem on stdout; exit 1 when there are any."""
    from imagebuild.readback import check_fs, repair_fs

    if args.repair != bool(args.output or args.in_place):
        print("imagebuild fsck: --repair needs -o OVERLAY or --in-place, and they need --repair",
              file=sys.stderr)
        return 2
    if args.repair:
        with _naming_image(args.image):
            line = repair_fs(args.image, args.partition, overlay=args.output,
                             in_place=args.in_place)
        print(f"{args.output or args.image}:{args.partition}: {line}")
        args.image = args.output or args.image

    with _naming_image(args.image):  # a reader's error names the image too
        problems = check_fs(args.image, args.partition)
    for line in problems:
        print(f"{args.image}:{args.partition}: {line}")
    if problems:
        print(f"imagebuild: {args.image}:{args.partition}: {len(problems)} problems",
              file=sys.stderr)
        return 1
    print(f"{args.image}:{args.partition}: clean")
    return 0
