"""How `convert` moves a source's bytes: read ahead on a thread, or copy inside the kernel.

`ReadAhead` reads the pieces of the source's data ranges on a thread into a
few reused buffers, one batch ahead of the consumer, so reading (and, for a
qcow2 source, inflating) overlaps writing.  A raw source needs no user-space
copy at all: `nonzero_blocks` finds the blocks holding data by their first
bytes (reading a whole block only when those are zero), and `copy_run` moves
a run with `copy_file_range` (page cache to page cache; a reflink on file
systems that share extents), falling back to pread/pwrite where the kernel
cannot (another file system, an old kernel, a device).  Each run's blocks are
reserved first with one fallocate(2): ext4 then maps the run as one extent
instead of reserving block by block as each page is written (less system time
in the copy; docs/qcow2.md gives the measured effect); the bytes written are the
same.  On file systems that share extents (btrfs, XFS) the reserved blocks are
given back when the copy shares the source's instead.

Offsets and lengths are bytes.  Bytes past the end of a source file read as
zeros, as `pread` gives them.

References: Linux copy_file_range(2), fallocate(2); QEMU, qemu-img.c (convert_co_read,
convert_co_copy_range: qemu-img's copy offloading, used for `-C`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from imagebuild.container.qcow2.hostfile import is_zero, zeros

if TYPE_CHECKING:
    import queue

CHUNK = 8 << 20  # bytes per piece: one read, one write call (and one allocation run)
BATCH = 16 << 20  # bytes handed from the reader thread to the writer at once
READ_AHEAD = 1  # batches read ahead of the writer
PREALLOCATE = True  # reserve each run's blocks with fallocate(2) before writing it
HEAD = 16  # bytes looked at before a block is read whole to see whether it is all zero

# copy_file_range errors meaning "not between these two files": copy in user space instead
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                             errno.EBADF, errno.ETXTBSY, errno.EPERM})

Piece = tuple[int, int]  # (offset, length)
ReadInto = Callable[[memoryview, int], None]
Fallocate = Callable[[int, int, int], bool]  # (fd, offset, length) -> reserved


def nonzero_blocks(fd: int, pos: int, n: int, block: int) -> list[int]:
    """Indices of the `block`-byte blocks of [pos, pos + n) in file `fd` holding a
    non-zero byte (the last block may be shorter).  A block whose first HEAD bytes
    are not all zero is data without reading more; only the others are read whole.
    (One pread of HEAD bytes per block, in a loop kept tight: it runs once per
    cluster of every data extent.  A block shorter than HEAD is read whole: a
    head would reach into the next block.)"""
    end = pos + n
    if block < HEAD:
        return [index for index, at in enumerate(range(pos, end, block))
                if not _all_zero(fd, at, min(block, end - at))]
    pread = os.pread
    zero_head = zeros(HEAD)
    found = []
    for index, at in enumerate(range(pos, end, block)):
        head = pread(fd, HEAD, at)
        if head == zero_head:  # the rest of the block decides
            data = end - at > HEAD and not is_zero(pread(fd, min(block, end - at), at))
        elif len(head) == HEAD and end - at >= HEAD:
            data = True  # a non-zero byte inside the block
        else:  # the end of the file, or a last block shorter than HEAD
            data = not _all_zero(fd, at, min(block, end - at))
        if data:
            found.append(index)
    return found


def _all_zero(fd: int, at: int, length: int) -> bool:
    head = os.pread(fd, min(HEAD, length), at)
    if head != zeros(len(head)):
        return False
    # a short head is the end of the file: zeros follow
    return length <= HEAD or len(head) < HEAD or is_zero(os.pread(fd, length, at))


def fallocator() -> Fallocate | None:
    """fallocate(fd, 0, offset, length) of the C library: True once the blocks are
    reserved (the file grows to offset + length, as a write there grows it), False
    when it is refused (no support, no space, not a regular file: after ENOSPC part
    of the range may be reserved and the file grown, which the copy that follows
    overwrites or, failing too, leaves in a temporary file that is removed); None
    without the call.  Not os.posix_fallocate: where a file system has no fallocate, the C
    library emulates it by writing a byte into every block, one call each."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        call = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int

    def fallocate(fd: int, offset: int, length: int) -> bool:
        return bool(call(fd, 0, offset, length) == 0)

    return fallocate


