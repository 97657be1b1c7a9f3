"""Consistency check of a QCOW2 image, as `qemu-img check` does it.

The refcounts every host cluster should have are rebuilt from what refers to
it (header, L1/L2 tables, data and compressed clusters, the refcount
structures themselves, snapshots, bitmaps) and compared with the stored
refcounts: a stored refcount above the references is a leak (wasted space), one
below is a corruption (a later allocation could hand out a cluster in use).

References: QEMU, block/qcow2-refcount.c (qcow2_check_refcounts,
check_refcounts_l1/l2, compare_refcounts, check_oflag_copied) and
qemu-img.c (the report and the exit codes 0, 2, 3).
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

from imagebuild.container.qcow2.format import (
    EXT_BITMAPS,
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    REFT_OFFSET_MASK,
    TABLE_ENTRY_SIZE,
    align_up,
    decode_refcount_block,
    decode_table,
    parse_compressed,
    parse_snapshots,
    size_to_clusters,
)
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.errors import ImageBuildError, ImageFormatError

EXIT_CLEAN, EXIT_CORRUPT, EXIT_LEAKS = 0, 2, 3
BITMAPS_EXTENSION = struct.Struct(">IIQQ")
BITMAP_DIR_ENTRY = struct.Struct(">QIIBBHI")


@dataclass
class CheckResult:
    """What `qemu-img check` reports (its JSON field names in to_json())."""

    filename: str
    check_errors: int = 0
    corruptions: int = 0
    leaks: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.corruptions or self.leaks or self.check_errors)

    @property
    def exit_code(self) -> int:
        """qemu-img check's: 0 clean, 2 corruptions, 3 only leaks."""
        if self.corruptions or self.check_errors:
            return EXIT_CORRUPT
        if self.leaks:
            return EXIT_LEAKS
        return EXIT_CLEAN

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.image_end_offset:
            out["image-end-offset"] = self.image_end_offset
        for key, value in (("compressed-clusters", self.compressed_clusters),
                           ("total-clusters", self.total_clusters)):
            if value:
                out[key] = value
        out["check-errors"] = self.check_errors
        for key, value in (("corruptions", self.corruptions), ("leaks", self.leaks),
                           ("corruptions-fixed", self.corruptions_fixed),
                           ("leaks-fixed", self.leaks_fixed),
                           ("allocated-clusters", self.allocated_clusters)):
            if value:
                out[key] = value
        out["filename"] = self.filename
        out["format"] = "qcow2"
        if self.fragmented_clusters:
            out["fragmented-clusters"] = self.fragmented_clusters
        return out

    def to_human(self) -> str:
        lines = list(self.messages)
        if lines:
            lines.append("")
        if self.leaks_fixed or self.corruptions_fixed:
            lines.append(f"The following inconsistencies were found and repaired:\n\n"
                         f"    {self.leaks_fixed} leaked clusters\n"
                         f"    {self.corruptions_fixed} corruptions\n")
            lines.append("Double checking the fixed image now...")
        if self.clean:
            lines.append("No errors were found on the image.")
        else:
            if self.corruptions:
                lines.append(f"{self.corruptions} errors were found on the image.\n"
                             "Data may be corrupted, or further writes to the image may "
                             "corrupt it.")
            if self.leaks:
                if self.corruptions:
                    lines.append("")
                lines.append(f"{self.leaks} leaked clusters were found on the image.\n"
                             "This means waste of disk space, but no harm to data.")
            if self.check_errors:
                lines.append(f"{self.check_errors} internal errors have occurred during the "
                             "check.")
        if self.total_clusters and self.allocated_clusters:
            t = self.total_clusters
            lines.append(
                f"{self.allocated_clusters}/{t} = "
                f"{self.allocated_clusters * 100 / t:.2f}% allocated, "
                f"{self.fragmented_clusters * 100 / t:.2f}% fragmented, "
                f"{self.compressed_clusters * 100 / t:.2f}% compressed clusters"
            )
        if self.image_end_offset:
            lines.append(f"Image end offset: {self.image_end_offset}")
        return "\n".join(lines) + "\n"


