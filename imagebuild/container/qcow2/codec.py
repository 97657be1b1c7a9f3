"""Compressed clusters: deflate (QEMU's default) and zstd (read only).

A compressed cluster is stored as raw deflate (no zlib header, 4 KiB window,
level 6, as qemu-img convert -c writes it) or as one zstd frame, at a host
byte offset given by the L2 descriptor (`format.parse_compressed`).

Both zlib and zstandard release the GIL while they work, so `deflate_cluster`
may run in threads.

References: QEMU, block/qcow2-threads.c (qcow2_compress, qcow2_zlib_compress,
qcow2_zstd_decompress); docs/interop/qcow2.txt ("Compressed Clusters
Descriptor").
"""

from __future__ import annotations

import zlib

from imagebuild.container.qcow2.format import COMPRESSION_ZSTD, SECTOR
from imagebuild.errors import ImageFormatError, UnsupportedImageError


def deflate_cluster(data: bytes | bytearray | memoryview, cluster_size: int) -> bytes | None:
    """`data` (zero-padded to `cluster_size`) as raw deflate, or None when that would not
    save at least one sector (the cluster is then stored uncompressed)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -12)
    packed = packer.compress(bytes(data).ljust(cluster_size, b"\0")) + packer.flush()
    if len(packed) >= cluster_size - SECTOR:
        return None
    return packed


def inflate_cluster(raw: bytes, cluster_size: int, compression_type: int, where: str) -> bytes:
    """The `cluster_size` bytes of a compressed cluster whose stored bytes start `raw`.

    `where` names the cluster in messages.  Raises ImageFormatError for data
    that does not decompress to exactly one cluster, UnsupportedImageError for
    zstd without the `zstandard` package.
    """
    try:
        if compression_type == COMPRESSION_ZSTD:
            data = _zstd_decompress(raw, cluster_size, where)
        else:
            data = zlib.decompressobj(-15).decompress(raw, cluster_size)
    except zlib.error as err:
        raise ImageFormatError(f"{where}: {err}") from None
    if len(data) != cluster_size:
        raise ImageFormatError(f"{where}: decompresses to {len(data)} bytes, not {cluster_size}")
    return data


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
