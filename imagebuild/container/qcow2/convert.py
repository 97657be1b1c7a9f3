"""`qemu-img convert [-c] -O qcow2|raw`: a standalone copy of an image's guest data.

Only the ranges the source (and its backing chain) maps as data are read,
widened to whole clusters and merged where they share one, then cut into
pieces of at most CHUNK bytes.  Each piece is one allocation step: its
non-zero clusters are allocated in runs of consecutive guest clusters (the
L2 tables a run needs first), so every path below lays the file out alike.

- A raw source (clusters of at least KERNEL_COPY_MIN_BLOCK) is copied inside
  the kernel (`convert_io.KernelCopy`): clusters are told apart from zeros by
  their first bytes, and each run goes from the source file to its host offset
  with copy_file_range; nothing passes through Python buffers.
- Any other source is read by a thread (`convert_io.ReadAhead`) one batch
  ahead of the writer, so reading, inflating and writing overlap.
- With `-c`, clusters are deflated on a thread pool (zlib releases the GIL),
  in tasks of DEFLATE_BATCH bytes, and written in guest order: the output is
  byte for byte what one thread writes.

Durability is qemu-img's default (`-t unsafe`): nothing is fsynced; the
output is renamed into place once complete, and the kernel writes it back in
its own time.  `sync=True` (`-t writeback`, `--sync`) fsyncs it before the
rename.

References: QEMU, qemu-img.c (img_convert, convert_do_copy,
convert_co_do_copy: its -m coroutines and -W out-of-order writes are what the
threads here stand for), block/qcow2.c (qcow2_co_pwritev_compressed).
"""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from imagebuild.container.qcow2 import codec
from imagebuild.container.qcow2.convert_io import (
    CHUNK,
    KernelCopy,
    Piece,
    ReadAhead,
    ReadInto,
    nonzero_blocks,
)
from imagebuild.container.qcow2.format import DEFAULT_CLUSTER_SIZE, OFLAG_COPIED
from imagebuild.container.qcow2.hostfile import is_zero
from imagebuild.container.qcow2.image import Qcow2Image, open_image, refuse_output_in_chain
from imagebuild.container.qcow2.tools import map_image
from imagebuild.container.qcow2.write import write_compressed, write_new_clusters
from imagebuild.disk.device import RawFile
from imagebuild.errors import ImageBuildError, UnsupportedImageError

if TYPE_CHECKING:
    from concurrent.futures import Future

RAW_BLOCK = 65536  # raw output: all-zero blocks of this size stay holes
DEFLATE_BATCH = 65536  # bytes of clusters per deflate task (at least one cluster)
QCOW2_MAX_THREADS = 4  # QEMU's qcow2 compresses on up to 4 threads; we use at least as many
KERNEL_COPY = True  # copy raw sources with copy_file_range (False: through buffers)
# below this cluster size, one pread per cluster to find the zero ones costs more than
# reading the whole piece: smaller clusters go through buffers
KERNEL_COPY_MIN_BLOCK = 16384

