"""Writing guest data into a QCOW2 image: copy-on-write, zero detection, compression.

`write_guest` splits a write into clusters and sorts each into one of three
lists: rewritten in place (a NORMAL cluster the image alone owns), freshly
allocated (everything else that holds data; one host run per run of
consecutive guest clusters, one pwritev each), or turned into a zero entry
(all zeros over backing data, version 3).  All-zero clusters the chain already
reads as zeros, and with `skip_unchanged` clusters equal to what the chain
returns, allocate nothing.  A partial write into an unallocated or compressed
cluster first merges the rest of the cluster from the chain.

References: QEMU, block/qcow2-cluster.c (qcow2_alloc_host_offset,
perform_cow, qcow2_alloc_compressed_cluster_offset), block/qcow2-refcount.c
(qcow2_alloc_bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagebuild.container.qcow2.format import (
    COMPRESSION_ZSTD,
    L2E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    make_compressed,
    size_to_clusters,
)
from imagebuild.container.qcow2.hostfile import is_zero, zeros
from imagebuild.container.qcow2.mapping import ClusterKind, classify
from imagebuild.container.qcow2.read import (
    backing_is_zero,
    cluster_content,
    decompress,
    require_span,
)
from imagebuild.errors import ImageBuildError, UnsupportedImageError

if TYPE_CHECKING:
    from imagebuild.container.qcow2.image import Qcow2Image

Buffer = memoryview | bytes | bytearray


def write_guest(image: Qcow2Image, data: memoryview, offset: int, skip_unchanged: bool) -> int:
    """Write `data` (bytes) at guest `offset`; returns len(data).

    Raises ReadOnlyImageError, OutOfRangeError past the virtual size.
    """
    image.require_writable()
    n = len(data)
    require_span(image, "write", offset, n)
    bits = image.cluster_bits
    cs = image.cluster_size
    version = image.header.version
    in_place: list[tuple[int, Buffer]] = []
    fresh: list[tuple[int, Buffer, int]] = []
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
        entry = image.map.l2_entry(gc)
        kind = classify(entry, version)
        host = entry & L2E_OFFSET_MASK
        if kind is ClusterKind.NORMAL and entry & OFLAG_COPIED:
            if skip_unchanged and _host_equals(image, piece, host + a):
                continue
            in_place.append((host + a, piece))
            continue
        cluster_len = min(cs, image.size - cstart)
        current: bytes | None = None
        if a == 0 and b == cluster_len:
            content: Buffer = piece
        else:
            current = _current(image, gc, kind, entry)
            merged = bytearray(current)
            merged[a:b] = piece
            content = merged
        if is_zero(content):
            if kind is ClusterKind.ZERO or (
                    kind is ClusterKind.UNALLOCATED and backing_is_zero(image, gc)):
                continue
            if version >= 3:
                zeroed.append((gc, entry))
                continue
        if skip_unchanged and kind is not ClusterKind.NORMAL:
            if current is None:
                current = _current(image, gc, kind, entry)
            if bytes(content) == current[: len(content)]:
                continue
        if kind is ClusterKind.ZERO and host and entry & OFLAG_COPIED:
            # A preallocated zero cluster: write the whole cluster in place.
            full = content if len(content) == cs else bytes(content).ljust(cs, b"\0")
            in_place.append((host, full))
            image.map.set_l2_entry(gc, host | OFLAG_COPIED)
            continue
        fresh.append((gc, content, entry))
    _write_in_place(image, in_place)
    _write_fresh(image, fresh)
    for gc, entry in zeroed:
        image.map.set_l2_entry(gc, OFLAG_ZERO)
        _release(image, entry)
    image.maybe_trim_cache()
    return n


def write_new_clusters(image: Qcow2Image, data: memoryview, offset: int) -> None:
    """`write_guest` for guest clusters never written before in an image without a backing
    file (the converter's case): non-zero clusters go out in runs, zero ones are skipped.

    `offset` must be cluster aligned.  The result is byte for byte what
    `write_guest` makes of the same call, without its per-cluster lookups.
    """
    image.require_writable()
    bits = image.cluster_bits
    cs = image.cluster_size
    if offset & (cs - 1) or offset + len(data) > image.size or image.backing is not None:
        raise ImageBuildError(f"{image.path}: write_new_clusters needs an aligned range "
                              f"inside the disk of an image without a backing file")
    fresh: list[tuple[int, Buffer, int]] = []
    first = offset >> bits
    for i, at in enumerate(range(0, len(data), cs)):
        piece = data[at : at + cs]
        if not is_zero(piece):
            fresh.append((first + i, piece, 0))
    _write_fresh(image, fresh)
    image.maybe_trim_cache()


def write_compressed(image: Qcow2Image, guest_cluster: int, data: bytes | memoryview,
                     packed: bytes | None) -> None:
    """Store guest cluster `guest_cluster` as `packed` (its deflated `data`, from
    `codec.deflate_cluster`), or `data` uncompressed when `packed` is None.

    The cluster must be unallocated (ImageBuildError).  Consecutive compressed
    clusters share host clusters, as qemu-img convert -c lays them out.
    """
    image.require_writable()
    cs = image.cluster_size
    if image.map.l2_entry(guest_cluster):
        raise ImageBuildError(f"{image.path}: guest cluster {guest_cluster} is allocated")
    if image.header.compression_type == COMPRESSION_ZSTD:
        raise UnsupportedImageError(f"{image.path}: writing zstd-compressed clusters")
    bits = image.cluster_bits
    if packed is None:
        write_guest(image, memoryview(data).cast("B"), guest_cluster << bits, False)
        return
    image.map.writable_l2(guest_cluster >> image.map.l2_shift)  # first: keeps data contiguous
    refcounts = image.refcounts
    cursor = image.compress_cursor
    if cursor & (cs - 1) and cursor >> bits == refcounts.end - 1:
        # Continue in the partly used last cluster (QEMU's qcow2_alloc_bytes): it gains
        # one reference, and every further cluster the data spills into is allocated.
        offset = cursor
        refcounts.adjust(offset >> bits, 1, +1)
        spill = ((offset + len(packed) - 1) >> bits) - (offset >> bits)
        if spill:
            refcounts.allocate(spill)
    else:
        offset = refcounts.allocate(size_to_clusters(len(packed), bits)) << bits
    image.host.write(packed, offset)
    image.map.set_l2_entry(guest_cluster, make_compressed(offset, len(packed), bits))
    image.compress_cursor = offset + len(packed)


def _host_equals(image: Qcow2Image, piece: memoryview, host: int) -> bool:
    buf = bytearray(len(piece))
    image.host.readinto(memoryview(buf), host)
    return buf == piece


def _current(image: Qcow2Image, gc: int, kind: ClusterKind, entry: int) -> bytes:
    """What guest cluster `gc` reads as now (for merging a partial write)."""
    cs = image.cluster_size
    if kind is ClusterKind.ZERO:
        return zeros(cs)
    if kind is ClusterKind.UNALLOCATED and image.backing is None:
        return zeros(cs)
    if kind is ClusterKind.COMPRESSED:
        return decompress(image, entry, gc)
    return cluster_content(image, gc)


def _write_in_place(image: Qcow2Image, writes: list[tuple[int, Buffer]]) -> None:
    """Rewrite host bytes; adjacent pieces go out in one pwritev."""
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
        image.host.writev(buffers, start)


def _write_fresh(image: Qcow2Image, fresh: list[tuple[int, Buffer, int]]) -> None:
    """Allocate one host run per run of consecutive guest clusters, write it, map it."""
    bits = image.cluster_bits
    i = 0
    while i < len(fresh):
        j = i + 1
        while j < len(fresh) and fresh[j][0] == fresh[j - 1][0] + 1:
            j += 1
        run = fresh[i:j]
        for l1i in sorted({gc >> image.map.l2_shift for gc, _, _ in run}):
            image.map.writable_l2(l1i)  # tables first, so the data run stays contiguous
        host = image.refcounts.allocate(len(run))
        image.host.writev([content for _, content, _ in run], host << bits)
        for k, (gc, _, old) in enumerate(run):
            image.map.set_l2_entry(gc, ((host + k) << bits) | OFLAG_COPIED)
            _release(image, old)
        i = j


def _release(image: Qcow2Image, old_entry: int) -> None:
    """Drop the reference an overwritten L2 entry held."""
    if old_entry & OFLAG_COMPRESSED:
        image.refcounts.free_compressed_later(old_entry)
    elif old_entry & L2E_OFFSET_MASK:
        image.refcounts.free_later((old_entry & L2E_OFFSET_MASK) >> image.cluster_bits, 1)
