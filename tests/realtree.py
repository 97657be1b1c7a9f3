"""The real-tree tier's helpers: a 9front tree named by IMAGEBUILD_REAL_ROOT, made buildable.

The tree the user gives is a plain git checkout of 9front: it has no kernels,
no boot programs and no empty directories (git keeps none).  It is never
written to: `buildable_copy` makes a hard-linked copy (a plain copy across
file systems) and adds, only where the tree lacks them, deterministic
stand-ins of the real names and of plausible real sizes for the kernels and
boot programs the recipes and the boot proto read.  New files are new inodes,
so nothing reaches the tree through the links.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ENV = "IMAGEBUILD_REAL_ROOT"
SKIP_REASON = f"{ENV} is not set: the real-tree tier builds from a 9front checkout named there"

# Real names; sizes of the order of a 2025 9front build (kernels are not gzipped).
STAND_INS: dict[str, int] = {
    "386/mbr": 446,
    "386/pbs": 478,
    "386/9bootfat": 31232,
    "386/9boothyb": 33280,
    "386/9bootiso": 31744,
    "386/9bootpxe": 36864,
    "386/efiboot.fat": 1048576,  # sys/src/boot/efi/mkfile: dd -bs 1024 -count 1024
    "386/bootia32.efi": 28672,
    "386/bootx64.efi": 31232,
    "386/9pc": 4_128_768,
    "amd64/9pc64": 4_651_008,
    "arm64/9qemu.u": 1_974_339,
    "arm64/9honeycomb.u": 2_146_114,
    "arm64/9reform.u": 2_320_451,
    "arm64/9pi3": 1_867_776,
    "arm64/9pi4": 1_880_064,
    "arm/9pi": 1_323_008,
    "arm/9pi2": 1_441_792,
    "arm/9zynq": 1_212_416,
    "sys/src/boot/bcm/bootcode.bin": 52476,
    "sys/src/boot/bcm/fixup_cd.dat": 3230,
    "sys/src/boot/bcm/start_cd.elf": 810_364,
    "sys/src/boot/bcm/LICENCE.broadcom": 1594,
    "sys/src/boot/bcm/fixup4cd.dat": 5456,
    "sys/src/boot/bcm/start4cd.elf": 813_084,
    "sys/src/boot/bcm/bcm2711-rpi-4-b.dtb": 56101,
    "sys/src/boot/reform/flash.bin": 1_574_912,
}
KERNEL_FALLBACK = 2 * 1024 * 1024  # a recipe input not in the table that looks like a kernel
OTHER_FALLBACK = 64 * 1024
BOOT_PROTO = "sys/lib/sysconfig/proto/9bootproto"


def given_tree() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value).resolve() if value else None


def stand_in(path: str, size: int) -> bytes:
    """`size` bytes that name `path` and then run a sha256 chain seeded with it."""
    out = bytearray(f"imagebuild stand-in for {path}; not the real file\n".encode())
    block = hashlib.sha256(path.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def stand_in_for(tree: Path, rel: str) -> bytes:
    """What stands in for `rel`: a pbs that jumps over a FAT32 BPB, a U-Boot script image
    around the tree's boot.txt, or filler of the table's size."""
    name = rel.rsplit("/", 1)[-1]
    if rel in STAND_INS:
        size = STAND_INS[rel]
    elif re.fullmatch(r"9\w+(\.u)?", name):
        size = KERNEL_FALLBACK
    else:
        size = OTHER_FALLBACK
    if name == "pbs":
        return (b"\xeb\x58\x90".ljust(0x5A, b"\0") + stand_in(rel, size))[:size]
    if name == "boot.scr":
        text_path = tree / rel.rsplit("/", 1)[0] / "boot.txt"
        text = text_path.read_bytes() if text_path.is_file() else b"boot\n"
        return stand_in(rel, 64) + len(text).to_bytes(4, "big") + bytes(4) + text
    return stand_in(rel, size)


def boot_proto_files(tree: Path) -> list[str]:
    """The files 9bootproto names (/386/9bootfat and its siblings), root-relative."""
    proto = tree / BOOT_PROTO
    if not proto.is_file():
        return []
    out: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in proto.read_text().splitlines():
        words = line.split()
        if not words or "=" in words[0]:
            continue
        depth = len(line) - len(line.lstrip("\t"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "/".join([p for _, p in stack] + [words[0]])
        mode = words[1] if len(words) > 1 else ""
        if mode.startswith("d"):
            stack.append((depth, words[0]))
        elif words[0] not in ("*", "+") and path.startswith("386/"):
            out.append(path)
    return out


def recipe_inputs() -> dict[str, list[str]]:
    """Target name -> the root-relative files its recipe reads (not the protos)."""
    from imagebuild.recipe.load import list_recipes, load_recipe

    out: dict[str, list[str]] = {}
    for name in list_recipes():
        recipe = load_recipe(name)
        protos = set(recipe.fs.protos)
        out[name] = [p for p in recipe.root_inputs() if p not in protos]
    return out


def linked_copy(tree: Path, dest: Path) -> None:
    """`cp -al`: directories anew, files as hard links (a plain copy across file systems)."""
    result = subprocess.run(["cp", "-al", f"{tree}/.", str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(tree, dest, symlinks=True)


def buildable_copy(tree: Path, dest: Path) -> list[str]:
    """A copy of `tree` at `dest` with stand-ins for every missing kernel and boot program.

    Returns the root-relative names that were added.  Existing files are left as they are
    (a built tree keeps its real kernels).
    """
    linked_copy(tree, dest)
    wanted = {p for inputs in recipe_inputs().values() for p in inputs}
    wanted.update(boot_proto_files(tree))
    added = []
    for rel in sorted(wanted):
        target = dest / rel
        if os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(stand_in_for(tree, rel))
        added.append(rel)
    return added


def lenient_protos() -> bool:
    """Whether this imagebuild creates missing proto directories itself (it has --strict)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "imagebuild", "build", "--help"],
        capture_output=True, text=True, check=False,
    ).stdout
    return "--strict" in help_text


