"""Plan a build: read every input, render the boot files, list the fs tree.

Nothing here writes.  `plan_build` returns a `BuildPlan` holding every byte
the boot side of the image needs (boot code, pbs, FAT files, raw writes) and
the list of files the fs partition gets; missing inputs are reported all at
once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from imagebuild.errors import ImageBuildError, InputError, show_path
from imagebuild.pipeline.demo import is_demo_root
from imagebuild.recipe.load import Recipe
from imagebuild.recipe.render import render_boot_files
from imagebuild.util.files import read_input
from imagebuild.util.record import Record

if TYPE_CHECKING:
    from imagebuild.fs.proto import MissingSource, ProtoEntry

MAX_INPUT_BYTES = 1 << 32  # a --file outside a build (customize): at most 4 GiB, FAT's limit


class BuildOptions(Record):
    """What the command line adds to a recipe.

    `container` is "qcow2" or "raw" (None: the recipe's); `files` are
    NAME=PATH texts (add or replace a boot-partition file); `timestamp` is
    Unix seconds for the FAT times and hjfs's clock (None: SOURCE_DATE_EPOCH
    when set, else now); `fs` False leaves the fs partition empty; `sync`
    fsyncs the image before the rename (qemu-img does not by default).
    """

    FIELDS = (
        "root", "output", "container", "sets", "files", "template_dir", "timestamp", "fs", "lint",
        "fs_type", "strict", "sync")
    __slots__ = FIELDS

    root: Path
    output: Path | None
    container: str | None
    sets: Sequence[str]
    files: Sequence[str]
    template_dir: Path | None
    timestamp: int | None
    fs: bool
    lint: bool  # False (--no-lint): skip the boot-chain lint (imagebuild.boot)
    fs_type: str | None  # --fs: another file server than the recipe's
    strict: bool  # --strict: a missing proto source is an error
    sync: bool  # --sync: fsync the image before it replaces the target

    def __init__(
        self,
        root: Path,
        *,
        output: Path | None = None,
        container: str | None = None,
        sets: Sequence[str] = (),
        files: Sequence[str] = (),
        template_dir: Path | None = None,
        timestamp: int | None = None,
        fs: bool = True,
        lint: bool = True,
        fs_type: str | None = None,
        strict: bool = False,
        sync: bool = False,
    ) -> None:
        self.root = root
        self.output = output
        self.container = container
        self.sets = sets
        self.files = files
        self.template_dir = template_dir
        self.timestamp = timestamp
        self.fs = fs
        self.lint = lint
        self.fs_type = fs_type
        self.strict = strict
        self.sync = sync


def fs_options(recipe: Recipe, options: BuildOptions) -> tuple[Recipe, list[str]]:
    """Apply --fs and `--set fs.disk=NAME` to the recipe; the other --set options."""
    from imagebuild.recipe.load import with_fs

    disk = None
    sets = []
    for text in options.sets:
        key, sep, value = text.partition("=")
        if sep and key.strip() == "fs.disk":
            disk = value.strip()
        else:
            sets.append(text)
    if options.fs_type is None and disk is None:
        return recipe, sets
    return with_fs(recipe, options.fs_type, disk), sets


class BuildPlan(Record):
    """Everything a build writes, read and rendered: sizes in bytes, times in Unix seconds."""

    FIELDS = (
        "recipe", "root", "container", "size", "output", "demo", "timestamp", "mbr_bootcode",
        "pbs", "fat_files", "raw_writes", "missing_sources", "pinned_time", "fs_entries")
    __slots__ = FIELDS

    recipe: Recipe
    root: Path
    container: str
    size: int
    output: Path
    demo: bool
    timestamp: int
    mbr_bootcode: bytes | None
    pbs: bytes | None
    fat_files: list[tuple[str, bytes]]
    raw_writes: list[tuple[str, int, bytes]]  # (root path, byte offset, data)
    missing_sources: list[MissingSource]  # left out, as mkfs does
    pinned_time: int | None  # SOURCE_DATE_EPOCH (or --timestamp): hjfs's clock
    fs_entries: list[ProtoEntry] | None  # None: no fs written

    def __init__(
        self,
        recipe: Recipe,
        root: Path,
        container: str,
        size: int,
        output: Path,
        demo: bool,
        timestamp: int,
        mbr_bootcode: bytes | None,
        pbs: bytes | None,
        fat_files: list[tuple[str, bytes]],
        raw_writes: list[tuple[str, int, bytes]],
        missing_sources: list[MissingSource],
        pinned_time: int | None = None,
        fs_entries: list[ProtoEntry] | None = None,
    ) -> None:
        self.recipe = recipe
        self.root = root
        self.container = container
        self.size = size
        self.output = output
        self.demo = demo
        self.timestamp = timestamp
        self.mbr_bootcode = mbr_bootcode
        self.pbs = pbs
        self.fat_files = fat_files
        self.raw_writes = raw_writes
        self.missing_sources = missing_sources
        self.pinned_time = pinned_time
        self.fs_entries = fs_entries


MAX_EPOCH = 0xFFFFFFFF  # 9P stat's mtime is an unsigned 32-bit count of seconds


def source_date_epoch() -> int | None:
    """$SOURCE_DATE_EPOCH as an int, None when unset or empty.

    Raises ImageBuildError unless the value is ASCII digits only, at most MAX_EPOCH.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()):
        raise ImageBuildError(f"SOURCE_DATE_EPOCH={value!r}: must be a whole number of seconds")
    if len(value) > 10 or int(value) > MAX_EPOCH:
        raise ImageBuildError(f"SOURCE_DATE_EPOCH={value!r}: after 2106-02-07 06:28:15 UTC, "
                              f"the last time Plan 9's 32-bit stat times hold")
    return int(value)