class _References:
    """Expected refcounts, grown as references past the end of the file appear."""

    def __init__(self, image: Qcow2Image, result: CheckResult) -> None:
        self.image = image
        self.result = result
        self.counts = array("Q", bytes(8 * size_to_clusters(image.file_size, image.cluster_bits)))

    def add(self, offset: int, length: int, what: str) -> None:
        bits = self.image.cluster_bits
        if length <= 0:
            return
        first = offset >> bits
        last = (offset + length - 1) >> bits
        limit = max(size_to_clusters(self.image.file_size, bits), 1) + (1 << 20)
        if last >= limit:
            self.result.corruptions += 1
            self.result.messages.append(
                f"ERROR {what} at offset {offset:#x} lies far beyond the end of the image"
            )
            return
        if last >= len(self.counts):
            self.counts.extend(bytes(8 * (last + 1 - len(self.counts))))
        for c in range(first, last + 1):
            self.counts[c] += 1


CopiedCheck = tuple[str, int, int, int]  # what, where, entry, host cluster


def _read_table(image: Qcow2Image, offset: int, length: int) -> array[int]:
    return decode_table(os.pread(image._fd, length, offset).ljust(length, b"\0"))


def _count_l1(image: Qcow2Image, refs: _References, result: CheckResult,
              l1: array[int], active: bool) -> list[CopiedCheck]:
    """Count the L2 tables and clusters reachable from one L1 table.

    Returns the (what, location, entry, host cluster) of every entry whose
    COPIED flag is to be checked against the final refcounts (active table only).
    """
    cs = image.cluster_size
    bits = image.cluster_bits
    copied_checks: list[CopiedCheck] = []
    for l1i, l1e in enumerate(l1):
        next_contiguous = 0  # QEMU counts fragmentation within each L2 table
        l2_offset = l1e & L1E_OFFSET_MASK
        if not l2_offset:
            continue
        if l2_offset & (cs - 1):
            result.corruptions += 1
            result.messages.append(
                f"ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted"
            )
            continue
        refs.add(l2_offset, cs, "L2 table")
        if active:
            copied_checks.append(("L2 cluster", l1i, l1e, l2_offset >> bits))
        if l2_offset + cs > image.file_size:
            result.corruptions += 1
            result.messages.append(f"ERROR l2_offset={l2_offset:x}: L2 table is outside image")
            continue
        l2 = _read_table(image, l2_offset, cs)
        for l2i, entry in enumerate(l2):
            if entry & OFLAG_COMPRESSED:
                if entry & OFLAG_COPIED:
                    result.corruptions += 1
                    result.messages.append(
                        f"ERROR: coffset={entry & ~OFLAG_COPIED:#x}: copied flag must never "
                        f"be set for compressed clusters"
                    )
                coffset, length = parse_compressed(entry, bits)
                refs.add(coffset, length, "compressed cluster")
                if active:
                    # QEMU counts every compressed cluster as fragmented (sub-sector data)
                    result.allocated_clusters += 1
                    result.compressed_clusters += 1
                    result.fragmented_clusters += 1
                continue
            host = entry & L2E_OFFSET_MASK
            if not host:
                continue
            if host & (cs - 1):
                result.corruptions += 1
                zero = image.version >= 3 and entry & OFLAG_ZERO
                kind = "Preallocated cluster" if zero else "Data cluster"
                result.messages.append(
                    f"ERROR offset={host:x}: {kind} is not properly aligned; L2 entry corrupted."
                )
                continue
            refs.add(host, cs, "data cluster")
            if active:
                result.allocated_clusters += 1
                if next_contiguous and host != next_contiguous:
                    result.fragmented_clusters += 1
                next_contiguous = host + cs
                copied_checks.append(
                    ("data cluster", (l1i << (bits - 3)) + l2i, entry, host >> bits))
    return copied_checks


