"""QCOW2 refcounts: the refcount table, cached refcount blocks, cluster allocation.

Allocation is append-only: `allocate(n)` takes `n` contiguous host clusters
from `end` (the first cluster past everything allocated) and counts them.
Clusters released while the image is open (`free_later`) are decremented only
after the tables that referred to them are written (`apply_frees`), and are not
handed out again in the same session.  Refcount blocks are cached write-back;
`persist()` writes dirty blocks and then the table (moving it to a larger place
at the end of the file when it has to grow, then pointing the header at it).

Units: clusters are host cluster numbers (byte offset >> cluster_bits).

References: QEMU, docs/interop/qcow2.txt ("Host cluster management");
block/qcow2-refcount.c (alloc_refcount_block, qcow2_update_cluster_refcount).
"""

from __future__ import annotations

from array import array

from imagebuild.container.qcow2.format import (
    HEADER_V2,
    REFT_OFFSET_MASK,
    TABLE_ENTRY_SIZE,
    decode_refcount_block,
    decode_table,
    encode_refcount_block,
    encode_table,
    new_refcount_block,
    parse_compressed,
    refcount_block_entries,
    size_to_clusters,
)
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.container.qcow2.hostfile import HostFile
from imagebuild.errors import ImageFormatError


class Refcounts:
    """The refcount structures of one open image (see the module docstring)."""

    def __init__(self, host: HostFile, header: Qcow2Header) -> None:
        self.host = host
        self.header = header
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self.block_entries = refcount_block_entries(header.cluster_bits, header.refcount_order)
        self.max_refcount = (1 << (1 << header.refcount_order)) - 1
        self.end = 0  # first host cluster not yet allocated
        self._table = array("Q")
        self._capacity = 0  # entries the table's clusters in the file hold
        self._table_dirty = False
        self._blocks: dict[int, array[int]] = {}
        self._dirty: set[int] = set()
        self._pending_free: list[tuple[int, int]] = []

    # -- setup -----------------------------------------------------------------------------
    def load(self) -> None:
        """Read the refcount table the header points to (blocks are read on demand)."""
        h = self.header
        self._table = decode_table(self.host.pread(h.refcount_table_clusters * self.cluster_size,
                                                   h.refcount_table_offset))
        self._capacity = len(self._table)

    def lay_out_new(self, table_clusters: int) -> None:
        """For a new image: an empty table of `table_clusters` clusters at cluster 1.

        Counts the header cluster and the table (creating refcount block 0
        right after the table).
        """
        self._capacity = table_clusters * self.cluster_size // TABLE_ENTRY_SIZE
        self._table = array("Q", bytes(self._capacity * TABLE_ENTRY_SIZE))
        self.header.refcount_table_offset = self.cluster_size
        self.header.refcount_table_clusters = table_clusters
        self.end = 1 + table_clusters
        self.adjust(0, 1 + table_clusters, +1)
        self._table_dirty = True

    # -- queries ---------------------------------------------------------------------------
    def refcount(self, cluster: int) -> int:
        """The refcount of host cluster `cluster` (0 where no block covers it)."""
        rti, rbi = divmod(cluster, self.block_entries)
        block = self._block(rti, create=False)
        return block[rbi] if block is not None else 0

    def last_referenced(self) -> int:
        """The highest host cluster with a nonzero refcount or holding a block (-1: none)."""
        last = -1
        for rti in range(len(self._table) - 1, -1, -1):
            if not self._table[rti] & REFT_OFFSET_MASK:
                continue
            block = self._block(rti, create=False)
            if block is None:
                continue
            for i in range(len(block) - 1, -1, -1):
                if block[i]:
                    return rti * self.block_entries + i
            last = max(last, (self._table[rti] & REFT_OFFSET_MASK) >> self.cluster_bits)
        return last

    @property
    def cached_blocks(self) -> int:
        """Refcount blocks held in memory."""
        return len(self._blocks)

    # -- changes ---------------------------------------------------------------------------
    def adjust(self, first: int, count: int, delta: int) -> None:
        """Add `delta` to the refcounts of clusters first..first+count-1.

        Creates missing refcount blocks (allocated at `end`).  Raises
        ImageFormatError when a refcount would leave 0..max_refcount.
        """
        cluster = first
        stop = first + count
        while cluster < stop:
            rti, rbi = divmod(cluster, self.block_entries)
            block = self._block(rti, create=True)
            assert block is not None
            n = min(stop - cluster, self.block_entries - rbi)
            for i in range(rbi, rbi + n):
                value = block[i] + delta
                if not 0 <= value <= self.max_refcount:
                    raise ImageFormatError(
                        f"{self.host.path}: refcount of cluster {rti * self.block_entries + i} "
                        f"would become {value} (refcount_bits {1 << self.header.refcount_order})"
                    )
                block[i] = value
            self._dirty.add(rti)
            cluster += n

    def allocate(self, count: int) -> int:
        """Take `count` contiguous clusters at the end of the file; returns the first."""
        first = self.end
        self.end += count
        self.adjust(first, count, +1)
        return first

    def free_later(self, first: int, count: int) -> None:
        """Drop a reference once the tables no longer point there (at `apply_frees`)."""
        self._pending_free.append((first, count))

    def free_compressed_later(self, entry: int) -> None:
        """`free_later` every host cluster a compressed L2 entry's data touches."""
        coffset, length = parse_compressed(entry, self.cluster_bits)
        first = coffset >> self.cluster_bits
        last = (coffset + length - 1) >> self.cluster_bits
        self.free_later(first, last - first + 1)

    def apply_frees(self) -> None:
        """Decrement what `free_later` queued and write the result (tables are out)."""
        while self._pending_free:
            pending, self._pending_free = self._pending_free, []
            for first, count in pending:
                self.adjust(first, count, -1)
            self.persist()

    def persist(self) -> None:
        """Write dirty refcount blocks, then the table (grown and moved when needed)."""
        while len(self._table) > self._capacity:
            self._grow_table()
        self._write_blocks()
        if self._table_dirty:
            self.host.write(encode_table(self._table[: self._capacity]),
                            self.header.refcount_table_offset)
            self._table_dirty = False

    def drop_cache(self) -> None:
        """Forget cached blocks (after `persist`)."""
        self._blocks.clear()

    # -- internals -------------------------------------------------------------------------
    def _block(self, rti: int, *, create: bool) -> array[int] | None:
        block = self._blocks.get(rti)
        if block is not None:
            return block
        offset = self._table[rti] & REFT_OFFSET_MASK if rti < len(self._table) else 0
        if offset:
            data = self.host.read_cluster(f"refcount table entry {rti}: refcount block", offset,
                                          self.cluster_size)
            block = decode_refcount_block(data, self.header.refcount_order)
            self._blocks[rti] = block
            return block
        if not create:
            return None
        cluster = self.end
        self.end += 1
        while len(self._table) <= rti:
            self._table.append(0)
        self._table[rti] = cluster << self.cluster_bits
        self._table_dirty = True
        block = new_refcount_block(self.cluster_bits, self.header.refcount_order)
        self._blocks[rti] = block
        self._dirty.add(rti)
        self.adjust(cluster, 1, +1)
        return block

    def _write_blocks(self) -> None:
        order = self.header.refcount_order
        for rti in sorted(self._dirty):
            offset = self._table[rti] & REFT_OFFSET_MASK
            self.host.write(encode_refcount_block(self._blocks[rti], order), offset)
        self._dirty.clear()

    def _grow_table(self) -> None:
        """Move the refcount table to a larger place at the end of the file."""
        cs = self.cluster_size
        per_cluster = cs // TABLE_ENTRY_SIZE
        old_offset = self.header.refcount_table_offset
        old_clusters = self.header.refcount_table_clusters
        needed = size_to_clusters(len(self._table) * TABLE_ENTRY_SIZE, self.cluster_bits)
        clusters = needed + max(1, needed // 2)  # headroom, also for the table's own blocks
        first = self.allocate(clusters)
        capacity = clusters * per_cluster
        if len(self._table) > capacity:  # the new table's own blocks did not fit: try again
            self.free_later(first, clusters)
            return
        while len(self._table) < capacity:
            self._table.append(0)
        self._write_blocks()
        self.host.write(encode_table(self._table), first * cs)
        self._capacity = capacity
        self.header.refcount_table_offset = first * cs
        self.header.refcount_table_clusters = clusters
        # the two header fields are adjacent: one small write points the header at the table
        at = HEADER_V2.offset("refcount_table_offset")
        self.host.write(HEADER_V2.pack_field("refcount_table_offset", first * cs)
                        + HEADER_V2.pack_field("refcount_table_clusters", clusters), at)
        self._table_dirty = False
        if old_clusters and old_offset:
            self.free_later(old_offset >> self.cluster_bits, old_clusters)
