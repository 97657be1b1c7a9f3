"""Run a recipe against a root into an image: the mkfile's `%.disk` rule.

    plan_build()   reads every input and renders the boot files; all missing
                   inputs are reported at once, before anything is written
    write_image()  container -> whole-disk view -> mbr, fdisk, prep, format,
                   raw writes, each through partfs-style views
    build()        both, into a temporary file renamed over the target only
                   when everything succeeded
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType

from imagebuild.disk.device import BlockDevice, PartFS, RawFile, Storage
from imagebuild.errors import ImageBuildError, InputError, LayoutError
from imagebuild.fs.proto import ProtoEntry
from imagebuild.pipeline.demo import is_demo_root
from imagebuild.recipe.load import Recipe
from imagebuild.recipe.render import render_boot_files

# step name, bytes written so far in this step, bytes the step will write (if known)
Progress = Callable[[str, int, int | None], None]


@dataclass
class BuildOptions:
    root: Path
    output: Path | None = None
    container: str | None = None  # qcow2 or raw; None: the recipe's
    sets: Sequence[str] = ()
    files: Sequence[str] = ()  # NAME=PATH: add or replace a file on the boot partition
    template_dir: Path | None = None
    timestamp: int | None = None  # FAT times; SOURCE_DATE_EPOCH when None and set
    fs: bool = True  # False: leave the fs partition empty (a boot-only image)


@dataclass
class BuildPlan:
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
    raw_writes: list[tuple[str, int, bytes]]
    pinned_time: int | None = None  # SOURCE_DATE_EPOCH (or --timestamp): hjfs's clock
    fs_entries: list[ProtoEntry] | None = None  # None: no fs written


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ImageBuildError(f"SOURCE_DATE_EPOCH={value!r}: must be a whole number of seconds")
    return int(value)


def read_file_options(texts: Sequence[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """--file NAME=PATH options: the (name, data) pairs, and the PATHs that cannot be read."""
    files: list[tuple[str, bytes]] = []
    unreadable: list[str] = []
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name or not path or "/" in name:
            raise InputError(
                f"--file {text!r}: expected NAME=PATH, NAME a file name on the boot partition"
            )
        try:
            files.append((name, Path(path).read_bytes()))
        except OSError as err:
            unreadable.append(f"{path} ({err.strerror})")
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
    """Read and check every input; nothing is written here."""
    root = options.root
    if not root.is_dir():
        raise InputError(f"root {root}: not a directory")
    container = options.container or recipe.format
    if container not in ("qcow2", "raw"):
        raise InputError(f"--format {container!r}: expected qcow2 or raw")

    contents: dict[str, bytes] = {}
    missing: list[str] = []
    for rel in recipe.root_inputs():
        path = root / rel
        try:
            contents[rel] = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            missing.append(rel)
        except OSError as err:
            missing.append(f"{rel} ({err.strerror})")
    extra, unreadable = read_file_options(options.files)
    missing += unreadable
    if missing:
        raise InputError(
            f"{recipe.name}: missing inputs under {root}: {', '.join(missing)}"
        )

    demo = is_demo_root(root)
    rendered = render_boot_files(
        recipe, sets=options.sets, template_dir=options.template_dir, demo=demo
    )
    fat_files: list[tuple[str, bytes]] = []
    for entry in recipe.fat_files:
        if entry in rendered:
            fat_files.append((entry, rendered[entry]))
        else:
            fat_files.append((PurePosixPath(entry).name, contents[entry]))
    place_files(fat_files, extra)  # --file replaces a file of that name, else appends

    timestamp = options.timestamp if options.timestamp is not None else source_date_epoch()
    output = options.output or Path("out") / recipe.output_name(container)
    fs_entries = fs_tree(recipe, root) if options.fs and recipe.fs.type != "none" else None
    return BuildPlan(
        recipe=recipe,
        root=root,
        container=container,
        size=recipe.image_size(container),
        output=output,
        demo=demo,
        timestamp=timestamp if timestamp is not None else int(time.time()),
        mbr_bootcode=contents.get(recipe.mbr_bootcode) if recipe.mbr_bootcode else None,
        pbs=contents.get(recipe.fat_pbs) if recipe.fat_pbs else None,
        fat_files=fat_files,
        raw_writes=[(w.file, w.offset, contents[w.file]) for w in recipe.raw_writes],
        pinned_time=timestamp,
        fs_entries=fs_entries,
    )


def fs_tree(recipe: Recipe, root: Path) -> list[ProtoEntry]:
    """The files `mk binds` + `disk/mkfs <{cat $proto $bootproto}` would copy, in order."""
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
    )


class CountingStorage:
    """Storage wrapper that reports bytes written to the current step."""

    def __init__(self, inner: Storage, progress: Progress | None) -> None:
        self.inner = inner
        self.progress = progress
        self.step = ""
        self.written = 0
        self.total: int | None = None

    @property
    def size(self) -> int:
        return self.inner.size

    def begin(self, step: str, total: int | None = None) -> None:
        self.step, self.written, self.total = step, 0, total
        if self.progress:
            self.progress(step, 0, total)

    def pread(self, size: int, offset: int) -> bytes:
        return self.inner.pread(size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        n = self.inner.pwrite(data, offset)
        self.written += n
        if self.progress:
            self.progress(self.step, self.written, self.total)
        return n


def write_image(plan: BuildPlan, storage: Storage, progress: Progress | None = None) -> None:
    """Lay the recipe down on `storage` (a fresh, all-zero disk of plan.size bytes)."""
    from imagebuild.fs.fat import format as fat
    from imagebuild.partition import fdisk, mbr, prep

    recipe = plan.recipe
    counting = CountingStorage(storage, progress)
    disk = BlockDevice(counting)
    parts = PartFS(disk)

    counting.begin("mbr")
    mbr.install_bootcode(disk, None)  # disk/mbr $d/data: every target gets the default program
    if plan.mbr_bootcode is not None:
        mbr.install_bootcode(disk, plan.mbr_bootcode, source=str(recipe.mbr_bootcode))

    counting.begin("fdisk")
    if recipe.fdisk == "auto":
        entries = fdisk.fdisk_auto(parts)
    else:
        script = "".join(line + "\n" for line in recipe.fdisk)
        entries = fdisk.fdisk_script(parts, script, source=f"{recipe.path} layout.fdisk")
    fdisk.verify_with_libparted(disk, entries)

    counting.begin("prep")
    prep.prep_auto(parts, recipe.prep)

    if plan.fs_entries is not None:
        # before the FAT: hjfs checks that the tree fits before it writes a byte
        _write_fs(plan, parts, counting)

    counting.begin(f"format {recipe.fat_partition}")
    if recipe.fat_partition not in parts:
        raise LayoutError(
            f"{recipe.path}: key 'fat.partition': the layout makes no partition "
            f"{recipe.fat_partition!r} (it makes: {', '.join(n for n, _, _ in parts)})"
        )
    fat.format_fat(
        parts[recipe.fat_partition],
        [fat.FatFile(name, data) for name, data in plan.fat_files],
        pbs=plan.pbs,
        pbs_source=str(recipe.fat_pbs or "<default>"),
        reserved=recipe.fat_reserved,
        timestamp=plan.timestamp,
    )

    for name, offset, data in plan.raw_writes:
        counting.begin(PurePosixPath(name).name)
        _check_raw_write(plan, parts, name, offset, len(data))
        disk.pwrite(data, offset)


def _write_fs(plan: BuildPlan, parts: PartFS, counting: CountingStorage) -> None:
    from imagebuild.fs.hjfs import ream_and_populate

    assert plan.fs_entries is not None
    if "fs" not in parts:
        raise LayoutError(
            f"{plan.recipe.path}: the layout makes no fs partition for {plan.recipe.fs.type}"
        )
    tree_bytes = sum(e.length for e in plan.fs_entries if not e.is_dir)
    counting.begin(f"fs ({plan.recipe.fs.type})", tree_bytes)
    ream_and_populate(parts["fs"], plan.fs_entries, timestamp=plan.pinned_time)


def _check_raw_write(plan: BuildPlan, parts: PartFS, name: str, offset: int, length: int) -> None:
    """Strict where `dd` is not: a raw write must not touch sector 0 or any partition."""
    end = offset + length
    if offset < 512 or end > plan.size:
        raise LayoutError(
            f"{plan.recipe.path}: raw write of {name} at {offset}..{end} must lie between "
            f"sector 1 and the end of the disk ({plan.size} bytes)"
        )
    for part, start, stop in parts:
        if offset < stop * 512 and start * 512 < end:
            raise LayoutError(
                f"{plan.recipe.path}: raw write of {name} at {offset}..{end} overlaps "
                f"partition {part} (bytes {start * 512}..{stop * 512})"
            )


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """A temp file beside `target`, renamed over it on success, removed on any failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def build(recipe: Recipe, options: BuildOptions, progress: Progress | None = None) -> BuildPlan:
    """Plan, then write the image atomically to plan.output."""
    plan = plan_build(recipe, options)
    with atomic_output(plan.output) as tmp:
        if plan.container == "qcow2":
            from imagebuild.container.qcow2.image import Qcow2Image

            with Qcow2Image.create(tmp, plan.size) as image:
                write_image(plan, image.data, progress)
        else:
            with RawFile.create(tmp, plan.size) as raw:
                write_image(plan, raw, progress)
    return plan
