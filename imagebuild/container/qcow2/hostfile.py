"""The host file under a QCOW2 image: positional reads and writes, its size.

Every byte the engine puts into or takes out of the image file goes through
one `HostFile`: `write`/`writev` (in large runs, `pwritev` of up to IOV_MAX
buffers), `readinto` (zeros past the end of the file, as a sparse tail
reads), `read_cluster` (a metadata cluster, bounds-checked).  Offsets and
lengths are bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from imagebuild.errors import ImageFormatError

IOV_MAX = 1024

Buffer = bytes | bytearray | memoryview

_zero_cache: dict[int, bytes] = {}
_QUICK = 16  # bytes looked at before a full all-zero comparison


def zeros(n: int) -> bytes:
    """`n` zero bytes (shared immutable objects for sizes up to 2 MiB)."""
    z = _zero_cache.get(n)
    if z is None:
        z = bytes(n)
        if n <= 1 << 21:
            _zero_cache[n] = z
    return z


def is_zero(buf: Buffer) -> bool:
    """True if every byte is zero; rejects typical data after looking at a few bytes."""
    n = len(buf)
    head = bytes(buf[:_QUICK])
    if head != zeros(len(head)):
        return False
    if n <= _QUICK:
        return True
    body = buf if isinstance(buf, bytes) else bytes(buf)
    return body == zeros(n)


class HostFile:
    """An open image file: `path` (for messages), `size` (bytes, grows with writes)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = os.fstat(fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer at the end of the file)."""
        return os.pread(self.fd, length, offset)

    def readinto(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` from `offset`; bytes past the end of the file read as zeros."""
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], offset + done)
            if n <= 0:
                buf[done:] = zeros(len(buf) - done)
                return
            done += n

    def read_cluster(self, what: str, offset: int, cluster_size: int) -> bytes:
        """The metadata cluster at `offset` (an L2 table, a refcount block).

        Raises ImageFormatError naming `what` when the offset is 0, unaligned
        or the cluster does not lie wholly inside the file.
        """
        if offset % cluster_size or offset + cluster_size > self.size or offset == 0:
            raise ImageFormatError(
                f"{self.path}: {what} offset {offset:#x} is not cluster aligned or lies outside "
                f"the file ({self.size} bytes)"
            )
        return os.pread(self.fd, cluster_size, offset)

    def write(self, data: Buffer, offset: int) -> None:
        """Write all of `data` at `offset` (retrying short writes)."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.size = max(self.size, offset + len(view))

    def writev(self, buffers: Sequence[Buffer], offset: int) -> None:
        """Write `buffers` back to back from `offset`: one pwritev per IOV_MAX buffers."""
        for start in range(0, len(buffers), IOV_MAX):
            chunk = list(buffers[start : start + IOV_MAX])
            total = sum(len(b) for b in chunk)
            done = os.pwritev(self.fd, chunk, offset)
            if done < total:  # short write: finish the rest piecewise
                joined = b"".join(bytes(b) for b in chunk)
                self.write(memoryview(joined)[done:], offset + done)
            self.size = max(self.size, offset + total)
            offset += total

    def extend_to(self, size: int) -> None:
        """Grow the file (sparsely) to at least `size` bytes."""
        if self.size < size:
            os.ftruncate(self.fd, size)
            self.size = size

    def fsync(self) -> None:
        """Flush the file's data and metadata to stable storage."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