_MISSING = re.compile(
    r"^(?P<origin>.*?):(?P<line>\d+): (?P<new>\S+): source (?P<src>\S+) does not exist$"
)


def proto_directories(text: str, objtype: str) -> list[str]:
    """The directories a proto names line by line (not those `+` finds), as fs paths."""
    out: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        words = line.replace("$objtype", objtype).split()
        if not words or "=" in words[0] or words[0] in ("*", "+"):
            continue
        depth = len(line) - len(line.lstrip("\t"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "/" + "/".join([p for _, p in stack] + [words[0]])
        if len(words) > 1 and words[1].startswith("d"):
            stack.append((depth, words[0]))
            if len(words) < 5:  # no source of its own
                out.append(path)
    return out


def _source_of(path: str, binds: dict[str, tuple[str, ...]]) -> str:
    """The root-relative source of an fs path under the mkfile's binds (the first of a union)."""
    for target in sorted(binds, key=len, reverse=True):
        if path == target or path.startswith(target + "/"):
            return os.path.normpath(binds[target][0] + path[len(target):])
    return path.lstrip("/")


def create_missing_proto_sources(root: Path, limit: int = 2000) -> list[str]:
    """For a strict imagebuild: make what `disk/mkfs` would find missing in a git checkout.

    First every directory the protos name line by line; then replays the protos of every
    recipe and creates each source it still reports missing: a directory for a `d` mode
    line, else an empty file.  Returns the root-relative names.
    """
    from imagebuild.errors import ImageBuildError
    from imagebuild.pipeline.build import fs_tree
    from imagebuild.recipe.load import list_recipes, load_recipe

    made: list[str] = []
    for name in list_recipes():
        recipe = load_recipe(name)
        if recipe.fs.type == "none":
            continue
        binds = dict(recipe.fs.binds)
        if recipe.fs.git_bind and (root / ".git").is_dir():
            binds[recipe.fs.git_bind] = (".",)
        for proto in recipe.fs.protos:
            if not (root / proto).is_file():
                continue
            for path in proto_directories((root / proto).read_text(), recipe.objtype):
                source = root / _source_of(path, binds)
                if not os.path.lexists(source):
                    source.mkdir(parents=True)
                    made.append(str(source.relative_to(root)))
        for _ in range(limit):
            try:
                fs_tree(recipe, root)
                break
            except ImageBuildError as e:
                m = _MISSING.match(str(e))
                if not m:
                    raise
                line = Path(m["origin"]).read_text().splitlines()[int(m["line"]) - 1].split()
                source = Path(m["src"])
                if len(line) > 1 and line[1].startswith("d"):
                    source.mkdir(parents=True)
                else:
                    source.parent.mkdir(parents=True, exist_ok=True)
                    source.write_bytes(b"")
                made.append(str(source.relative_to(root)))
    return made


def tree_fingerprint(tree: Path) -> list[tuple[str, int, int, int]]:
    """(path, mode, size, mtime_ns) of everything under `tree`: equal before and after means
    nothing was written there."""
    out = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            out.append((os.path.relpath(full, tree), st.st_mode, st.st_size, st.st_mtime_ns))
    return out


@dataclass
class FileView:
    """A byte range of a file that slices like bytes (for tests/hjfs_helpers.py), read lazily."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(self.length)
        assert step == 1
        return os.pread(self.fd, max(stop - start, 0), self.offset + start)


def files_under(tree: Path, skip: re.Pattern[str] | None = None) -> Iterator[str]:
    """Every path below `tree` (relative, "/"-separated), leaving out names `skip` matches
    (and what is below them), as disk/mkfs's `+` with `skip=` walks."""
    for dirpath, dirnames, filenames in os.walk(tree):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if not skip.search(d)]
            filenames = [f for f in filenames if not skip.search(f)]
        rel = os.path.relpath(dirpath, tree)
        for name in dirnames + filenames:
            yield name if rel == "." else f"{rel}/{name}"
