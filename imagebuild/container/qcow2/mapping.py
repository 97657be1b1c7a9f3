"""QCOW2 cluster mapping: the L1 table, cached L2 tables, and guest extents.

A guest cluster number `gc` maps through L1 entry `gc >> (cluster_bits - 3)`
and L2 entry `gc & (entries per L2 - 1)` to an L2 entry: unallocated, zero,
a host cluster, or a compressed descriptor (`ClusterKind`).  `extents()` turns
a guest byte range into runs of one kind (NORMAL runs are contiguous on the
host), which the reader fills with one `preadv` each.

L2 tables are cached write-back: `writable_l2` allocates (or copies, when its
COPIED flag is clear) a table so it may change; `write_back` writes dirty L2
tables and then the changed sectors of the L1 table.

References: QEMU, docs/interop/qcow2.txt ("Cluster mapping");
block/qcow2-cluster.c (qcow2_get_host_offset, get_cluster_table).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from enum import Enum

from imagebuild.container.qcow2.format import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    TABLE_ENTRY_SIZE,
    decode_table,
    encode_table,
    l2_entries,
)
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.container.qcow2.hostfile import HostFile
from imagebuild.container.qcow2.refcounts import Refcounts
from imagebuild.errors import ImageFormatError
from imagebuild.util.record import Record


class ClusterKind(Enum):
    """What a guest cluster's L2 entry says about it."""

    UNALLOCATED = "unallocated"  # read from the backing file, or zeros
    ZERO = "zero"  # reads as zeros (v3 zero flag), maybe with a preallocated host cluster
    NORMAL = "normal"  # data at a host cluster
    COMPRESSED = "compressed"  # compressed data at a host byte offset


class Extent(Record):
    """A run of guest bytes (`start`, `length`) of one kind.

    `host` is the host byte offset of NORMAL runs (and of preallocated ZERO
    runs, 0 otherwise); for COMPRESSED runs (one cluster at most) it is the
    offset of `start` within the cluster and `entry` is the L2 entry.
    """

    FIELDS = ("kind", "start", "length", "host", "entry")
    __slots__ = FIELDS

    kind: ClusterKind
    start: int
    length: int
    host: int
    entry: int

    def __init__(self, kind: ClusterKind, start: int, length: int, host: int = 0,
                 entry: int = 0) -> None:
        self.kind = kind
        self.start = start
        self.length = length
        self.host = host
        self.entry = entry


def classify(entry: int, version: int) -> ClusterKind:
    """The kind of an L2 entry of an image of header `version`."""
    if entry & OFLAG_COMPRESSED:
        return ClusterKind.COMPRESSED
    if version >= 3 and entry & OFLAG_ZERO:
        return ClusterKind.ZERO
    if entry & L2E_OFFSET_MASK:
        return ClusterKind.NORMAL
    return ClusterKind.UNALLOCATED