def read_file_options(
    texts: Sequence[str], limit: int = MAX_INPUT_BYTES
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """--file NAME=PATH options: the (name, data) pairs, and the PATHs that cannot be read.

    Raises InputError for a text that is not NAME=PATH (NAME UTF-8, no /), a
    PATH that is not a regular file or is longer than `limit` bytes.
    """
    files: list[tuple[str, bytes]] = []
    unreadable: list[str] = []
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name or not path or "/" in name:
            raise InputError(
                f"--file {text!r}: expected NAME=PATH, NAME a file name on the boot partition"
            )
        if not name.isprintable():
            raise InputError(f"--file {text!r}: NAME must be printable UTF-8 text")
        try:
            files.append((name, read_input(path, limit, "--file")))
        except MemoryError:
            raise InputError(f"{show_path(path)}: --file too big to hold in memory") from None
        except OSError as err:
            unreadable.append(f"{show_path(path)} ({err.strerror})")
    return files, unreadable


def place_files(files: list[tuple[str, bytes]], extra: Sequence[tuple[str, bytes]]) -> None:
    """Each extra file replaces the one of the same name (as FAT compares names) in place,
    or is appended."""
    for name, data in extra:
        for i, (existing, _) in enumerate(files):
            if existing.lower() == name.lower():
                files[i] = (name, data)
                break
        else:
            files.append((name, data))


def plan_build(recipe: Recipe, options: BuildOptions) -> BuildPlan:
    """Read and check every input; nothing is written here.

    Raises InputError (missing or unreadable inputs, all named at once, bad
    options), TemplateError, ProtoError and ImageBuildError.
    """
    recipe, sets = fs_options(recipe, options)
    root = options.root
    if not root.is_dir():
        raise InputError(f"root {show_path(root)}: not a directory")
    container = options.container or recipe.format
    if container not in ("qcow2", "raw"):
        raise InputError(f"--format {container!r}: expected qcow2 or raw")
    size = recipe.image_size(container)

    contents: dict[str, bytes] = {}
    missing: list[str] = []
    for rel in recipe.root_inputs():
        path = root / rel
        try:
            contents[rel] = read_input(path, size, "input")  # no input outgrows the image
        except MemoryError:
            raise InputError(f"{show_path(path)}: input too big to hold in memory") from None
        except (FileNotFoundError, NotADirectoryError):
            missing.append(show_path(rel))
        except OSError as err:
            missing.append(f"{show_path(rel)} ({err.strerror})")
    extra, unreadable = read_file_options(options.files, size)
    if missing:
        raise InputError(
            f"{recipe.name}: missing inputs under {show_path(root)}: {', '.join(missing)}"
        )
    if unreadable:
        raise InputError(f"--file: cannot read {', '.join(unreadable)}")

    demo = is_demo_root(root)
    rendered = render_boot_files(
        recipe, sets=sets, template_dir=options.template_dir, demo=demo
    )
    fat_files: list[tuple[str, bytes]] = []
    for entry in recipe.fat_files:
        if entry in rendered:
            fat_files.append((entry, rendered[entry]))
        else:
            fat_files.append((PurePosixPath(entry).name, contents[entry]))
    place_files(fat_files, extra)  # --file replaces a file of that name, else appends
    if options.lint:
        from imagebuild.boot.pc import carries_loader, check_boot_fat

        if carries_loader(fat_files):
            check_boot_fat(fat_files, f"{recipe.name} {recipe.fat_partition}")

    timestamp = options.timestamp if options.timestamp is not None else source_date_epoch()
    output = options.output or Path("out") / recipe.output_name(container)
    left_out: list[MissingSource] = []
    fs_entries = (
        fs_tree(recipe, root, None if options.strict or recipe.fs.strict else left_out)
        if options.fs and recipe.fs.type != "none"
        else None
    )
    return BuildPlan(
        recipe=recipe,
        root=root,
        container=container,
        size=size,
        output=output,
        demo=demo,
        timestamp=timestamp if timestamp is not None else int(time.time()),
        mbr_bootcode=contents.get(recipe.mbr_bootcode) if recipe.mbr_bootcode else None,
        pbs=contents.get(recipe.fat_pbs) if recipe.fat_pbs else None,
        fat_files=fat_files,
        raw_writes=[(w.file, w.offset, contents[w.file]) for w in recipe.raw_writes],
        pinned_time=timestamp,
        fs_entries=fs_entries,
        missing_sources=left_out,
    )


def fs_tree(
    recipe: Recipe, root: Path, missing: list[MissingSource] | None = None
) -> list[ProtoEntry]:
    """The files `mk binds` + `disk/mkfs <{cat $proto $bootproto}` would copy, in order.

    Raises ProtoError (an ImageBuildError) naming the proto file and line; a
    missing source too, unless `missing` collects them (mkfs warns and goes on).
    """
    from imagebuild.fs.proto import read_proto

    binds: dict[str, Path | Sequence[Path]] = {
        target: [root / s for s in sources] if len(sources) > 1 else root / sources[0]
        for target, sources in recipe.fs.binds.items()
    }
    if recipe.fs.git_bind and (root / ".git").is_dir():
        binds[recipe.fs.git_bind] = root
    return read_proto(
        [root / p for p in recipe.fs.protos], root, binds=binds,
        variables={"objtype": recipe.objtype},
        on_missing=None if missing is None else missing.append,
    )