class KernelCopy:
    """`copy_run` between two files: copy_file_range until the kernel refuses, then
    pread/pwrite.  `kernel` (bool) says which is in use; with `preallocate` each run's
    blocks are reserved first (`fallocator`) until the file system refuses once."""

    def __init__(self, src_fd: int, dst_fd: int, kernel: bool = True,
                 preallocate: bool = True) -> None:
        self.src_fd = src_fd
        self.dst_fd = dst_fd
        self.kernel = kernel and hasattr(os, "copy_file_range")
        self.fallocate = fallocator() if preallocate and PREALLOCATE else None

    def copy_run(self, src_offset: int, dst_offset: int, n: int) -> None:
        """Copy `n` bytes; source bytes past its end are written as zeros.  Raises
        OSError for read and write errors (ENOSPC, EIO...)."""
        if self.fallocate is not None and not self.fallocate(self.dst_fd, dst_offset, n):
            self.fallocate = None  # refused: the copy finds out whether there is room
        done = 0
        while done < n and self.kernel:
            try:
                got = os.copy_file_range(self.src_fd, self.dst_fd, n - done,
                                         src_offset + done, dst_offset + done)
            except OSError as err:
                if err.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = False
                break
            if got <= 0:  # the source ends here
                break
            done += got
        while done < n:
            want = min(CHUNK, n - done)
            data = os.pread(self.src_fd, want, src_offset + done)
            if len(data) < want:
                data = data.ljust(want, b"\0")
            view = memoryview(data)
            put = 0
            while put < want:
                put += os.pwrite(self.dst_fd, view[put:], dst_offset + done + put)
            done += want


def _batches(pieces: Iterable[Piece], read_into: ReadInto, size: int,
             ) -> Iterator[list[tuple[int, memoryview]]]:
    """`pieces` read into READ_AHEAD + 2 buffers of `size` bytes (at least the largest
    piece) in turn, each made when first needed, gathered into batches that fill a
    buffer: a batch is one hand-over."""
    buffers: list[bytearray] = []
    turn = 0
    batch: list[tuple[int, memoryview]] = []
    used = 0
    buf = memoryview(b"")
    for pos, n in pieces:
        if not buffers or used + n > len(buf):
            if batch:
                yield batch
                turn += 1
            batch, used = [], 0
            if len(buffers) <= turn % (READ_AHEAD + 2):
                buffers.append(bytearray(size))
            buf = memoryview(buffers[turn % (READ_AHEAD + 2)])
        view = buf[used : used + n]
        read_into(view, pos)
        batch.append((pos, view))
        used += n
    if batch:
        yield batch


class ReadAhead:
    """`(offset, bytes)` for each of `pieces`, read by a thread READ_AHEAD batches ahead.

    `read_into(view, offset)` fills a view with source bytes; no piece is
    longer than CHUNK or `source_size`.  The consumer must be done with a piece
    when it asks for the next: the READ_AHEAD + 2 buffers (of BATCH bytes, or
    `source_size` when smaller) are reused in turn.  An exception in the reader
    is raised again in the consumer.  `close()` stops the reader (it may be
    blocked on a full queue) and waits for it.  (queue and threading are
    imported here: the kernel copy needs neither.)
    """

    _DONE = object()

    def __init__(self, pieces: Iterable[Piece], read_into: ReadInto, source_size: int,
                 ) -> None:
        import queue
        import threading

        self._full = queue.Full
        self._queue: queue.Queue[object] = queue.Queue(READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pieces, read_into, source_size),
                                        daemon=True, name="convert-read-ahead")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except self._full:
                continue
        return False

    def _run(self, pieces: Iterable[Piece], read_into: ReadInto, source_size: int) -> None:
        try:
            for item in _batches(pieces, read_into, max(1, min(BATCH, source_size))):
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
        """Stop the reader and wait for it (idempotent)."""
        self._stop.set()
        self._thread.join()
