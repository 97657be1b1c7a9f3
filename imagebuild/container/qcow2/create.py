"""Creating a QCOW2 image: the header, refcount table, refcount block and L1 table.

The layout is QEMU's (qcow2_co_create): cluster 0 holds the header, its
extensions (backing format, feature name table) and the backing file name;
then come the refcount table, refcount block 0 and the L1 table.  The image is
version 3, 16-bit refcounts unless asked otherwise, and stays marked dirty
until closed.

References: QEMU, block/qcow2.c (qcow2_co_create, qcow2_update_header),
docs/interop/qcow2.txt ("Header", "Header extensions").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagebuild.container.qcow2.backing import (
    chain_ids,
    fd_id,
    file_id,
    missing_backing,
    resolve_backing,
)
from imagebuild.container.qcow2.format import (
    EXT_BACKING_FORMAT,
    FEATURE_TABLE_MIN_CLUSTER,
    INCOMPAT_DIRTY,
    MAX_BACKING_FILE_NAME,
    MAX_CLUSTER_BITS,
    MAX_L1_BYTES,
    MIN_CLUSTER_BITS,
    SECTOR,
    TABLE_ENTRY_SIZE,
    align_up,
    l1_size_for,
    size_to_clusters,
)
from imagebuild.container.qcow2.header import (
    HeaderExtension,
    Qcow2Header,
    feature_table_extension,
)
from imagebuild.container.qcow2.hostfile import HostFile
from imagebuild.disk.device import RawFile
from imagebuild.errors import (
    ImageBuildError,
    InputError,
    OutOfRangeError,
    UnsupportedImageError,
)

if TYPE_CHECKING:
    from imagebuild.container.qcow2.image import Qcow2Image


def create_image(cls: type[Qcow2Image], path: str | os.PathLike[str], size: int | None, *,
                 cluster_size: int, backing_file: str | os.PathLike[str] | None,
                 backing_format: str | None, sync: bool, refcount_order: int,
                 open_backing: Callable[[str, str | None], Qcow2Image | RawFile]) -> Qcow2Image:
    """`Qcow2Image.create` (see there for the arguments and errors); `open_backing(path,
    format)` opens the backing file (`image.open_image`)."""
    name = os.fspath(path)
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise UnsupportedImageError(
            f"{name}: cluster size {cluster_size} (must be a power of two, 512 B..2 MiB)"
        )
    # QEMU leaves the optional feature name table out of clusters of 4 KiB and less:
    # with 512-byte clusters it would leave 8 bytes for a backing file name.
    extensions = [feature_table_extension()] if cluster_size > FEATURE_TABLE_MIN_CLUSTER else []
    header = Qcow2Header(version=3, cluster_bits=bits, refcount_order=refcount_order,
                         extensions=extensions)
    backing: Qcow2Image | RawFile | None = None
    if backing_file is not None:
        backing_name = os.fspath(backing_file)
        if len(backing_name.encode()) > MAX_BACKING_FILE_NAME:
            raise UnsupportedImageError(f"{name}: backing file name longer than 1023 bytes")
        resolved = resolve_backing(name, backing_name)
        if file_id(resolved) is None:
            raise missing_backing(name, backing_name, resolved)
        backing = open_backing(resolved, backing_format)
        if backing_format is None:
            backing_format = backing.format
        out = file_id(name)
        if out is not None and out in chain_ids(backing):
            backing.close()
            raise InputError(
                f"{name}: is {backing_name!r} or a file in its backing chain; creating it "
                f"would destroy data the new image reads through that chain"
            )
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
    image = cls(HostFile(name, fd), header, writable=True, sync=sync,
                chain=frozenset({fd_id(fd)}))
    image.backing = backing
    image.backing_path = resolve_backing(name, header.backing_file) \
        if header.backing_file else None
    try:
        _lay_out_new(image)
    except BaseException:
        image._abandon()
        raise
    return image


def _lay_out_new(self: Qcow2Image) -> None:
    """Cluster 0 header, then refcount table, refcount block(s), L1 table (QEMU's order)."""
    header = self.header
    cs = self.cluster_size
    rb_entries = self.refcounts.block_entries
    l1_clusters = size_to_clusters(header.l1_size * TABLE_ENTRY_SIZE, self.cluster_bits)
    rt_clusters = 1
    while True:  # the table must cover the clusters it and the metadata occupy
        total = 1 + rt_clusters + l1_clusters
        blocks = -(-total // rb_entries) + 1
        needed = size_to_clusters((blocks + 1) * TABLE_ENTRY_SIZE, self.cluster_bits)
        if needed <= rt_clusters:
            break
        rt_clusters = needed
    self.refcounts.lay_out_new(rt_clusters)
    if l1_clusters:
        header.l1_table_offset = self.refcounts.allocate(l1_clusters) * cs
    self.map.lay_out_new()
    self.host.write(header.pack().ljust(cs, b"\0"), 0)
    self.flush()
