"""`imagebuild qcow2 create|info|check|convert|map`: qemu-img's verbs on our engine.

Options and output formats follow qemu-img (`--output human|json`,
`-O raw|qcow2`, `-c`); the engine (and json) is imported only when a verb runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, only: str | None = None) -> None:
    """Add `qcow2` and its verbs to the top-level parser (`only`: this group has one verb)."""
    p = sub.add_parser("qcow2", help="create, inspect, check and convert qcow2 images")
    verbs = p.add_subparsers(dest="qcow2_command", required=True, metavar="VERB")

    c = verbs.add_parser("create", help="create an image (optionally over a backing file)")
    c.add_argument("file")
    c.add_argument("size", nargs="?", help="virtual size (K/M/G/T suffixes); "
                   "defaults to the backing file's size")
    c.add_argument("--cluster-size", default="64K", help="512 B .. 2M (default 64K)")
    c.add_argument("-b", "--backing", help="backing file (stored as given; relative names "
                   "are relative to FILE's directory)")
    c.add_argument("-F", "--backing-format", choices=("qcow2", "raw"))
    c.set_defaults(handler=_create)

    i = verbs.add_parser("info", help="show the header like qemu-img info")
    i.add_argument("file")
    i.add_argument("--output", choices=("human", "json"), default="human")
    i.set_defaults(handler=_info)

    k = verbs.add_parser("check", help="check refcounts and tables like qemu-img check "
                         "(exit 0 clean, 2 corruptions, 3 leaks)")
    k.add_argument("file")
    k.add_argument("--repair", dest="repair", action="store_const", const="leaks",
                   help="fix leaked clusters (same as -r leaks)")
    k.add_argument("-r", dest="repair", choices=("leaks", "all"),
                   help="fix leaked clusters, or all refcount errors (like qemu-img check -r)")
    k.add_argument("--output", choices=("human", "json"), default="human")
    k.set_defaults(handler=_check)

    v = verbs.add_parser("convert", help="convert between qcow2 and raw")
    v.add_argument("input")
    v.add_argument("output")
    v.add_argument("-O", dest="output_format", choices=("raw", "qcow2"), default="qcow2")
    v.add_argument("-c", dest="compress", action="store_true", help="compress (qcow2 output)")
    v.add_argument("--cluster-size", default="64K")
    v.add_argument("-t", dest="cache", default="unsafe",
                   choices=("unsafe", "writeback", "writethrough", "none", "directsync"),
                   help="output cache mode as qemu-img's: unsafe (default) writes no fsync; "
                   "any other mode fsyncs the output before it replaces FILE")
    v.add_argument("--sync", dest="cache", action="store_const", const="writeback",
                   help="fsync the output before it replaces FILE (same as -t writeback)")
    v.set_defaults(handler=_convert)

    m = verbs.add_parser("map", help="allocated extents like qemu-img map")
    m.add_argument("file")
    m.add_argument("--output", choices=("human", "json"), default="human")
    m.set_defaults(handler=_map)


def _create(args: argparse.Namespace) -> int:
    from imagebuild.container.qcow2.backing import file_id, missing_backing, resolve_backing
    from imagebuild.container.qcow2.image import Qcow2Image, refuse_output_in_chain
    from imagebuild.pipeline.output import atomic_output
    from imagebuild.util.sizes import parse_size

    size = parse_size(args.size, "size") if args.size is not None else None
    cluster = parse_size(args.cluster_size, "--cluster-size")
    if args.backing_format and not args.backing:
        from imagebuild.errors import InputError

        raise InputError("--backing-format needs --backing")
    if args.backing:
        resolved = resolve_backing(args.file, args.backing)
        if file_id(resolved) is None:
            raise missing_backing(args.file, args.backing, resolved)
        refuse_output_in_chain(args.file, resolved)
    with atomic_output(args.file) as tmp, Qcow2Image.create(
            tmp, size, cluster_size=cluster, backing_file=args.backing,
            backing_format=args.backing_format) as image:
        print(f"Formatting '{args.file}', fmt=qcow2 cluster_size={image.cluster_size} "
              f"size={image.size}"
              + (f" backing_file={args.backing}" if args.backing else ""))
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from imagebuild.container.qcow2.info import format_info, info

    found = info(args.file)
    print(json.dumps(found, indent=4) if args.output == "json" else format_info(found), end="")
    if args.output == "json":
        print()
    return 0


def _check(args: argparse.Namespace) -> int:
    from imagebuild.container.qcow2.backing import sniff_format
    from imagebuild.container.qcow2.check import check

    if sniff_format(args.file) != "qcow2":
        from imagebuild.errors import UnsupportedImageError

        raise UnsupportedImageError(f"{args.file}: not a qcow2 image (check needs qcow2)")
    result = check(args.file, repair=args.repair)
    if args.output == "json":
        import json

        print(json.dumps(result.to_json(), indent=4))
    else:
        print(result.to_human(), end="")
    return result.exit_code


def _convert(args: argparse.Namespace) -> int:
    from imagebuild.container.qcow2.convert import convert
    from imagebuild.util.sizes import parse_size

    convert(args.input, args.output, output_format=args.output_format,
            compress=args.compress, cluster_size=parse_size(args.cluster_size, "--cluster-size"),
            sync=args.cache != "unsafe")
    return 0


def _map(args: argparse.Namespace) -> int:
    from imagebuild.container.qcow2.tools import format_map, map_image

    extents = map_image(args.file)
    if args.output == "json":
        print("[" + ",\n".join(_map_entry(e) for e in extents) + "]")
    else:
        print(format_map(args.file, extents), end="")
    return 0


def _map_entry(e: dict[str, Any]) -> str:
    """One extent the way qemu-img map --output=json spells it."""
    import json

    text = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in e.items())
    return "{ " + text + "}"