def _count_bitmaps(image: Qcow2Image, refs: _References, result: CheckResult) -> None:
    ext = image.header.extension(EXT_BITMAPS)
    if ext is None or len(ext.data) < BITMAPS_EXTENSION.size:
        return
    nb, _, dir_size, dir_offset = BITMAPS_EXTENSION.unpack_from(ext.data)
    refs.add(dir_offset, dir_size, "bitmap directory")
    directory = os.pread(image._fd, min(dir_size, 1 << 26), dir_offset)
    pos = 0
    for _ in range(nb):
        if pos + BITMAP_DIR_ENTRY.size > len(directory):
            result.corruptions += 1
            result.messages.append("ERROR bitmap directory runs past its end")
            return
        table_offset, table_size, _flags, _type, _gran, name_size, extra = \
            BITMAP_DIR_ENTRY.unpack_from(directory, pos)
        pos = align_up(pos + BITMAP_DIR_ENTRY.size + extra + name_size, 8)
        refs.add(table_offset, table_size * TABLE_ENTRY_SIZE, "bitmap table")
        for entry in _read_table(image, table_offset, table_size * TABLE_ENTRY_SIZE):
            data = entry & L2E_OFFSET_MASK
            if data:
                refs.add(data, image.cluster_size, "bitmap data")


def _stored_refcounts(image: Qcow2Image, result: CheckResult) -> array[int]:
    """The stored refcount of every cluster the file holds (unusable blocks count 0)."""
    cs = image.cluster_size
    header = image.header
    order = header.refcount_order
    table = _read_table(image, header.refcount_table_offset,
                        header.refcount_table_clusters * cs)
    per_block = (cs * 8) >> order
    clusters = size_to_clusters(image.file_size, image.cluster_bits)
    stored = array("Q", bytes(8 * clusters))
    for rti, entry in enumerate(table):
        offset = entry & REFT_OFFSET_MASK
        if not offset:
            continue
        if offset & (cs - 1):
            result.corruptions += 1
            result.messages.append(
                f"ERROR refcount block {rti} is not cluster aligned; refcount table entry "
                f"corrupted"
            )
        elif offset + cs > image.file_size:
            result.corruptions += 1
            result.messages.append(f"ERROR refcount block {rti} is outside image")
        elif rti * per_block < clusters:
            block = decode_refcount_block(os.pread(image._fd, cs, offset), order)
            first = rti * per_block
            count = min(per_block, clusters - first)
            stored[first : first + count] = array("Q", block[:count])
    return stored


def compute_references(image: Qcow2Image, result: CheckResult,
                       ) -> tuple[array[int], list[CopiedCheck]]:
    """Expected refcount of every host cluster, from everything that refers to it,
    and the active table entries whose COPIED flag must match the final refcount."""
    header = image.header
    cs = image.cluster_size
    refs = _References(image, result)
    refs.add(0, cs, "header")
    refs.add(header.l1_table_offset, header.l1_size * TABLE_ENTRY_SIZE, "L1 table")
    l1 = _read_table(image, header.l1_table_offset, header.l1_size * TABLE_ENTRY_SIZE)
    result.total_clusters = size_to_clusters(header.size, image.cluster_bits)
    copied = _count_l1(image, refs, result, l1, active=True)
    if header.nb_snapshots:
        raw = os.pread(image._fd, image.file_size - header.snapshots_offset,
                       header.snapshots_offset)
        snaps, length = parse_snapshots(raw, header.nb_snapshots, image.path)
        refs.add(header.snapshots_offset, length, "snapshot table")
        for snap in snaps:
            size = snap.l1_size * TABLE_ENTRY_SIZE
            if snap.l1_table_offset & (cs - 1) or snap.l1_table_offset + size > image.file_size:
                result.corruptions += 1
                result.messages.append(
                    f"ERROR snapshot {snap.id!r} L1 table {snap.l1_table_offset:#x} is not "
                    f"cluster aligned or outside image"
                )
                continue
            refs.add(snap.l1_table_offset, size, "snapshot L1 table")
            _count_l1(image, refs, result, _read_table(image, snap.l1_table_offset, size),
                      active=False)
    refs.add(header.refcount_table_offset, header.refcount_table_clusters * cs,
             "refcount table")
    rt = _read_table(image, header.refcount_table_offset, header.refcount_table_clusters * cs)
    for entry in rt:
        offset = entry & REFT_OFFSET_MASK
        if offset and not offset & (cs - 1):
            refs.add(offset, cs, "refcount block")
    _count_bitmaps(image, refs, result)
    return refs.counts, copied


