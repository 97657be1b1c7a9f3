"""`imagebuild build`, `list` and `customize`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEMO_ROOT = Path("out") / "demo-root"


def register(sub: Any, only: str | None = None) -> None:
    """Add this group's verbs (or only the verb `only`) to the subparsers `sub` of
    build_parser()."""
    for verb, add in _VERBS.items():
        if only is None or only == verb:
            add(sub)


def _add_build(sub: Any) -> None:
    p = sub.add_parser("build", help="build a target's image into out/")
    p.add_argument("target", help="a target from `imagebuild list`, or a recipe .toml file")
    p.add_argument("--root", type=Path,
                   help="9front tree (like /n/src9); default $IMAGEBUILD_ROOT, else the demo root")
    p.add_argument("-o", "--output", type=output_path, help="output file (default out/<name>)")
    p.add_argument("--format", dest="container", choices=("qcow2", "raw"),
                   help="container (default: the recipe's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NS.KEY=VALUE",
                   help="set a template variable, e.g. plan9.console=0 (repeatable)")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="NAME=PATH",
                   help="add or replace a file on the boot partition (repeatable)")
    p.add_argument("--template-dir", type=Path, help="directory whose templates override ours")
    p.add_argument("--strict", action="store_true",
                   help="a file the protos name that does not exist is an error, not a warning")
    p.add_argument("--no-fs", dest="fs", action="store_false",
                   help="leave the fs partition empty (a boot-only image)")
    p.add_argument("--no-lint", dest="lint", action="store_false",
                   help="build even when the boot FAT breaks a rule of 9front's loader")
    p.add_argument("--fs", dest="fs_type", choices=("hjfs", "gefs", "cwfs"),
                   help="file server for the fs partition (default: the recipe's fs.type); "
                        "cwfs names its disk from fs.disk, e.g. --set fs.disk=sdF0")
    _add_output_flags(p)
    p.set_defaults(handler=run_build)


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list the targets the recipes define")
    p.add_argument("--keys", action="store_true",
                   help="list the keys a recipe may use instead: type, default, meaning")
    p.set_defaults(handler=run_list)


def _add_demo_root(sub: Any) -> None:
    p = sub.add_parser("demo-root", help="write the generated demo root (stand-in inputs)")
    p.add_argument("directory", type=Path, help="where to write it (created if needed)")
    p.set_defaults(handler=run_demo_root)


def _add_customize(sub: Any) -> None:
    p = sub.add_parser("customize", help="write a qcow2 overlay that changes the boot partition")
    p.add_argument("base", type=Path, help="base qcow2 image (becomes the backing file)")
    p.add_argument("-o", "--output", type=output_path, required=True, help="overlay to write")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FILE.KEY=VALUE",
                   help="set a key in a boot file: plan9.KEY, config.SECTION.KEY, cmdline.KEY")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="NAME=PATH",
                   help="add or replace a file on the boot partition (repeatable)")
    _add_output_flags(p)
    p.set_defaults(handler=run_customize)


_VERBS = {"build": _add_build, "list": _add_list, "demo-root": _add_demo_root,
          "customize": _add_customize}


def output_path(text: str) -> Path:
    """-o's argparse type: a file name; `DIR/` is a usage error (Path would drop the slash)."""
    if text.endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} names a directory; give the image's file name")
    return Path(text)


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sync", action="store_true",
                   help="fsync the image before it replaces the target (qemu-img does not)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal")


def resolve_root(root: Path | None) -> Path:
    """--root, else $IMAGEBUILD_ROOT, else the generated demo root."""
    if root is not None:
        return root
    env = os.environ.get("IMAGEBUILD_ROOT")
    if env:
        return Path(env)
    from imagebuild.pipeline.demo import make_demo_root

    return make_demo_root(DEMO_ROOT)


def run_build(args: argparse.Namespace) -> int:
    """`imagebuild build`: plan, write, then print the layout; the exit status."""
    from imagebuild.cli.report import build_progress, print_layout
    from imagebuild.pipeline.build import BuildOptions, BuildPlan, build
    from imagebuild.pipeline.demo import is_demo_root
    from imagebuild.recipe.load import load_recipe

    recipe = load_recipe(args.target)
    root = resolve_root(args.root)
    options = BuildOptions(root=root, output=args.output, container=args.container,
                           sets=args.sets, files=args.files, template_dir=args.template_dir,
                           fs=args.fs, sync=args.sync, fs_type=args.fs_type,
                           strict=args.strict, lint=args.lint)
    title = f"building {recipe.name} from {root}"
    if is_demo_root(root):
        title += " (demo root: generated stand-ins, the image will not boot 9front)"
    with build_progress(title, quiet=args.quiet, plain=args.plain) as progress:
        plan = build(recipe, options, progress)
    if not args.quiet:
        from imagebuild.readback import inspect_image

        wrote_fs = not isinstance(plan, BuildPlan) or plan.fs_entries is not None
        print_layout(inspect_image(plan.output, fs=wrote_fs), plain=args.plain)
    if plan.missing_sources:
        from imagebuild.fs.proto import missing_summary

        print(missing_summary(plan.missing_sources), file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """`imagebuild list`: one line per target (name, output file, description)."""
    if args.keys:
        from imagebuild.recipe.keys import describe

        print("\n".join(describe()))
        return 0
    from imagebuild.recipe.load import list_recipes, load_recipe

    for name in list_recipes():
        recipe = load_recipe(name)
        print(f"{name:<16} {recipe.output:<24} {recipe.description}")
    return 0


def run_demo_root(args: argparse.Namespace) -> int:
    """`imagebuild demo-root DIR`: stand-ins for every input of every recipe, for trying
    the tool without a 9front tree (the images do not boot 9front)."""
    from imagebuild.pipeline.demo import make_demo_root

    make_demo_root(args.directory)
    print(f"{args.directory}: demo root written; build with --root {args.directory}")
    return 0


def run_customize(args: argparse.Namespace) -> int:
    """`imagebuild customize`: write the overlay, then print its layout."""
    from imagebuild.cli.report import print_layout
    from imagebuild.pipeline.customize import customize
    from imagebuild.readback import inspect_image

    customize(args.base, args.output, sets=args.sets, files=args.files, sync=args.sync)
    if not args.quiet:
        print_layout(inspect_image(args.output), plain=args.plain)
    return 0
