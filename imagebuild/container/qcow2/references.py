"""Expected refcounts of a QCOW2 image, computed from its metadata.

Every host cluster's refcount should equal the number of things that refer to
it: the header, the L1 table, L2 tables and data or compressed clusters
(reached from the active and every snapshot L1 table), the snapshot table,
the refcount table and its blocks, and bitmap directories, tables and data.
`compute_references` counts them; `stored_refcounts` reads what the refcount
blocks say.  `check.check` compares the two like `qemu-img check`;
`rebuild_refcounts` makes the stored ones equal the expected ones, the repair
QEMU runs on a dirty image before writing to it.

Only the image's public parts are used (`header`, `host`, `refcounts`,
`cluster_size`, `file_size`).

References: QEMU, block/qcow2-refcount.c (qcow2_check_refcounts,
check_refcounts_l1/l2, calculate_refcounts, rebuild_refcount_structure),
docs/interop/qcow2.txt.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imagebuild.container.qcow2.format import (
    BME_TABLE_ENTRY_OFFSET_MASK,
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    REFT_OFFSET_MASK,
    TABLE_ENTRY_SIZE,
    decode_refcount_block,
    decode_table,
    parse_compressed,
    size_to_clusters,
)
from imagebuild.container.qcow2.metadata import (
    MAX_BITMAP_DIRECTORY,
    bitmap_directory_location,
    iter_bitmap_directory,
    parse_snapshots,
)
from imagebuild.errors import ImageFormatError

if TYPE_CHECKING:
    from imagebuild.container.qcow2.image import Qcow2Image


@dataclass
class Tally:
    """What a scan of the metadata found: problems (as qemu-img check words them) and
    the cluster statistics qemu-img check reports."""

    corruptions: int = 0
    messages: list[str] = field(default_factory=list)
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0


class _References:
    """Expected refcounts, grown as references past the end of the file appear."""

    def __init__(self, image: Qcow2Image, result: Tally) -> None:
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


def read_table(image: Qcow2Image, offset: int, length: int) -> array[int]:
    """`length` bytes of 64-bit big-endian entries at host `offset` (zeros past EOF)."""
    return decode_table(image.host.pread(length, offset).ljust(length, b"\0"))


def _count_l1(image: Qcow2Image, refs: _References, result: Tally,
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
        l2 = read_table(image, l2_offset, cs)
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


def _count_bitmaps(image: Qcow2Image, refs: _References, result: Tally) -> None:
    where = bitmap_directory_location(image.header)
    if where is None:
        return
    nb, dir_offset, dir_size = where
    refs.add(dir_offset, dir_size, "bitmap directory")
    directory = image.host.pread(min(dir_size, MAX_BITMAP_DIRECTORY), dir_offset)
    try:
        for bitmap in iter_bitmap_directory(directory, nb, image.path):
            size = bitmap.bitmap_table_size * TABLE_ENTRY_SIZE
            refs.add(bitmap.bitmap_table_offset, size, "bitmap table")
            for entry in read_table(image, bitmap.bitmap_table_offset, size):
                data = entry & BME_TABLE_ENTRY_OFFSET_MASK
                if data:
                    refs.add(data, image.cluster_size, "bitmap data")
    except ImageFormatError:
        result.corruptions += 1
        result.messages.append("ERROR bitmap directory runs past its end")


def stored_refcounts(image: Qcow2Image, result: Tally) -> array[int]:
    """The stored refcount of every cluster the file holds (unusable blocks count 0)."""
    cs = image.cluster_size
    header = image.header
    order = header.refcount_order
    table = read_table(image, header.refcount_table_offset,
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
            block = decode_refcount_block(image.host.pread(cs, offset), order)
            first = rti * per_block
            count = min(per_block, clusters - first)
            stored[first : first + count] = array("Q", block[:count])
    return stored


def compute_references(image: Qcow2Image, result: Tally,
                       ) -> tuple[array[int], list[CopiedCheck]]:
    """Expected refcount of every host cluster, from everything that refers to it,
    and the active table entries whose COPIED flag must match the final refcount."""
    header = image.header
    cs = image.cluster_size
    refs = _References(image, result)
    refs.add(0, cs, "header")
    refs.add(header.l1_table_offset, header.l1_size * TABLE_ENTRY_SIZE, "L1 table")
    l1 = read_table(image, header.l1_table_offset, header.l1_size * TABLE_ENTRY_SIZE)
    result.total_clusters = size_to_clusters(header.size, image.cluster_bits)
    copied = _count_l1(image, refs, result, l1, active=True)
    if header.nb_snapshots:
        raw = image.host.pread(image.file_size - header.snapshots_offset,
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
            _count_l1(image, refs, result, read_table(image, snap.l1_table_offset, size),
                      active=False)
    refs.add(header.refcount_table_offset, header.refcount_table_clusters * cs,
             "refcount table")
    rt = read_table(image, header.refcount_table_offset, header.refcount_table_clusters * cs)
    for entry in rt:
        offset = entry & REFT_OFFSET_MASK
        if offset and not offset & (cs - 1):
            refs.add(offset, cs, "refcount block")
    _count_bitmaps(image, refs, result)
    return refs.counts, copied


def rebuild_refcounts(image: Qcow2Image, *, fix_errors: bool = True) -> tuple[int, int]:
    """Set every stored refcount to the number of references (QEMU's dirty-image repair).

    Returns (leaks fixed, corruptions fixed).  The image must be open for writing.
    """
    scratch = Tally()
    expected, _ = compute_references(image, scratch)
    stored = stored_refcounts(image, scratch)
    if scratch.corruptions and any("refcount block" in m or "Table" in m or "outside" in m
                                   for m in scratch.messages):
        raise ImageFormatError(
            f"{image.path}: cannot rebuild refcounts: {scratch.messages[0]}"
        )
    image.refcounts.end = max(image.refcounts.end, len(expected), len(stored),
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
        image.refcounts.adjust(i, 1, want - have)
    image.refcounts.persist()
    return leaks, errors