class ClusterMap:
    """The L1/L2 tables of one open image (see the module docstring)."""

    def __init__(self, host: HostFile, header: Qcow2Header, refcounts: Refcounts) -> None:
        self.host = host
        self.header = header
        self.refcounts = refcounts
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self.l2_entries = l2_entries(header.cluster_bits)
        self.l2_shift = header.cluster_bits - 3
        self._l1 = array("Q")
        self._l1_dirty: set[int] = set()
        self._l2: dict[int, array[int]] = {}
        self._l2_dirty: set[int] = set()

    def load(self) -> None:
        """Read the L1 table the header points to (L2 tables are read on demand)."""
        h = self.header
        self._l1 = decode_table(self.host.pread(h.l1_size * TABLE_ENTRY_SIZE, h.l1_table_offset))

    def lay_out_new(self) -> None:
        """For a new image: an all-zero L1 table of header.l1_size entries."""
        self._l1 = array("Q", bytes(self.header.l1_size * TABLE_ENTRY_SIZE))

    @property
    def cached_tables(self) -> int:
        """L2 tables held in memory."""
        return len(self._l2)

    def l2_entry(self, guest_cluster: int) -> int:
        """The L2 entry of `guest_cluster` (0 when its L2 table is not allocated)."""
        table = self._l2_table(guest_cluster >> self.l2_shift)
        if table is None:
            return 0
        return table[guest_cluster & (self.l2_entries - 1)]

    def writable_l2(self, l1i: int) -> array[int]:
        """The L2 table for L1 index `l1i`, allocated (or copied, if shared) to change."""
        entry = self._l1[l1i]
        table = self._l2_table(l1i)
        if table is None or not entry & OFLAG_COPIED:
            host = self.refcounts.allocate(1)
            if table is None:
                table = array("Q", bytes(self.cluster_size))
                self._l2[l1i] = table
            else:
                self.refcounts.free_later((entry & L1E_OFFSET_MASK) >> self.cluster_bits, 1)
            self._l1[l1i] = (host << self.cluster_bits) | OFLAG_COPIED
            self._l1_dirty.add(l1i)
        self._l2_dirty.add(l1i)
        return table

    def set_l2_entry(self, guest_cluster: int, value: int) -> None:
        """Set the L2 entry of `guest_cluster` (allocating its table as needed)."""
        table = self.writable_l2(guest_cluster >> self.l2_shift)
        table[guest_cluster & (self.l2_entries - 1)] = value

    def write_back(self) -> None:
        """Write dirty L2 tables, then the changed 512-byte sectors of the L1 table."""
        for l1i in sorted(self._l2_dirty):
            offset = self._l1[l1i] & L1E_OFFSET_MASK
            self.host.write(encode_table(self._l2[l1i]), offset)
        self._l2_dirty.clear()
        if self._l1_dirty:
            lo = min(self._l1_dirty) * TABLE_ENTRY_SIZE // 512 * 512
            hi = max(self._l1_dirty) * TABLE_ENTRY_SIZE // 512 * 512 + 512
            raw = encode_table(self._l1[lo // TABLE_ENTRY_SIZE : hi // TABLE_ENTRY_SIZE])
            self.host.write(raw, self.header.l1_table_offset + lo)
            self._l1_dirty.clear()

    def drop_cache(self) -> None:
        """Forget cached L2 tables (after `write_back`)."""
        self._l2.clear()

    def extents(self, offset: int, end: int) -> Iterator[Extent]:
        """Runs of guest bytes offset..end of one kind (NORMAL runs contiguous on the host).

        Raises ImageFormatError for an unaligned host offset or an L2 table
        outside the file.
        """
        bits = self.cluster_bits
        cs = self.cluster_size
        version = self.header.version
        per_l2 = self.l2_entries
        normal = ClusterKind.NORMAL
        # the run being built: kind, guest start, host start (0: none)
        run_kind: ClusterKind | None = None
        run_start = run_host = 0
        pos = offset
        while pos < end:
            gc = pos >> bits
            l1i = gc >> self.l2_shift
            table = self._l2_table(l1i)
            table_end = min(end, (l1i + 1) * per_l2 << bits)
            if table is None:
                kind, host = ClusterKind.UNALLOCATED, 0
                if run_kind is not kind:
                    if run_kind is not None:
                        yield Extent(run_kind, run_start, pos - run_start, run_host)
                    run_kind, run_start, run_host = kind, pos, 0
                pos = table_end
                continue
            while pos < table_end:
                gc = pos >> bits
                stop = min(table_end, (gc + 1) << bits)
                entry = table[gc & (per_l2 - 1)]
                within = pos - (gc << bits)
                if entry & OFLAG_COMPRESSED:
                    if run_kind is not None:
                        yield Extent(run_kind, run_start, pos - run_start, run_host)
                    yield Extent(ClusterKind.COMPRESSED, pos, stop - pos, within, entry)
                    run_kind = None
                    pos = stop
                    continue
                host = entry & L2E_OFFSET_MASK
                if version >= 3 and entry & OFLAG_ZERO:
                    kind = ClusterKind.ZERO  # a preallocated one keeps its host for map()
                elif host:
                    kind = normal
                    if host & (cs - 1):
                        raise ImageFormatError(
                            f"{self.host.path}: L2 entry for guest cluster {gc}: host offset "
                            f"{host:#x} is not cluster aligned"
                        )
                else:
                    kind = ClusterKind.UNALLOCATED
                if host:
                    host += within
                if kind is not run_kind or (
                        host != (run_host + pos - run_start if run_host else 0)):
                    if run_kind is not None:
                        yield Extent(run_kind, run_start, pos - run_start, run_host)
                    run_kind, run_start, run_host = kind, pos, host
                pos = stop
        if run_kind is not None:
            yield Extent(run_kind, run_start, pos - run_start, run_host)

    def _l2_table(self, l1i: int) -> array[int] | None:
        table = self._l2.get(l1i)
        if table is not None:
            return table
        offset = self._l1[l1i] & L1E_OFFSET_MASK
        if not offset:
            return None
        data = self.host.read_cluster(f"L1 entry {l1i}: L2 table", offset, self.cluster_size)
        table = decode_table(data)
        self._l2[l1i] = table
        return table
