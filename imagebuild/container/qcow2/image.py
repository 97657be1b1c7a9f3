"""QCOW2 images: create, open, read and write the virtual disk, overlays.

A `Qcow2Image` is the container; `image.data` is the virtual disk as a
seekable file object (and a `blockdev.Storage`).  What the guest sees is
read through the L1/L2 tables (zeros or the backing file where nothing is
allocated); writes allocate host clusters at the end of the file.

Design (see docs/qcow2.md for the guarantees):
- Allocation is append-only: new clusters (data, L2 tables, refcount blocks,
  a grown refcount table) are taken from the end of the file, so the
  clusters of one large write are contiguous and go out in one pwritev.
  Clusters freed while open are not reused in the same session.
- L1, L2 tables and refcount blocks are cached in memory and written back on
  flush()/close() (or when the cache grows large), in the order data ->
  refcount blocks -> refcount table -> header -> L2 tables -> L1 table ->
  refcount decrements.  So whatever prefix of those writes reaches the file,
  every cluster a table references is already refcounted: a killed process
  leaves at most leaked clusters.
- While open for writing, a version 3 image carries the dirty bit; it is
  cleared after everything is written and fsynced.  Opening a dirty image for
  writing first rebuilds its refcounts from the tables, as QEMU does.

References:
- QEMU, docs/interop/qcow2.txt (the format), block/qcow2-cluster.c and
  block/qcow2-refcount.c (compressed descriptors, copy-on-write, check).
- 9front, sys/src/cmd/disk/qcowfs.c (a minimal writer: append allocation,
  tables updated after the data).
- dissect.hypervisor, dissect/hypervisor/disk/qcow2.py (run-based reads).
"""

from __future__ import annotations

import io
import os
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from imagebuild.container.qcow2.format import (
    AUTOCLEAR_FEATURES_OFFSET,
    COMPRESSION_ZSTD,
    DEFAULT_CLUSTER_SIZE,
    DEFAULT_REFCOUNT_ORDER,
    EXT_BACKING_FORMAT,
    FEATURES_FIELD,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    INCOMPATIBLE_FEATURES_OFFSET,
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    MAGIC,
    MAX_BACKING_FILE_NAME,
    MAX_CLUSTER_BITS,
    MAX_L1_BYTES,
    MIN_CLUSTER_BITS,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    REFCOUNT_TABLE_FIELDS,
    REFCOUNT_TABLE_FIELDS_OFFSET,
    REFT_OFFSET_MASK,
    SECTOR,
    TABLE_ENTRY_SIZE,
    HeaderExtension,
    Qcow2Header,
    Snapshot,
    align_up,
    decode_refcount_block,
    decode_table,
    encode_refcount_block,
    encode_table,
    feature_table_extension,
    l1_size_for,
    l2_entries,
    make_compressed,
    new_refcount_block,
    parse_compressed,
    parse_snapshots,
    refcount_block_entries,
    size_to_clusters,
)
from imagebuild.disk.device import RawFile
from imagebuild.errors import (
    ImageBuildError,
    ImageFormatError,
    OutOfRangeError,
    ReadOnlyImageError,
    UnsupportedImageError,
)

IOV_MAX = 1024
_QUICK = 16  # bytes looked at before a full all-zero comparison


class Storage(Protocol):
    @property
    def size(self) -> int: ...

    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int: ...

    def close(self) -> None: ...


class ClusterKind(Enum):
    """What a guest cluster's L2 entry says about it."""

    UNALLOCATED = "unallocated"  # read from the backing file, or zeros
    ZERO = "zero"  # reads as zeros (v3 zero flag), maybe with a preallocated host cluster
    NORMAL = "normal"  # data at a host cluster
    COMPRESSED = "compressed"  # compressed data at a host byte offset


@dataclass(frozen=True)
class Extent:
    """A run of guest bytes with one kind; `host` is the host offset of NORMAL runs."""

    kind: ClusterKind
    start: int
    length: int
    host: int = 0
    entry: int = 0  # the L2 entry, for COMPRESSED runs (always one cluster)


_zero_cache: dict[int, bytes] = {}


