"""`imagebuild inspect` and `imagebuild cat`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show the layout of any image (qcow2 or raw)")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    p.set_defaults(handler=run_inspect)

    p = sub.add_parser("cat", help="print a file from an image, e.g. 9fat:plan9.ini")
    p.add_argument("image", type=Path)
    p.add_argument("file", metavar="PART:PATH")
    p.set_defaults(handler=run_cat)


def run_inspect(args: argparse.Namespace) -> int:
    from imagebuild.inspect import inspect_image

    info = inspect_image(args.image)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        from imagebuild.report import print_layout

        print_layout(info, plain=args.plain)
    return 0


def run_cat(args: argparse.Namespace) -> int:
    from imagebuild.inspect import cat

    sys.stdout.buffer.write(cat(args.image, args.file))
    return 0
