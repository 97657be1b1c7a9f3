"""Write a planned build: the dist mkfile's `%.disk` rule, step by step.

The rule runs `disk/mbr`, `disk/fdisk`, `disk/prep`, hjfs + `disk/mkfs` on
the fs partition, `disk/format` on the boot partition and, for some targets,
`dd` of a file at a byte offset.  Everything but the fs partition is small,
so `lay_out` first runs those steps on a `RecordingStorage` in memory: every
check of every step (fdisk script, prep names, FAT fit and boot program, raw
write bounds) happens there, before a byte of the image exists.
`write_image` then replays the recorded writes onto the real disk in the
same order, writing the fs partition where the rule does (after prep), so
the container sees exactly the writes it always saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

from imagebuild.disk.device import BlockDevice, PartFS, Storage
from imagebuild.errors import LayoutError, OutOfRangeError, show_path
from imagebuild.pipeline.plan import BuildPlan
from imagebuild.recipe.load import Recipe
from imagebuild.util.progress import Progress
from imagebuild.util.record import Record

TABLE_STEPS = ("mbr", "fdisk", "prep")  # the steps before the fs partition is written


class RecordingStorage:
    """Storage of `size` bytes (all zero at first) that keeps every write in memory, in order.

    Each write is tagged with the current `step`; reads see the writes so far.
    Raises OutOfRangeError for a write outside the size.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self.step = ""
        self.writes: list[tuple[str, int, bytes]] = []  # (step, byte offset, data)

    @property
    def size(self) -> int:
        """The disk's size in bytes."""
        return self._size

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at byte `offset`: zeros overlaid with every write so far."""
        out = bytearray(size)
        end = offset + size
        for _, at, data in self.writes:
            lo, hi = max(at, offset), min(at + len(data), end)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(out)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Record `data` at byte `offset`; the byte count."""
        if offset < 0 or offset + len(data) > self._size:
            raise OutOfRangeError(
                f"write of {len(data)} bytes at offset {offset} runs past the end of the disk "
                f"({self._size} bytes)"
            )
        self.writes.append((self.step, offset, bytes(data)))
        return len(data)


class DiskLayout(Record):
    """The recorded boot side of an image: its writes per step and partfs's table.

    `steps` lists (step name, [(byte offset, data), ...]) in the order the
    rule runs them; `partitions` (name, first sector, end sector) as fdisk
    and prep registered them with partfs.
    """

    FIELDS = ("steps", "partitions", "fs_at")
    __slots__ = FIELDS

    steps: list[tuple[str, list[tuple[int, bytes]]]]
    partitions: list[tuple[str, int, int]]
    fs_at: int  # the fs partition is written before steps[fs_at] (after mbr, fdisk, prep)

    def __init__(
        self,
        steps: list[tuple[str, list[tuple[int, bytes]]]],
        partitions: list[tuple[str, int, int]],
        fs_at: int,
    ) -> None:
        self.steps = steps
        self.partitions = partitions
        self.fs_at = fs_at


def lay_out(plan: BuildPlan) -> DiskLayout:
    """Run every step but the fs partition's on an in-memory disk; check everything.

    Raises LayoutError, FatError, MbrError and the other ImageBuildErrors of
    the steps, naming the recipe key or input file.
    """
    from imagebuild.fs.fat import format as fat
    from imagebuild.partition import fdisk, mbr, prep

    recipe = plan.recipe
    record = RecordingStorage(plan.size)
    disk = BlockDevice(record)
    parts = PartFS(disk)

    record.step = "mbr"
    mbr.install_bootcode(disk, None)  # disk/mbr $d/data: every target gets the default program
    if plan.mbr_bootcode is not None:
        mbr.install_bootcode(disk, plan.mbr_bootcode, source=str(recipe.mbr_bootcode))

    record.step = "fdisk"
    if recipe.fdisk == "auto":
        fdisk.fdisk_auto(parts)
    else:
        script = "".join(line + "\n" for line in recipe.fdisk)
        try:
            fdisk.fdisk_script(parts, script, source=f"{recipe.path} layout.fdisk")
        except RecursionError:  # the expression parser recurses per parenthesis
            raise LayoutError(f"{show_path(recipe.path)}: key 'layout.fdisk': an expression "
                              f"nested too deeply") from None

    record.step = "prep"
    with _naming(recipe, "layout.prep"):
        prep.prep_auto(parts, recipe.prep)

    fs_parts = ("fscache", "fsworm") if recipe.fs.type == "cwfs" else ("fs",)
    if plan.fs_entries is not None and any(p not in parts for p in fs_parts):
        raise LayoutError(
            f"{recipe.path}: the layout makes no fs partition for {recipe.fs.type}"
        )

    record.step = f"format {recipe.fat_partition}"
    if recipe.fat_partition not in parts:
        raise LayoutError(
            f"{recipe.path}: key 'fat.partition': the layout makes no partition "
            f"{recipe.fat_partition!r} (it makes: {', '.join(n for n, _, _ in parts)})"
        )
    with _naming(recipe, "fat"):
        fat.format_fat(
            parts[recipe.fat_partition],
            [fat.FatFile(name, data) for name, data in plan.fat_files],
            pbs=plan.pbs,
            pbs_source=show_path(plan.root / recipe.fat_pbs) if recipe.fat_pbs else "<default>",
            reserved=recipe.fat_reserved,
            timestamp=plan.timestamp,
        )

    for name, offset, data in plan.raw_writes:
        record.step = PurePosixPath(name).name
        _check_raw_write(plan, parts, name, offset, len(data))
        disk.pwrite(data, offset)

    steps: list[tuple[str, list[tuple[int, bytes]]]] = []
    for step, offset, data in record.writes:
        if not steps or steps[-1][0] != step:
            steps.append((step, []))
        steps[-1][1].append((offset, data))
    fs_at = sum(1 for step, _ in steps if step in TABLE_STEPS)
    return DiskLayout(steps, list(parts), fs_at)