def zeros(n: int) -> bytes:
    z = _zero_cache.get(n)
    if z is None:
        z = bytes(n)
        if n <= 1 << 21:
            _zero_cache[n] = z
    return z


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero; rejects typical data after looking at a few bytes."""
    n = len(buf)
    head = bytes(buf[:_QUICK])
    if head != zeros(len(head)):
        return False
    if n <= _QUICK:
        return True
    body = buf if isinstance(buf, bytes) else bytes(buf)
    return body == zeros(n)


def classify(entry: int, version: int) -> ClusterKind:
    if entry & OFLAG_COMPRESSED:
        return ClusterKind.COMPRESSED
    if version >= 3 and entry & OFLAG_ZERO:
        return ClusterKind.ZERO
    if entry & L2E_OFFSET_MASK:
        return ClusterKind.NORMAL
    return ClusterKind.UNALLOCATED


def _resolve_backing(image_path: str, name: str) -> str:
    """A backing file name is relative to the directory of the image that names it."""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(os.path.abspath(image_path)), name)


class Qcow2Image:
    """A QCOW2 image file.  Use `create()` or `open()`; close() (or `with`) when done."""

    def __init__(self, path: str, fd: int, header: Qcow2Header, *, writable: bool,
                 file_size: int, sync: bool, chain: frozenset[str]) -> None:
        self.path = path
        self.header = header
        self.writable = writable
        self.sync = sync
        self.skip_unchanged = False
        self._fd = fd
        self._file_size = file_size
        self._closed = False
        bits = header.cluster_bits
        self.cluster_bits = bits
        self.cluster_size = 1 << bits
        self._l2_entries = l2_entries(bits)
        self._l2_shift = bits - 3
        self._rb_entries = refcount_block_entries(bits, header.refcount_order)
        self._max_refcount = (1 << (1 << header.refcount_order)) - 1
        self._l1 = array("Q")
        self._l1_dirty: set[int] = set()
        self._l2_cache: dict[int, array[int]] = {}
        self._l2_dirty: set[int] = set()
        self._rt = array("Q")
        self._rt_capacity = 0
        self._rt_dirty = False
        self._rb_cache: dict[int, array[int]] = {}
        self._rb_dirty: set[int] = set()
        self._pending_free: list[tuple[int, int]] = []
        self._next_free = 0
        self._cache_limit = max(16, (32 << 20) // self.cluster_size)
        self._compressed_cache: tuple[int, bytes] | None = None
        self._compress_cursor = 0  # byte offset where the next compressed cluster may go
        self.snapshots: list[Snapshot] = []
        self.backing: Storage | None = None
        self.backing_path: str | None = None
        self._chain = chain
        self.data = DataView(self)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False, sync: bool = True,
             rebuild: bool = True, _chain: frozenset[str] = frozenset()) -> Qcow2Image:
        """Open an existing image (and its backing chain, read-only).

        Opening a dirty image for writing rebuilds its refcounts first, unless
        `rebuild` is False (check(repair=...) does that itself).
        """
        name = os.fspath(path)
        fd = os.open(name, os.O_RDWR if writable else os.O_RDONLY)
        try:
            file_size = os.fstat(fd).st_size
            first = os.pread(fd, 1 << MAX_CLUSTER_BITS, 0)
            header = Qcow2Header.unpack(first, name, file_size)
            image = cls(name, fd, header, writable=writable, file_size=file_size, sync=sync,
                        chain=_chain | {os.path.realpath(name)})
        except BaseException:
            os.close(fd)
            raise
        try:
            image._load(rebuild)
        except BaseException:
            image._abandon()
            raise
        return image

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int | None = None, *,
               cluster_size: int = DEFAULT_CLUSTER_SIZE,
               backing_file: str | os.PathLike[str] | None = None,
               backing_format: str | None = None, sync: bool = True,
               refcount_order: int = DEFAULT_REFCOUNT_ORDER) -> Qcow2Image:
        """Create (or truncate) an image and return it open for writing.

        `size` defaults to the backing file's size; like qemu-img, it is rounded
        up to a multiple of 512.  A relative `backing_file`
        is stored as given and resolved against the new image's directory.
        """
        name = os.fspath(path)
        bits = cluster_size.bit_length() - 1
        if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            raise UnsupportedImageError(
                f"{name}: cluster size {cluster_size} (must be a power of two, 512 B..2 MiB)"
            )
        header = Qcow2Header(version=3, cluster_bits=bits, refcount_order=refcount_order,
                             extensions=[feature_table_extension()])
        backing: Storage | None = None
        if backing_file is not None:
            backing_name = os.fspath(backing_file)
            if len(backing_name.encode()) > MAX_BACKING_FILE_NAME:
                raise UnsupportedImageError(f"{name}: backing file name longer than 1023 bytes")
            resolved = _resolve_backing(name, backing_name)
            backing = open_image(resolved, format=backing_format)
            if backing_format is None:
                backing_format = "qcow2" if isinstance(backing, Qcow2Image) else "raw"
            if size is None:
                size = backing.size
            header.backing_file = backing_name
            header.extensions.insert(
                0, HeaderExtension(EXT_BACKING_FORMAT, backing_format.encode())
            )
        if size is None:
            raise ImageBuildError(f"{name}: no size given and no backing file to take it from")
        if size < 0:
            raise OutOfRangeError(f"{name}: virtual size {size} is negative")
        header.size = align_up(size, SECTOR)  # qemu-img rounds sizes up to whole sectors too
        header.l1_size = l1_size_for(size, bits)
        if header.l1_size * TABLE_ENTRY_SIZE > MAX_L1_BYTES:
            if backing is not None:
                backing.close()
            raise UnsupportedImageError(
                f"{name}: virtual size {size} needs an L1 table of {header.l1_size * 8} bytes "
                f"with {cluster_size}-byte clusters (QEMU's limit is 32 MiB); use larger clusters"
            )
        header.incompatible_features = INCOMPAT_DIRTY
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        image = cls(name, fd, header, writable=True, file_size=0, sync=sync,
                    chain=frozenset({os.path.realpath(name)}))
        image.backing = backing
        image.backing_path = _resolve_backing(name, header.backing_file) \
            if header.backing_file else None
        try:
            image._lay_out_new()
        except BaseException:
            image._abandon()
            raise
        return image

    def _lay_out_new(self) -> None:
        """Cluster 0 header, then refcount table, refcount block(s), L1 table (QEMU's order)."""
        header = self.header
        cs = self.cluster_size
        l1_clusters = size_to_clusters(header.l1_size * TABLE_ENTRY_SIZE, self.cluster_bits)
        rt_clusters = 1
        while True:  # the table must cover the clusters it and the metadata occupy
            total = 1 + rt_clusters + l1_clusters
            blocks = -(-total // self._rb_entries) + 1
            needed = size_to_clusters((blocks + 1) * TABLE_ENTRY_SIZE, self.cluster_bits)
            if needed <= rt_clusters:
                break
            rt_clusters = needed
        self._rt_capacity = rt_clusters * cs // TABLE_ENTRY_SIZE
        self._rt = array("Q", bytes(self._rt_capacity * TABLE_ENTRY_SIZE))
        header.refcount_table_offset = cs
        header.refcount_table_clusters = rt_clusters
        self._next_free = 1 + rt_clusters
        # header and table; this creates refcount block 0 right after the table
        self._update_refcount(0, 1 + rt_clusters, +1)
        self._rt_dirty = True
        if l1_clusters:
            header.l1_table_offset = self._allocate(l1_clusters) * cs
        self._l1 = array("Q", bytes(header.l1_size * TABLE_ENTRY_SIZE))
        self._write_all(header.pack().ljust(cs, b"\0"), 0)
        self._file_size = cs
        self.flush()

    def _load(self, rebuild: bool) -> None:
        header = self.header
        name = self.path
        cs = self.cluster_size
        self._l1 = decode_table(os.pread(self._fd, header.l1_size * TABLE_ENTRY_SIZE,
                                         header.l1_table_offset))
        self._rt = decode_table(os.pread(self._fd, header.refcount_table_clusters * cs,
                                         header.refcount_table_offset))
        self._rt_capacity = len(self._rt)
        if header.nb_snapshots:
            most = header.nb_snapshots * (64 + 2 * 65535 + 1024)
            table = os.pread(self._fd, min(most, self._file_size - header.snapshots_offset),
                             header.snapshots_offset)
            self.snapshots, _ = parse_snapshots(table, header.nb_snapshots, name)
        if header.backing_file:
            resolved = _resolve_backing(name, header.backing_file)
            if os.path.realpath(resolved) in self._chain:
                raise ImageFormatError(f"{name}: backing file {header.backing_file!r} forms a loop")
            if len(self._chain) > 32:
                raise UnsupportedImageError(f"{name}: backing chain deeper than 32 images")
            self.backing_path = resolved
            self.backing = open_image(resolved, format=header.backing_format, _chain=self._chain)
        if not self.writable:
            return
        if header.incompatible_features & INCOMPAT_CORRUPT:
            raise UnsupportedImageError(
                f"{name}: marked corrupt (incompatible bit 1); repair it before writing"
            )
        if header.nb_snapshots:
            raise UnsupportedImageError(
                f"{name}: has {header.nb_snapshots} internal snapshots; writing such images is "
                f"not supported"
            )
        if rebuild and header.version >= 3 and header.incompatible_features & INCOMPAT_DIRTY:
            from imagebuild.container.qcow2.check import rebuild_refcounts

            rebuild_refcounts(self)
        self._next_free = max(size_to_clusters(self._file_size, self.cluster_bits),
                              self._last_referenced_cluster() + 1)
        if header.version >= 3:
            if header.autoclear_features:
                # Autoclear features (bitmaps) become stale once we write: drop them first.
                header.autoclear_features = 0
                self._write_all(FEATURES_FIELD.pack(0), AUTOCLEAR_FEATURES_OFFSET)
            self._set_dirty(True)

    def _last_referenced_cluster(self) -> int:
        last = -1
        for rti in range(len(self._rt) - 1, -1, -1):
            if not self._rt[rti] & REFT_OFFSET_MASK:
                continue
            block = self._refblock(rti, create=False)
            if block is None:
                continue
            for i in range(len(block) - 1, -1, -1):
                if block[i]:
                    return rti * self._rb_entries + i
            last = max(last, (self._rt[rti] & REFT_OFFSET_MASK) >> self.cluster_bits)
        return last

    # -- properties and Storage ------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.header.size

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def file_size(self) -> int:
        return self._file_size

    def info(self) -> dict[str, Any]:
        """A summary of the header (snake_case keys; qcow2_tools.info() gives qemu-img's)."""
        h = self.header
        return {
            "version": h.version,
            "virtual_size": h.size,
            "cluster_size": self.cluster_size,
            "refcount_bits": 1 << h.refcount_order,
            "compression_type": "zstd" if h.compression_type == COMPRESSION_ZSTD else "zlib",
            "backing_file": h.backing_file,
            "backing_format": h.backing_format,
            "dirty": bool(h.incompatible_features & INCOMPAT_DIRTY),
            "corrupt": bool(h.incompatible_features & INCOMPAT_CORRUPT),
            "snapshots": h.nb_snapshots,
            "file_size": self._file_size,
        }

    def pread(self, size: int, offset: int) -> bytes:
        buf = bytearray(size)
        self.readinto(memoryview(buf), offset)
        return bytes(buf)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int, *,
               skip_unchanged: bool | None = None) -> int:
        """Write guest bytes; all-zero (or, with skip_unchanged, unchanged) clusters that
        need no allocation are left alone."""
        return self._write(memoryview(data).cast("B"), offset,
                           self.skip_unchanged if skip_unchanged is None else skip_unchanged)

    # -- low-level file access -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: image is closed")

    def _write_all(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)
        self._file_size = max(self._file_size, offset + len(view))

    def _write_vector(self, buffers: list[memoryview | bytes | bytearray], offset: int) -> None:
        for start in range(0, len(buffers), IOV_MAX):
            chunk = buffers[start : start + IOV_MAX]
            total = sum(len(b) for b in chunk)
            done = os.pwritev(self._fd, chunk, offset)
            if done < total:  # short write: finish the rest piecewise
                joined = b"".join(bytes(b) for b in chunk)
                self._write_all(memoryview(joined)[done:], offset + done)
            self._file_size = max(self._file_size, offset + total)
            offset += total

    def _read_host(self, buf: memoryview, offset: int) -> None:
        """Fill buf from the file; bytes past the end of file read as zeros."""
        done = 0
        while done < len(buf):
            n = os.preadv(self._fd, [buf[done:]], offset + done)
            if n <= 0:
                buf[done:] = zeros(len(buf) - done)
                return
            done += n

    def _read_meta(self, what: str, offset: int) -> bytes:
        cs = self.cluster_size
        if offset % cs or offset + cs > self._file_size or offset == 0:
            raise ImageFormatError(
                f"{self.path}: {what} offset {offset:#x} is not cluster aligned or lies outside "
                f"the file ({self._file_size} bytes)"
            )
        return os.pread(self._fd, cs, offset)

    # -- L1/L2 -----------------------------------------------------------------------------
    def _l2_table(self, l1i: int) -> array[int] | None:
        table = self._l2_cache.get(l1i)
        if table is not None:
            return table
        offset = self._l1[l1i] & L1E_OFFSET_MASK
        if not offset:
            return None
        table = decode_table(self._read_meta(f"L1 entry {l1i}: L2 table", offset))
        self._l2_cache[l1i] = table
        return table

    def l2_entry(self, guest_cluster: int) -> int:
        table = self._l2_table(guest_cluster >> self._l2_shift)
        if table is None:
            return 0
        return table[guest_cluster & (self._l2_entries - 1)]

    def _writable_l2(self, l1i: int) -> array[int]:
        """The L2 table for l1i, allocated (or copied, if shared) so that it may change."""
        entry = self._l1[l1i]
        table = self._l2_table(l1i)
        if table is None or not entry & OFLAG_COPIED:
            host = self._allocate(1)
            if table is None:
                table = array("Q", bytes(self.cluster_size))
                self._l2_cache[l1i] = table
            else:
                self._free_later((entry & L1E_OFFSET_MASK) >> self.cluster_bits, 1)
            self._l1[l1i] = (host << self.cluster_bits) | OFLAG_COPIED
            self._l1_dirty.add(l1i)
        self._l2_dirty.add(l1i)
        return table

    def _set_l2_entry(self, guest_cluster: int, value: int) -> None:
        table = self._writable_l2(guest_cluster >> self._l2_shift)
        table[guest_cluster & (self._l2_entries - 1)] = value

    # -- refcounts -------------------------------------------------------------------------
    def _refblock(self, rti: int, *, create: bool) -> array[int] | None:
        block = self._rb_cache.get(rti)
        if block is not None:
            return block
        offset = self._rt[rti] & REFT_OFFSET_MASK if rti < len(self._rt) else 0
        if offset:
            data = self._read_meta(f"refcount table entry {rti}: refcount block", offset)
            block = decode_refcount_block(data, self.header.refcount_order)
            self._rb_cache[rti] = block
            return block
        if not create:
            return None
        host = self._next_free
        self._next_free += 1
        while len(self._rt) <= rti:
            self._rt.append(0)
        self._rt[rti] = host << self.cluster_bits
        self._rt_dirty = True
        block = new_refcount_block(self.cluster_bits, self.header.refcount_order)
        self._rb_cache[rti] = block
        self._rb_dirty.add(rti)
        self._update_refcount(host, 1, +1)
        return block

    def refcount(self, host_cluster: int) -> int:
        rti, rbi = divmod(host_cluster, self._rb_entries)
        block = self._refblock(rti, create=False)
        return block[rbi] if block is not None else 0

    def _update_refcount(self, first: int, count: int, delta: int) -> None:
        cluster = first
        end = first + count
        while cluster < end:
            rti, rbi = divmod(cluster, self._rb_entries)
            block = self._refblock(rti, create=True)
            assert block is not None
            n = min(end - cluster, self._rb_entries - rbi)
            for i in range(rbi, rbi + n):
                value = block[i] + delta
                if not 0 <= value <= self._max_refcount:
                    raise ImageFormatError(
                        f"{self.path}: refcount of cluster {rti * self._rb_entries + i} would "
                        f"become {value} (refcount_bits {1 << self.header.refcount_order})"
                    )
                block[i] = value
            self._rb_dirty.add(rti)
            cluster += n

    def _allocate(self, count: int) -> int:
        """Take `count` contiguous clusters from the end of the file; returns the first."""
        first = self._next_free
        self._next_free += count
        self._update_refcount(first, count, +1)
        return first

    def _free_later(self, first: int, count: int) -> None:
        """Drop a reference once the tables no longer point there (after the next flush)."""
        self._pending_free.append((first, count))

    def _free_compressed(self, entry: int) -> None:
        coffset, length = parse_compressed(entry, self.cluster_bits)
        first = coffset >> self.cluster_bits
        last = (coffset + length - 1) >> self.cluster_bits
        self._free_later(first, last - first + 1)

    # -- reading ---------------------------------------------------------------------------
    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Runs of guest bytes of one kind (NORMAL runs are contiguous on the host)."""
        if length is None:
            length = self.size - offset
        end = min(offset + length, self.size)
        bits = self.cluster_bits
        cs = self.cluster_size
        version = self.header.version
        per_l2 = self._l2_entries
        normal = ClusterKind.NORMAL
        # the run being built: kind, guest start, host start (0: none)
        run_kind: ClusterKind | None = None
        run_start = run_host = 0
        pos = offset
        while pos < end:
            gc = pos >> bits
            l1i = gc >> self._l2_shift
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
                            f"{self.path}: L2 entry for guest cluster {gc}: host offset "
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

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Fill buf with guest bytes from offset (it must lie within the disk)."""
        self._check_open()
        n = len(buf)
        if offset < 0 or offset + n > self.size:
            raise OutOfRangeError(
                f"{self.path}: read of {n} bytes at offset {offset} runs past the end of the "
                f"virtual disk ({self.size} bytes)"
            )
        for ext in self.extents(offset, n):
            part = buf[ext.start - offset : ext.start - offset + ext.length]
            if ext.kind is ClusterKind.NORMAL:
                self._read_host(part, ext.host)
            elif ext.kind is ClusterKind.ZERO:
                part[:] = zeros(ext.length)
            elif ext.kind is ClusterKind.UNALLOCATED:
                self._read_backing(part, ext.start)
            else:
                data = self._decompress(ext.entry, ext.start >> self.cluster_bits)
                part[:] = data[ext.host : ext.host + ext.length]
        return n

    def _read_backing(self, part: memoryview, offset: int) -> None:
        backing = self.backing
        have = 0 if backing is None else max(0, min(len(part), backing.size - offset))
        if have and backing is not None:
            if isinstance(backing, Qcow2Image):
                backing.readinto(part[:have], offset)
            else:
                part[:have] = backing.pread(have, offset)
        if have < len(part):
            part[have:] = zeros(len(part) - have)

    def _decompress(self, entry: int, guest_cluster: int) -> bytes:
        cached = self._compressed_cache
        if cached is not None and cached[0] == entry:
            return cached[1]
        coffset, length = parse_compressed(entry, self.cluster_bits)
        raw = os.pread(self._fd, length, coffset)
        cs = self.cluster_size
        where = f"{self.path}: compressed cluster {guest_cluster} at host offset {coffset:#x}"
        try:
            if self.header.compression_type == COMPRESSION_ZSTD:
                data = _zstd_decompress(raw, cs, where)
            else:
                data = zlib.decompressobj(-15).decompress(raw, cs)
        except zlib.error as err:
            raise ImageFormatError(f"{where}: {err}") from None
        if len(data) != cs:
            raise ImageFormatError(f"{where}: decompresses to {len(data)} bytes, not {cs}")
        self._compressed_cache = (entry, data)
        return data

    def cluster_content(self, guest_cluster: int) -> bytes:
        """The cluster as the guest reads it (zeros past the virtual size)."""
        start = guest_cluster << self.cluster_bits
        have = min(self.cluster_size, self.size - start)
        buf = bytearray(self.cluster_size)
        self.readinto(memoryview(buf)[:have], start)
        return bytes(buf)

    def _backing_is_zero(self, guest_cluster: int) -> bool:
        if self.backing is None:
            return True
        start = guest_cluster << self.cluster_bits
        have = max(0, min(self.cluster_size, self.backing.size - start, self.size - start))
        if not have:
            return True
        buf = bytearray(have)
        self._read_backing(memoryview(buf), start)
        return is_zero(buf)

    # -- writing ---------------------------------------------------------------------------
    def _require_writable(self) -> None:
        self._check_open()
        if not self.writable:
            raise ReadOnlyImageError(f"{self.path}: image is open read-only")

    def _write(self, data: memoryview, offset: int, skip_unchanged: bool) -> int:
        self._require_writable()
        n = len(data)
        if offset < 0 or offset + n > self.size:
            raise OutOfRangeError(
                f"{self.path}: write of {n} bytes at offset {offset} runs past the end of the "
                f"virtual disk ({self.size} bytes)"
            )
        bits = self.cluster_bits
        cs = self.cluster_size
        version = self.header.version
        in_place: list[tuple[int, memoryview | bytes | bytearray]] = []
        fresh: list[tuple[int, memoryview | bytes | bytearray, int]] = []
        zeroed: list[tuple[int, int]] = []
        pos = offset
        end = offset + n
        while pos < end:
            gc = pos >> bits
            cstart = gc << bits
            a = pos - cstart
            b = min(end - cstart, cs)
            piece = data[pos - offset : pos - offset + b - a]
            pos = cstart + b
            entry = self.l2_entry(gc)
            kind = classify(entry, version)
            host = entry & L2E_OFFSET_MASK
            if kind is ClusterKind.NORMAL and entry & OFLAG_COPIED:
                if skip_unchanged and self._host_equals(piece, host + a):
                    continue
                in_place.append((host + a, piece))
                continue
            cluster_len = min(cs, self.size - cstart)
            current: bytes | None = None
            if a == 0 and b == cluster_len:
                content: memoryview | bytes | bytearray = piece
            else:
                current = self._current(gc, kind, entry)
                merged = bytearray(current)
                merged[a:b] = piece
                content = merged
            if is_zero(content):
                if kind is ClusterKind.ZERO or (
                        kind is ClusterKind.UNALLOCATED and self._backing_is_zero(gc)):
                    continue
                if version >= 3:
                    zeroed.append((gc, entry))
                    continue
            if skip_unchanged and kind is not ClusterKind.NORMAL:
                if current is None:
                    current = self._current(gc, kind, entry)
                if bytes(content) == current[: len(content)]:
                    continue
            if kind is ClusterKind.ZERO and host and entry & OFLAG_COPIED:
                # A preallocated zero cluster: write the whole cluster in place.
                full = content if len(content) == cs else bytes(content).ljust(cs, b"\0")
                in_place.append((host, full))
                self._set_l2_entry(gc, host | OFLAG_COPIED)
                continue
            fresh.append((gc, content, entry))
        self._write_in_place(in_place)
        self._write_fresh(fresh)
        for gc, entry in zeroed:
            self._set_l2_entry(gc, OFLAG_ZERO)
            self._release(entry)
        self._maybe_trim_cache()
        return n

    def _host_equals(self, piece: memoryview, host: int) -> bool:
        buf = bytearray(len(piece))
        self._read_host(memoryview(buf), host)
        return buf == piece

    def _current(self, gc: int, kind: ClusterKind, entry: int) -> bytes:
        cs = self.cluster_size
        if kind is ClusterKind.ZERO:
            return zeros(cs)
        if kind is ClusterKind.UNALLOCATED and self.backing is None:
            return zeros(cs)
        if kind is ClusterKind.COMPRESSED:
            return self._decompress(entry, gc)
        return self.cluster_content(gc)

    def _write_in_place(self, writes: list[tuple[int, memoryview | bytes | bytearray]]) -> None:
        i = 0
        while i < len(writes):
            start, first = writes[i]
            buffers = [first]
            next_host = start + len(first)
            i += 1
            while i < len(writes) and writes[i][0] == next_host:
                buffers.append(writes[i][1])
                next_host += len(writes[i][1])
                i += 1
            self._write_vector(buffers, start)

    def _write_fresh(self, fresh: list[tuple[int, memoryview | bytes | bytearray, int]]) -> None:
        """Allocate one host run per run of consecutive guest clusters, write it, map it."""
        bits = self.cluster_bits
        i = 0
        while i < len(fresh):
            j = i + 1
            while j < len(fresh) and fresh[j][0] == fresh[j - 1][0] + 1:
                j += 1
            run = fresh[i:j]
            for l1i in sorted({gc >> self._l2_shift for gc, _, _ in run}):
                self._writable_l2(l1i)  # tables first, so the data run stays contiguous
            host = self._allocate(len(run))
            self._write_vector([content for _, content, _ in run], host << bits)
            for k, (gc, _, old) in enumerate(run):
                self._set_l2_entry(gc, ((host + k) << bits) | OFLAG_COPIED)
                self._release(old)
            i = j

    def _release(self, old_entry: int) -> None:
        """Drop the reference an overwritten L2 entry held."""
        if old_entry & OFLAG_COMPRESSED:
            self._free_compressed(old_entry)
        elif old_entry & L2E_OFFSET_MASK:
            self._free_later((old_entry & L2E_OFFSET_MASK) >> self.cluster_bits, 1)

    def write_compressed(self, guest_cluster: int, data: bytes) -> None:
        """Store one whole guest cluster compressed (deflate), as `qemu-img convert -c` does.

        For building fresh images: the cluster must be unallocated.  Data that
        does not shrink is stored uncompressed.
        """
        self._require_writable()
        cs = self.cluster_size
        if self.l2_entry(guest_cluster):
            raise ImageBuildError(f"{self.path}: guest cluster {guest_cluster} is allocated")
        if self.header.compression_type == COMPRESSION_ZSTD:
            raise UnsupportedImageError(f"{self.path}: writing zstd-compressed clusters")
        packer = zlib.compressobj(6, zlib.DEFLATED, -12)
        packed = packer.compress(bytes(data).ljust(cs, b"\0")) + packer.flush()
        if len(packed) >= cs - 512:
            self._write(memoryview(data).cast("B"), guest_cluster << self.cluster_bits, False)
            return
        self._writable_l2(guest_cluster >> self._l2_shift)  # first: keeps the stream contiguous
        bits = self.cluster_bits
        cursor = self._compress_cursor
        if cursor & (cs - 1) and cursor >> bits == self._next_free - 1:
            # Continue in the partly used last cluster (QEMU's qcow2_alloc_bytes): it gains
            # one reference, and every further cluster the data spills into is allocated.
            offset = cursor
            self._update_refcount(offset >> bits, 1, +1)
            spill = ((offset + len(packed) - 1) >> bits) - (offset >> bits)
            if spill:
                self._allocate(spill)
        else:
            offset = self._allocate(size_to_clusters(len(packed), bits)) << bits
        self._write_all(packed, offset)
        self._set_l2_entry(guest_cluster, make_compressed(offset, len(packed), bits))
        self._compress_cursor = offset + len(packed)

    # -- flushing --------------------------------------------------------------------------
    def _maybe_trim_cache(self) -> None:
        if len(self._l2_cache) + len(self._rb_cache) <= self._cache_limit:
            return
        self._write_metadata()
        self._l2_cache.clear()
        self._rb_cache.clear()

    def _write_metadata(self) -> None:
        """Write back dirty metadata in crash-safe order (see the module docstring)."""
        self._persist_refcounts()
        cs = self.cluster_size
        for l1i in sorted(self._l2_dirty):
            offset = self._l1[l1i] & L1E_OFFSET_MASK
            self._write_all(encode_table(self._l2_cache[l1i]), offset)
        self._l2_dirty.clear()
        if self._l1_dirty:
            lo = min(self._l1_dirty) * TABLE_ENTRY_SIZE // 512 * 512
            hi = max(self._l1_dirty) * TABLE_ENTRY_SIZE // 512 * 512 + 512
            raw = encode_table(self._l1[lo // TABLE_ENTRY_SIZE : hi // TABLE_ENTRY_SIZE])
            self._write_all(raw, self.header.l1_table_offset + lo)
            self._l1_dirty.clear()
        while self._pending_free:
            pending, self._pending_free = self._pending_free, []
            for first, count in pending:
                self._update_refcount(first, count, -1)
            self._persist_refcounts()
        end = self._next_free * cs
        if self._file_size < end and self._next_free:
            # Clusters allocated but never written (an all-zero L1 table): keep them
            # inside the file so every table lies within it.
            os.ftruncate(self._fd, end)
            self._file_size = end

    def _persist_refcounts(self) -> None:
        while len(self._rt) > self._rt_capacity:
            self._grow_refcount_table()
        self._write_refblocks()
        if self._rt_dirty:
            self._write_all(encode_table(self._rt[: self._rt_capacity]),
                            self.header.refcount_table_offset)
            self._rt_dirty = False

    def _write_refblocks(self) -> None:
        order = self.header.refcount_order
        for rti in sorted(self._rb_dirty):
            offset = self._rt[rti] & REFT_OFFSET_MASK
            self._write_all(encode_refcount_block(self._rb_cache[rti], order), offset)
        self._rb_dirty.clear()

    def _grow_refcount_table(self) -> None:
        """Move the refcount table to a larger place at the end of the file."""
        cs = self.cluster_size
        per_cluster = cs // TABLE_ENTRY_SIZE
        old_offset = self.header.refcount_table_offset
        old_clusters = self.header.refcount_table_clusters
        needed = size_to_clusters(len(self._rt) * TABLE_ENTRY_SIZE, self.cluster_bits)
        clusters = needed + max(1, needed // 2)  # headroom, also for the table's own blocks
        first = self._allocate(clusters)
        capacity = clusters * per_cluster
        if len(self._rt) > capacity:  # the new table's own blocks did not fit: try again
            self._free_later(first, clusters)
            return
        while len(self._rt) < capacity:
            self._rt.append(0)
        self._write_refblocks()
        self._write_all(encode_table(self._rt), first * cs)
        self._rt_capacity = capacity
        self.header.refcount_table_offset = first * cs
        self.header.refcount_table_clusters = clusters
        self._write_all(REFCOUNT_TABLE_FIELDS.pack(first * cs, clusters),
                        REFCOUNT_TABLE_FIELDS_OFFSET)
        self._rt_dirty = False
        if old_clusters and old_offset:
            self._free_later(old_offset >> self.cluster_bits, old_clusters)

    def _set_dirty(self, dirty: bool) -> None:
        if self.header.version < 3:
            return
        features = self.header.incompatible_features
        features = features | INCOMPAT_DIRTY if dirty else features & ~INCOMPAT_DIRTY
        self.header.incompatible_features = features
        self._write_all(FEATURES_FIELD.pack(features), INCOMPATIBLE_FEATURES_OFFSET)
        if self.sync:
            os.fsync(self._fd)

    def flush(self) -> None:
        """Write all cached metadata (the image stays marked dirty while open)."""
        self._check_open()
        if self.writable:
            self._write_metadata()
            if self.sync:
                os.fsync(self._fd)

    def close(self) -> None:
        """Flush, mark the image clean and close it (and its backing chain)."""
        if self._closed:
            return
        try:
            if self.writable:
                self._write_metadata()
                if self.sync:
                    os.fsync(self._fd)
                self._set_dirty(False)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close without writing anything more (after an error, or from close())."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zstd_decompress(raw: bytes, cluster_size: int, where: str) -> bytes:
    """A zstd-compressed cluster: one frame, followed by padding or the next cluster."""
    try:
        import zstandard
    except ImportError:
        raise UnsupportedImageError(
            f"{where}: zstd compression needs the 'zstandard' package (pip install zstandard)"
        ) from None
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor().decompressobj()
        out += reader.decompress(raw)
    except zstandard.ZstdError as err:
        raise ImageFormatError(f"{where}: {err}") from None
    return bytes(out[:cluster_size])


class DataView(io.RawIOBase):
    """The virtual disk of a Qcow2Image as a seekable binary file (and a Storage)."""

    def __init__(self, image: Qcow2Image) -> None:
        super().__init__()
        self.image = image
        self._pos = 0

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def skip_unchanged(self) -> bool:
        return self.image.skip_unchanged

    @skip_unchanged.setter
    def skip_unchanged(self, value: bool) -> None:
        self.image.skip_unchanged = value

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self.image.writable

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OutOfRangeError(f"{self.image.path}: seek to negative offset {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        if n:
            self.image.readinto(view[:n], self._pos)
            self._pos += n
        return n

    def write(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self.image.pwrite(view, self._pos)
        self._pos += len(view)
        return len(view)

    def pread(self, size: int, offset: int) -> bytes:
        return self.image.pread(size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        return self.image.pwrite(data, offset)

    def flush(self) -> None:
        if not self.image.closed and self.image.writable:
            self.image.flush()

    def close(self) -> None:
        """Closing the view leaves the image open; close the image to finish it."""
        super().close()


def sniff_format(path: str | os.PathLike[str]) -> str:
    """'qcow2' if the file starts with the QCOW magic, else 'raw'."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == MAGIC else "raw"


def open_image(path: str | os.PathLike[str], *, writable: bool = False,
               format: str | None = None, _chain: frozenset[str] = frozenset(),
               ) -> Qcow2Image | RawFile:
    """Open a disk image as Storage (size, pread, pwrite, close), qcow2 or raw.

    `format` None sniffs the QCOW magic.  A qcow2 image comes back as a
    Qcow2Image (its `data` attribute is the file-object view).
    """
    name = os.fspath(path)
    fmt = format or sniff_format(name)
    if fmt == "qcow2":
        return Qcow2Image.open(name, writable=writable, _chain=_chain)
    if fmt == "raw":
        return RawFile(name, writable=writable)
    raise UnsupportedImageError(f"{name}: image format {fmt!r} (known: qcow2, raw)")