def check(target: str | os.PathLike[str] | Qcow2Image, repair: str | None = None,
          ) -> CheckResult:
    """Check an image like `qemu-img check`; repair="leaks" or "all" fixes refcounts."""
    if isinstance(target, Qcow2Image):
        if target.writable:
            target.flush()
        result = _check_open_image(target)
        if repair and _fixable(result, repair):
            if not target.writable:
                raise ImageBuildError(f"{target.path}: open it for writing to repair it")
            _repair(target, result, repair)
        return result
    path = os.fspath(target)
    with Qcow2Image.open(path) as image:
        result = _check_open_image(image)
    if repair and _fixable(result, repair):
        with Qcow2Image.open(path, writable=True, rebuild=False) as image:
            _repair(image, result, repair)
    return result


def _fixable(result: CheckResult, repair: str) -> bool:
    if repair not in ("leaks", "all"):
        raise ImageBuildError(f"repair mode {repair!r} (expected leaks or all)")
    return bool(result.leaks or (repair == "all" and result.corruptions))


def _repair(image: Qcow2Image, before: CheckResult, repair: str) -> None:
    fixed_leaks, fixed_errors = rebuild_refcounts(image, fix_errors=repair == "all")
    image.flush()
    after = _check_open_image(image)
    after.messages = before.messages
    after.leaks_fixed = fixed_leaks
    after.corruptions_fixed = fixed_errors
    before.__dict__.update(after.__dict__)


def _check_open_image(image: Qcow2Image) -> CheckResult:
    result = CheckResult(filename=image.path)
    try:
        expected, copied = compute_references(image, result)
        stored = _stored_refcounts(image, result)
    except ImageFormatError as err:
        result.check_errors += 1
        result.messages.append(f"ERROR {err}")
        return result
    highest = -1
    # Like QEMU, compare the clusters the file holds; stored refcounts past its end are moot.
    for i in range(size_to_clusters(image.file_size, image.cluster_bits)):
        want = expected[i] if i < len(expected) else 0
        have = stored[i] if i < len(stored) else 0
        if want or have:
            highest = i
        if want == have:
            continue
        if have < want:
            result.corruptions += 1
            result.messages.append(f"ERROR cluster {i} refcount={have} reference={want}")
        else:
            result.leaks += 1
            result.messages.append(f"Leaked cluster {i} refcount={have} reference={want}")
    result.image_end_offset = (highest + 1) * image.cluster_size
    for what, where, entry, cluster in copied:
        refcount = stored[cluster] if cluster < len(stored) else 0
        if (refcount == 1) != bool(entry & OFLAG_COPIED):
            result.corruptions += 1
            result.messages.append(
                f"ERROR OFLAG_COPIED {what}: {'l1' if what == 'L2 cluster' else 'l2'}"
                f"_entry={entry:x} refcount={refcount} (entry {where})"
            )
    return result


def rebuild_refcounts(image: Qcow2Image, *, fix_errors: bool = True) -> tuple[int, int]:
    """Set every stored refcount to the number of references (QEMU's dirty-image repair).

    Returns (leaks fixed, corruptions fixed).  The image must be open for writing.
    """
    scratch = CheckResult(filename=image.path)
    expected, _ = compute_references(image, scratch)
    stored = _stored_refcounts(image, scratch)
    if scratch.corruptions and any("refcount block" in m or "Table" in m or "outside" in m
                                   for m in scratch.messages):
        raise ImageFormatError(
            f"{image.path}: cannot rebuild refcounts: {scratch.messages[0]}"
        )
    image._next_free = max(image._next_free, len(expected), len(stored),
                           size_to_clusters(image.file_size, image.cluster_bits))
    leaks = errors = 0
    for i in range(max(len(expected), len(stored))):
        want = expected[i] if i < len(expected) else 0
        have = image.refcount(i)
        if want == have:
            continue
        if want < have:
            leaks += 1
        elif fix_errors:
            errors += 1
        else:
            continue
        image._update_refcount(i, 1, want - have)
    image._persist_refcounts()
    return leaks, errors
