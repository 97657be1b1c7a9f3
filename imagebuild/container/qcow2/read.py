"""Reading guest data from a QCOW2 image: runs of host data, zeros, backing, compressed.

`read_guest` plans a read as `ClusterMap.extents` runs: NORMAL runs are read
from the host file straight into the caller's buffer (one preadv each),
ZERO runs are zeros, UNALLOCATED runs come from the backing chain (zeros past
its end or without one), COMPRESSED clusters are inflated (the last one is
cached, so a cluster read piecewise is inflated once).

References: QEMU, block/qcow2.c (qcow2_co_preadv_part, qcow2_co_preadv_compressed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagebuild.container.qcow2 import codec
from imagebuild.container.qcow2.format import parse_compressed
from imagebuild.container.qcow2.hostfile import is_zero, zeros
from imagebuild.container.qcow2.mapping import ClusterKind
from imagebuild.disk.device import RawFile
from imagebuild.errors import OutOfRangeError

if TYPE_CHECKING:
    from imagebuild.container.qcow2.image import Qcow2Image


def require_span(image: Qcow2Image, verb: str, offset: int, n: int) -> None:
    """Raise OutOfRangeError unless bytes [offset, offset+n) lie inside the virtual disk.

    `verb` ("read", "write") names the request in the message.
    """
    if offset < 0 or offset + n > image.size:
        raise OutOfRangeError(
            f"{image.path}: {verb} of {n} bytes at offset {offset} runs past the end of the "
            f"virtual disk ({image.size} bytes)"
        )


def read_guest(image: Qcow2Image, buf: memoryview, offset: int) -> int:
    """Fill buf with guest bytes from offset (OutOfRangeError past the virtual size)."""
    image.require_open()
    n = len(buf)
    require_span(image, "read", offset, n)
    for ext in image.extents(offset, n):
        part = buf[ext.start - offset : ext.start - offset + ext.length]
        if ext.kind is ClusterKind.NORMAL:
            image.host.readinto(part, ext.host)
        elif ext.kind is ClusterKind.ZERO:
            part[:] = zeros(ext.length)
        elif ext.kind is ClusterKind.UNALLOCATED:
            read_backing(image, part, ext.start)
        else:
            data = decompress(image, ext.entry, ext.start >> image.cluster_bits)
            part[:] = data[ext.host : ext.host + ext.length]
    return n


def read_backing(image: Qcow2Image, part: memoryview, offset: int) -> None:
    """Fill `part` with the backing chain's bytes at guest `offset` (zeros past it)."""
    backing = image.backing
    have = 0 if backing is None else max(0, min(len(part), backing.size - offset))
    if have and backing is not None:
        if isinstance(backing, RawFile):
            part[:have] = backing.pread(have, offset)
        else:
            backing.readinto(part[:have], offset)
    if have < len(part):
        part[have:] = zeros(len(part) - have)


def decompress(image: Qcow2Image, entry: int, guest_cluster: int) -> bytes:
    """The cluster a compressed L2 `entry` of `guest_cluster` holds (one cached)."""
    cached = image.compressed_cache
    if cached is not None and cached[0] == entry:
        return cached[1]
    coffset, length = parse_compressed(entry, image.cluster_bits)
    raw = image.host.pread(length, coffset)
    where = f"{image.path}: compressed cluster {guest_cluster} at host offset {coffset:#x}"
    data = codec.inflate_cluster(raw, image.cluster_size, image.header.compression_type, where)
    image.compressed_cache = (entry, data)
    return data


def cluster_content(image: Qcow2Image, guest_cluster: int) -> bytes:
    """The cluster as the guest reads it (zeros past the virtual size)."""
    start = guest_cluster << image.cluster_bits
    have = min(image.cluster_size, image.size - start)
    buf = bytearray(image.cluster_size)
    read_guest(image, memoryview(buf)[:have], start)
    return bytes(buf)


def backing_is_zero(image: Qcow2Image, guest_cluster: int) -> bool:
    """True when the backing chain reads zeros for all of `guest_cluster`."""
    if image.backing is None:
        return True
    start = guest_cluster << image.cluster_bits
    have = max(0, min(image.cluster_size, image.backing.size - start, image.size - start))
    if not have:
        return True
    buf = bytearray(have)
    read_backing(image, memoryview(buf), start)
    return is_zero(buf)