Source = Qcow2Image | RawFile
Deflated = list[tuple[int, memoryview, bytes | None]]  # (guest cluster, data, packed)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
            output_format: str = "qcow2", compress: bool = False,
            cluster_size: int = DEFAULT_CLUSTER_SIZE, sync: bool = False,
            workers: int | None = None) -> None:
    """Write the guest data of `src` (through its backing chain) to a standalone `dst`.

    Raw output is sparse; qcow2 output allocates only non-zero clusters
    (deflated with `compress`, on `workers` threads: default one per CPU, at
    least QEMU's 4).
    `sync` fsyncs the output before it replaces `dst`.  Raises
    UnsupportedImageError for an unknown format, ImageBuildError for
    `compress` with raw output, OutputError for an unwritable `dst`, and what
    reading `src` raises; `dst` is then left as it was.  Raises InputError when `dst`
    is `src` or a file in its backing chain (under any name).
    """
    from imagebuild.pipeline.output import atomic_output

    target = os.fspath(dst)
    if output_format not in ("qcow2", "raw"):
        raise UnsupportedImageError(f"{target}: output format {output_format!r} (qcow2 or raw)")
    if compress and output_format != "qcow2":
        raise ImageBuildError(f"{target}: compression (-c) needs output format qcow2")
    # as qemu-img's image locks do: never replace the input or a file it reads through
    refuse_output_in_chain(target, src)
    with open_image(src) as source, atomic_output(target, sync=sync) as tmp:
        align = RAW_BLOCK if output_format == "raw" else cluster_size
        parts = pieces(source, align)
        kernel = KERNEL_COPY and not compress and align >= KERNEL_COPY_MIN_BLOCK
        raw = source if kernel and isinstance(source, RawFile) else None
        if output_format == "raw":
            _to_raw(source, parts, source.size, tmp, raw)
            return
        with Qcow2Image.create(tmp, source.size, cluster_size=cluster_size,
                               sync=sync) as out:
            if raw is not None:
                _copy_clusters(raw, parts, out)
                return
            chunks = ReadAhead(parts, _reader(source), source.size)
            try:
                if compress:
                    _compressed(chunks, out, workers)
                else:
                    for pos, data in chunks:
                        write_new_clusters(out, data, pos)
            finally:
                chunks.close()


def data_extents(image: Source) -> Iterator[tuple[int, int]]:
    """(start, length) of the guest ranges that may hold non-zero data, through the chain."""
    run_start = run_end = -1
    for e in map_image(image):
        if not e["data"]:
            continue
        if e["start"] == run_end:
            run_end += e["length"]
            continue
        if run_end > run_start:
            yield run_start, run_end - run_start
        run_start, run_end = e["start"], e["start"] + e["length"]
    if run_end > run_start:
        yield run_start, run_end - run_start