@contextmanager
def _naming(recipe: Recipe, key: str) -> Iterator[None]:
    """A LayoutError from a step, prefixed with the recipe file and the key it came from."""
    try:
        yield
    except LayoutError as err:
        raise LayoutError(f"{show_path(recipe.path)}: [{key}]: {err}") from None


def write_image(
    plan: BuildPlan,
    storage: Storage,
    progress: Progress | None = None,
    layout: DiskLayout | None = None,
) -> None:
    """Lay the recipe down on `storage` (a fresh, all-zero disk of plan.size bytes).

    `layout` is lay_out(plan), computed here when not given.  `progress`
    follows imagebuild.util.progress.  Raises what lay_out raises (before
    writing) and the fs writer's errors (before the fs partition is written).
    """
    if layout is None:
        layout = lay_out(plan)
    disk = BlockDevice(storage)
    for i, (step, writes) in enumerate(layout.steps):
        if i == layout.fs_at and plan.fs_entries is not None:
            _write_fs(plan, disk, layout, progress)
        _replay(disk, step, writes, progress)
    if len(layout.steps) <= layout.fs_at and plan.fs_entries is not None:
        _write_fs(plan, disk, layout, progress)


def _replay(disk: BlockDevice, step: str, writes: list[tuple[int, bytes]],
            progress: Progress | None) -> None:
    total = sum(len(data) for _, data in writes)
    done = 0
    if progress is not None:
        progress(step, 0, total)
    for offset, data in writes:
        disk.pwrite(data, offset)
        done += len(data)
        if progress is not None:
            progress(step, done, total)


def _write_fs(plan: BuildPlan, disk: BlockDevice, layout: DiskLayout,
              progress: Progress | None) -> None:
    from imagebuild.fs.hjfs import ream_and_populate

    assert plan.fs_entries is not None
    if plan.recipe.fs.type == "cwfs":
        from imagebuild.fs import cwfs

        if progress is not None:
            progress("fs (cwfs)", 0, None)
        parts = {n: disk.slice(a, b, n) for n, a, b in layout.partitions if n in cwfs.PARTS}
        cwfs.ream_and_populate(parts, plan.fs_entries, timestamp=plan.pinned_time,
                               disk=plan.recipe.fs.disk)  # fmt: skip
        return
    part = next(p for p in layout.partitions if p[0] == "fs")
    device = disk.slice(part[1], part[2], "fs")
    step = f"fs ({plan.recipe.fs.type})"
    total = sum(e.length for e in plan.fs_entries if not e.is_dir)
    if plan.recipe.fs.type == "gefs":
        from imagebuild.fs import gefs

        if progress is not None:
            progress(step, 0, total)
        gefs.ream_and_populate(device, plan.fs_entries, timestamp=plan.pinned_time)
        if progress is not None:
            progress(step, total, total)
        return
    if progress is not None:
        progress(step, 0, total)
        report = progress

        def fs_progress(_: str, done: int, __: int | None) -> None:
            report(step, done, total)

        ream_and_populate(device, plan.fs_entries, timestamp=plan.pinned_time,
                          progress=fs_progress)
    else:
        ream_and_populate(device, plan.fs_entries, timestamp=plan.pinned_time)


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
