"""`qemu-img convert [-c] -O qcow2|raw`: a standalone copy of an image's guest data.

Only the ranges the source (and its backing chain) maps as data are read,
widened to whole clusters and merged where they share one.  A reader thread
reads ahead (batches of up to BATCH bytes, handed over whole so the threads wake each
other rarely) while the main thread
writes, so reading and writing overlap.  With `-c`, clusters are deflated on a
thread pool (zlib releases the GIL), one task per cluster; results are written
in guest order, so the output is byte for byte what one thread writes.

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
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from imagebuild.container.qcow2 import codec
from imagebuild.container.qcow2.format import DEFAULT_CLUSTER_SIZE
from imagebuild.container.qcow2.hostfile import is_zero
from imagebuild.container.qcow2.image import Qcow2Image, open_image, refuse_output_in_chain
from imagebuild.container.qcow2.tools import map_image
from imagebuild.container.qcow2.write import write_compressed, write_new_clusters
from imagebuild.disk.device import RawFile
from imagebuild.errors import ImageBuildError, UnsupportedImageError

CHUNK = 8 << 20  # bytes per read and per write call while converting
BATCH = 16 << 20  # bytes handed from the reader thread to the writer at once
READ_AHEAD = 1  # batches read ahead of the writer
RAW_BLOCK = 65536  # raw output: all-zero blocks of this size stay holes
QCOW2_MAX_THREADS = 4  # QEMU's qcow2 compresses on up to 4 threads; we use at least as many

Source = Qcow2Image | RawFile


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
        chunks = _read_ahead(source, align)
        try:
            if output_format == "raw":
                _to_raw(chunks, source.size, tmp)
            else:
                with Qcow2Image.create(tmp, source.size, cluster_size=cluster_size,
                                       sync=sync) as out:
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


def _batches(image: Source, align: int, buffers: list[bytearray],
             ) -> Iterator[list[tuple[int, memoryview]]]:
    """The aligned ranges in pieces of at most CHUNK bytes, gathered into batches of at
    most BATCH bytes, each read into the next of `buffers` (reused in turn: no fresh
    memory to fault in).  A batch is one hand-over between the threads."""
    turn = 0
    batch: list[tuple[int, memoryview]] = []
    used = 0
    buf = memoryview(buffers[0])
    for first, end in aligned_ranges(image, align):
        for pos in range(first, end, CHUNK):
            n = min(CHUNK, end - pos)
            if used + n > BATCH:
                yield batch
                turn += 1
                batch, used = [], 0
                buf = memoryview(buffers[turn % len(buffers)])
            view = buf[used : used + n]
            if isinstance(image, RawFile):
                got = os.preadv(image.fileno(), [view], pos)
                if got < n:  # a file shorter than its size: zeros, as pread gives
                    view[got:] = bytes(n - got)
            else:
                image.readinto(view, pos)
            batch.append((pos, view))
            used += n
    if batch:
        yield batch


class _ReadAhead:
    """`(offset, bytes)` chunks read by a thread, READ_AHEAD batches ahead of the consumer.

    The consumer must be done with a chunk when it asks for the next one: the
    READ_AHEAD + 2 batch buffers are reused in turn.  An exception in the reader is
    raised again in the consumer.  `close()` stops the reader (it may be
    blocked on a full queue) and waits for it.
    """

    _DONE = object()

    def __init__(self, image: Source, align: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(image, align), daemon=True,
                                        name="convert-read-ahead")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, image: Source, align: int) -> None:
        buffers = [bytearray(BATCH) for _ in range(READ_AHEAD + 2)]
        try:
            for item in _batches(image, align, buffers):
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer
            self._put(err)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _read_ahead(image: Source, align: int) -> _ReadAhead:
    return _ReadAhead(image, align)


def _to_raw(chunks: _ReadAhead, size: int, tmp: os.PathLike[str]) -> None:
    """A sparse raw file: runs of non-zero RAW_BLOCK blocks, each run one pwrite."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for pos, data in chunks:
            view = memoryview(data)
            run = -1
            for at in range(0, len(view), RAW_BLOCK):
                if is_zero(view[at : at + RAW_BLOCK]):
                    if run >= 0:
                        _pwrite_all(fd, view[run:at], pos + run)
                        run = -1
                elif run < 0:
                    run = at
            if run >= 0:
                _pwrite_all(fd, view[run:], pos + run)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _compressed(chunks: _ReadAhead, out: Qcow2Image, workers: int | None) -> None:
    """Deflate every non-zero cluster on a pool; write them in guest order."""
    cs = out.cluster_size
    threads = workers or max(os.cpu_count() or 1, QCOW2_MAX_THREADS)
    window = 4 * threads + 64  # clusters in flight: bounds memory, keeps every core busy
    pending: deque[tuple[int, bytes, Future[bytes | None]]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convert-deflate") as pool:
        for pos, data in chunks:
            view = memoryview(data)
            for at in range(0, len(view), cs):
                piece = view[at : at + cs]
                if is_zero(piece):
                    continue
                raw = bytes(piece)
                pending.append(((pos + at) // cs, raw,
                                pool.submit(codec.deflate_cluster, raw, cs)))
                while len(pending) > window:
                    guest, content, future = pending.popleft()
                    write_compressed(out, guest, content, future.result())
        while pending:
            guest, content, future = pending.popleft()
            write_compressed(out, guest, content, future.result())