def aligned_ranges(image: Source, align: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges covering every data extent, widened to multiples of
    `align` and merged where widening makes them touch or overlap: each aligned
    block (cluster) lies in exactly one range, however many extents share it."""
    run_start = run_end = -1
    for start, length in data_extents(image):
        first = start // align * align
        end = min(image.size, -(-(start + length) // align) * align)
        if first <= run_end:
            run_end = max(run_end, end)
            continue
        if run_end > run_start:
            yield run_start, run_end
        run_start, run_end = first, end
    if run_end > run_start:
        yield run_start, run_end


def pieces(image: Source, align: int) -> Iterator[Piece]:
    """The aligned ranges cut into (offset, length) pieces of at most CHUNK bytes, each
    range from its start: the allocation steps of every copy path."""
    for first, end in aligned_ranges(image, align):
        for pos in range(first, end, CHUNK):
            yield pos, min(CHUNK, end - pos)


def _reader(image: Source) -> ReadInto:
    """Fill a view with guest bytes of `image` at an offset (zeros past a short raw file)."""
    if isinstance(image, Qcow2Image):
        qcow2 = image

        def read_guest(view: memoryview, pos: int) -> None:
            qcow2.readinto(view, pos)

        return read_guest
    fd = image.fileno()

    def read_raw(view: memoryview, pos: int) -> None:
        got = os.preadv(fd, [view], pos)
        if got < len(view):  # a file shorter than its size: zeros, as pread gives
            view[got:] = bytes(len(view) - got)

    return read_raw


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive numbers in sorted `indices`."""
    i = 0
    while i < len(indices):
        j = i + 1
        while j < len(indices) and indices[j] == indices[j - 1] + 1:
            j += 1
        yield indices[i], j - i
        i = j


def _copy_clusters(source: RawFile, parts: Iterator[Piece], out: Qcow2Image) -> None:
    """Each piece's non-zero clusters, one host run per run of guest clusters, copied by
    the kernel: the layout `write_new_clusters` gives the same piece."""
    bits = out.cluster_bits
    cs = out.cluster_size
    shift = out.map.l2_shift
    copier = KernelCopy(source.fileno(), out.fileno())
    for pos, n in parts:
        for first, count in _runs(nonzero_blocks(source.fileno(), pos, n, cs)):
            start = pos + first * cs
            length = min(count * cs, pos + n - start)
            guest = start >> bits
            tables = [(l1i, out.map.writable_l2(l1i))  # first: the data run stays contiguous
                      for l1i in range(guest >> shift, ((guest + count - 1) >> shift) + 1)]
            host = out.refcounts.allocate(count)
            copier.copy_run(start, host << bits, length)
            out.host.size = max(out.host.size, (host << bits) + length)
            entry = (host << bits) | OFLAG_COPIED
            for l1i, table in tables:  # the run's L2 entries, table by table
                lo = max(guest, l1i << shift)
                hi = min(guest + count, (l1i + 1) << shift)
                first_entry = entry + ((lo - guest) << bits)
                table[lo - (l1i << shift) : hi - (l1i << shift)] = array(
                    "Q", range(first_entry, first_entry + ((hi - lo) << bits), cs))
        out.maybe_trim_cache()


def _to_raw(source: Source, parts: Iterator[Piece], size: int, tmp: os.PathLike[str],
            raw: RawFile | None) -> None:
    """A sparse raw file: runs of non-zero RAW_BLOCK blocks, each run one pwrite, or
    one kernel copy from `raw` (the source, when it is a raw file)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        if raw is not None:
            copier = KernelCopy(raw.fileno(), fd)
            for pos, n in parts:
                for first, count in _runs(nonzero_blocks(raw.fileno(), pos, n, RAW_BLOCK)):
                    start = pos + first * RAW_BLOCK
                    copier.copy_run(start, start, min(count * RAW_BLOCK, pos + n - start))
            return
        chunks = ReadAhead(parts, _reader(source), size)
        try:
            for pos, data in chunks:
                view = memoryview(data)
                blocks = [i for i, at in enumerate(range(0, len(view), RAW_BLOCK))
                          if not is_zero(view[at : at + RAW_BLOCK])]
                for first, count in _runs(blocks):
                    at = first * RAW_BLOCK
                    _pwrite_all(fd, view[at : at + count * RAW_BLOCK], pos + at)
        finally:
            chunks.close()
    finally:
        os.close(fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _deflate(block: bytes, start: int, end: int, pos: int, cs: int) -> Deflated:
    """The non-zero clusters of block[start:end] (guest offset `pos` at block[0]), each
    with its deflated bytes (None: stored uncompressed)."""
    view = memoryview(block)
    found: Deflated = []
    for at in range(start, end, cs):
        piece = view[at : at + cs]
        if not is_zero(piece):
            found.append(((pos + at) // cs, piece, codec.deflate_cluster(piece, cs)))
    return found


def _compressed(chunks: ReadAhead, out: Qcow2Image, workers: int | None) -> None:
    """Deflate every non-zero cluster on a pool; write them in guest order."""
    from concurrent.futures import ThreadPoolExecutor

    cs = out.cluster_size
    threads = workers or max(os.cpu_count() or 1, QCOW2_MAX_THREADS)
    step = max(cs, DEFLATE_BATCH // cs * cs)
    window = 2 * threads + 2  # tasks in flight: bounds memory, keeps every core busy
    pending: deque[Future[Deflated]] = deque()

    def store(task: Future[Deflated]) -> None:
        for guest, content, packed in task.result():
            write_compressed(out, guest, content, packed)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convert-deflate") as pool:
        for pos, data in chunks:
            block = bytes(data)  # the tasks' own copy: the reader reuses its buffers
            for at in range(0, len(block), step):
                pending.append(pool.submit(_deflate, block, at, min(len(block), at + step),
                                           pos, cs))
                while len(pending) > window:
                    store(pending.popleft())
        while pending:
            store(pending.popleft())
