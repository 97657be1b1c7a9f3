"""QCOW2 images: create and open, read the virtual disk, flush and close.

A `Qcow2Image` ties together the parts of an open image, each in its module:
the host file (`hostfile.HostFile`), the refcounts and allocation
(`refcounts.Refcounts`), the L1/L2 mapping (`mapping.ClusterMap`), compressed
clusters (`codec`) and the backing chain (`backing`).  Writes live in
`write.py`, the file-object view in `view.py`.

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
  cleared after everything is written (and fsynced when `sync`).  Opening a
  dirty image for writing first rebuilds its refcounts from the tables, as
  QEMU does.

References:
- QEMU, docs/interop/qcow2.txt (the format), block/qcow2.c (qcow2_do_open,
  qcow2_co_create), block/qcow2-cluster.c (copy-on-write).
- 9front, sys/src/cmd/disk/qcowfs.c (a minimal writer: append allocation,
  tables updated after the data).
- dissect.hypervisor, dissect/hypervisor/disk/qcow2.py (run-based reads).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from imagebuild.container.qcow2 import codec
from imagebuild.container.qcow2.backing import (
    MAX_CHAIN_DEPTH,
    FileId,
    chain_ids,
    fd_id,
    file_id,
    missing_backing,
    resolve_backing,
    sniff_format,
)
from imagebuild.container.qcow2.create import create_image
from imagebuild.container.qcow2.format import (
    COMPRESSION_ZSTD,
    DEFAULT_CLUSTER_SIZE,
    DEFAULT_REFCOUNT_ORDER,
    HEADER_V3,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    MAX_CLUSTER_BITS,
    size_to_clusters,
)
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.container.qcow2.hostfile import HostFile
from imagebuild.container.qcow2.mapping import ClusterMap, Extent
from imagebuild.container.qcow2.read import read_guest
from imagebuild.container.qcow2.refcounts import Refcounts
from imagebuild.container.qcow2.view import DataView
from imagebuild.container.qcow2.write import write_compressed, write_guest
from imagebuild.disk.device import RawFile
from imagebuild.errors import (
    ImageFormatError,
    InputError,
    ReadOnlyImageError,
    UnsupportedImageError,
)

if TYPE_CHECKING:
    from imagebuild.container.qcow2.metadata import Snapshot

__all__ = ["Qcow2Image", "open_image", "refuse_output_in_chain"]


class Qcow2Image:
    """A QCOW2 image file.  Use `create()` or `open()`; close() (or `with`) when done.

    Public parts: `path`, `header` (`Qcow2Header`), `size` (virtual bytes),
    `cluster_size`/`cluster_bits`, `version`, `file_size`, `writable`, `sync`,
    `skip_unchanged`, `snapshots`, `backing` (the open backing image or None),
    `backing_path`, `data` (a `DataView`), and the parts `host`, `refcounts`,
    `map` used by the writer and the checker.
    """

    format = "qcow2"

    def __init__(self, host: HostFile, header: Qcow2Header, *, writable: bool, sync: bool,
                 chain: frozenset[FileId]) -> None:
        self.path = host.path
        self.header = header
        self.writable = writable
        self.sync = sync
        self.skip_unchanged = False
        self.host = host
        self.refcounts = Refcounts(host, header)
        self.map = ClusterMap(host, header, self.refcounts)
        self._closed = False
        self.cluster_bits = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self.cache_limit = max(16, (32 << 20) // self.cluster_size)  # cached tables
        self.compressed_cache: tuple[int, bytes] | None = None
        self.compress_cursor = 0  # byte offset where the next compressed cluster may go
        self.snapshots: list[Snapshot] = []
        self.backing: Qcow2Image | RawFile | None = None
        self.backing_path: str | None = None
        self.chain = chain
        self.data = DataView(self)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False, sync: bool = True,
             rebuild: bool = True, backing: bool = True,
             _chain: frozenset[FileId] = frozenset()) -> Qcow2Image:
        """Open an existing image (and its backing chain, read-only).

        Opening a dirty image for writing rebuilds its refcounts first, unless
        `rebuild` is False (check(repair=...) does that itself).  With
        `backing=False` the chain is left closed (`.backing` stays None): for
        reading the header of an overlay whose backing file is missing, as
        `qemu-img info` does; guest reads then see zeros where the chain would
        answer.  Raises BackingFileMissing (naming the overlay),
        OSError, ImageFormatError (a malformed header or table),
        UnsupportedImageError (features we do not implement; writing to an
        image marked corrupt or holding snapshots).
        """
        name = os.fspath(path)
        fd = os.open(name, os.O_RDWR if writable else os.O_RDONLY)
        try:
            host = HostFile(name, fd)
            first = host.pread(1 << MAX_CLUSTER_BITS, 0)
            header = Qcow2Header.unpack(first, name, host.size)
            image = cls(host, header, writable=writable, sync=sync,
                        chain=_chain | {fd_id(fd)})
        except BaseException:
            os.close(fd)
            raise
        try:
            image._load(rebuild, backing)
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

        `size` (bytes) defaults to the backing file's size; like qemu-img, it is
        rounded up to a multiple of 512.  A relative `backing_file` is stored as
        given and resolved against the new image's directory.  Raises
        UnsupportedImageError for a cluster size outside 512 B..2 MiB (or not a
        power of two) or a size needing more than QEMU's 32 MiB of L1 table,
        OutOfRangeError for a negative size, ImageBuildError without any size.
        """
        return create_image(cls, path, size, cluster_size=cluster_size,
                            backing_file=backing_file, backing_format=backing_format,
                            sync=sync, refcount_order=refcount_order,
                            open_backing=lambda name, fmt: open_image(name, format=fmt))

    def _load(self, rebuild: bool, backing: bool) -> None:
        header = self.header
        name = self.path
        self.map.load()
        self.refcounts.load()
        if header.nb_snapshots:
            from imagebuild.container.qcow2.metadata import parse_snapshots

            most = header.nb_snapshots * (64 + 2 * 65535 + 1024)
            table = self.host.pread(min(most, self.host.size - header.snapshots_offset),
                                    header.snapshots_offset)
            self.snapshots, _ = parse_snapshots(table, header.nb_snapshots, name)
        if header.backing_file and backing:
            self._open_backing(header.backing_file)
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
            from imagebuild.container.qcow2.references import rebuild_refcounts

            rebuild_refcounts(self)
        self.refcounts.end = max(size_to_clusters(self.host.size, self.cluster_bits),
                                 self.refcounts.last_referenced() + 1)
        if header.version >= 3:
            if header.autoclear_features:
                # Autoclear features (bitmaps) become stale once we write: drop them first.
                header.autoclear_features = 0
                self.host.write(HEADER_V3.pack_field("autoclear_features", 0),
                                HEADER_V3.offset("autoclear_features"))
            self._set_dirty(True)

    def _open_backing(self, backing_name: str) -> None:
        name = self.path
        resolved = resolve_backing(name, backing_name)
        found = file_id(resolved)
        if found is None:
            raise missing_backing(name, backing_name, resolved)
        if found in self.chain:
            raise ImageFormatError(f"{name}: backing file {backing_name!r} forms a loop")
        if len(self.chain) > MAX_CHAIN_DEPTH:
            raise UnsupportedImageError(f"{name}: backing chain deeper than 32 images")
        self.backing_path = resolved
        self.backing = open_image(resolved, format=self.header.backing_format,
                                  _chain=self.chain)

    # -- properties ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The virtual disk's size in bytes."""
        return self.header.size

    @property
    def version(self) -> int:
        """The header version, 2 or 3."""
        return self.header.version

    @property
    def file_size(self) -> int:
        """The host file's size in bytes."""
        return self.host.size

    def fileno(self) -> int:
        """The image file's descriptor."""
        return self.host.fd

    @property
    def storage(self) -> DataView:
        """The virtual disk as Storage (`disk.device.Storage`): the same as `data`."""
        return self.data

    def info(self) -> dict[str, Any]:
        """A summary of the header (snake_case keys; tools.info() gives qemu-img's)."""
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
            "file_size": self.host.size,
        }

    # -- reading ---------------------------------------------------------------------------
    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Runs of guest bytes of one kind (NORMAL runs are contiguous on the host)."""
        if length is None:
            length = self.size - offset
        return self.map.extents(offset, min(offset + length, self.size))

    def l2_entry(self, guest_cluster: int) -> int:
        """The raw L2 entry of `guest_cluster` (0: unallocated)."""
        return self.map.l2_entry(guest_cluster)

    def refcount(self, host_cluster: int) -> int:
        """The stored refcount of host cluster `host_cluster`."""
        return self.refcounts.refcount(host_cluster)

    def pread(self, size: int, offset: int) -> bytes:
        """`size` guest bytes at `offset` (OutOfRangeError past the virtual size)."""
        buf = bytearray(size)
        self.readinto(memoryview(buf), offset)
        return bytes(buf)

    def readinto(self, buf: memoryview, offset: int) -> int:
        """Fill buf with guest bytes from offset (OutOfRangeError past the virtual size)."""
        return read_guest(self, buf, offset)

    # -- writing (see write.py) ------------------------------------------------------------
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int, *,
               skip_unchanged: bool | None = None) -> int:
        """Write guest bytes; all-zero (or, with skip_unchanged, unchanged) clusters that
        need no allocation are left alone.  Raises ReadOnlyImageError, OutOfRangeError."""
        return write_guest(self, memoryview(data).cast("B"), offset,
                           self.skip_unchanged if skip_unchanged is None else skip_unchanged)

    def write_compressed(self, guest_cluster: int, data: bytes) -> None:
        """Store one whole guest cluster compressed (deflate), as `qemu-img convert -c` does.

        For building fresh images: the cluster must be unallocated
        (ImageBuildError otherwise).  Data that does not shrink is stored
        uncompressed.
        """
        packed = codec.deflate_cluster(data, self.cluster_size)
        write_compressed(self, guest_cluster, data, packed)

    def require_writable(self) -> None:
        """Raise ReadOnlyImageError unless open for writing (ValueError when closed)."""
        self.require_open()
        if not self.writable:
            raise ReadOnlyImageError(f"{self.path}: image is open read-only")

    # -- flushing --------------------------------------------------------------------------
    def maybe_trim_cache(self) -> None:
        """Write metadata back and drop cached tables once more than cache_limit are held."""
        if self.map.cached_tables + self.refcounts.cached_blocks <= self.cache_limit:
            return
        self._write_metadata()
        self.map.drop_cache()
        self.refcounts.drop_cache()

    def _write_metadata(self) -> None:
        """Write back dirty metadata in crash-safe order (see the module docstring)."""
        self.refcounts.persist()
        self.map.write_back()
        self.refcounts.apply_frees()
        if self.refcounts.end:
            # Clusters allocated but never written (an all-zero L1 table): keep them
            # inside the file so every table lies within it.
            self.host.extend_to(self.refcounts.end * self.cluster_size)

    def _set_dirty(self, dirty: bool) -> None:
        if self.header.version < 3:
            return
        features = self.header.incompatible_features
        features = features | INCOMPAT_DIRTY if dirty else features & ~INCOMPAT_DIRTY
        self.header.incompatible_features = features
        self.host.write(HEADER_V3.pack_field("incompatible_features", features),
                        HEADER_V3.offset("incompatible_features"))
        if self.sync:
            self.host.fsync()

    def flush(self) -> None:
        """Write all cached metadata (the image stays marked dirty while open)."""
        self.require_open()
        if self.writable:
            self._write_metadata()
            if self.sync:
                self.host.fsync()

    def close(self) -> None:
        """Flush, mark the image clean and close it (and its backing chain)."""
        if self._closed:
            return
        try:
            if self.writable:
                self._write_metadata()
                if self.sync:
                    self.host.fsync()
                self._set_dirty(False)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close without writing anything more (after an error, or from close())."""
        self._closed = True
        self.host.close()
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def require_open(self) -> None:
        """Raise ValueError once the image is closed."""
        if self._closed:
            raise ValueError(f"{self.path}: image is closed")

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_output_in_chain(output: str | os.PathLike[str],
                           base: str | os.PathLike[str]) -> None:
    """Raise InputError when `output` is the file `base` or any file in its backing chain.

    Files are compared by device and inode, so another name (a symlink, a hard
    link, `../dir/x`) for the same file is caught too.  Writing such an output
    (customize A -> B, then B -> A) would destroy what the new image reads.
    Does nothing when `output` does not exist yet.
    """
    out = file_id(output)
    if out is None:
        return
    with open_image(base) as image:
        ids = chain_ids(image)
    if out in ids:
        raise InputError(
            f"{os.fspath(output)}: is {os.fspath(base)!r} or a file in its backing chain; "
            f"writing it would destroy data the new image reads through that chain"
        )


def open_image(path: str | os.PathLike[str], *, writable: bool = False,
               format: str | None = None, _chain: frozenset[FileId] = frozenset(),
               ) -> Qcow2Image | RawFile:
    """Open a disk image, qcow2 or raw: the one opener of every verb and reader.

    `format` None sniffs the QCOW magic.  Both results have `.format`
    ("qcow2"/"raw"), `.size`, `.pread`, `.pwrite`, `.storage` (the virtual
    disk as `disk.device.Storage`), `.close()` and work as context managers.
    Raises OSError, UnsupportedImageError for an unknown `format`, and what
    `Qcow2Image.open` raises.
    """
    name = os.fspath(path)
    fmt = format or sniff_format(name)
    if fmt == "qcow2":
        return Qcow2Image.open(name, writable=writable, _chain=_chain)
    if fmt == "raw":
        return RawFile(name, writable=writable)
    raise UnsupportedImageError(f"{name}: image format {fmt!r} (known: qcow2, raw)")
