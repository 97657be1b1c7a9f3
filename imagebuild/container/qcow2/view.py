"""The virtual disk of a Qcow2Image as a seekable binary file object (and a Storage)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from imagebuild.errors import OutOfRangeError

if TYPE_CHECKING:
    from imagebuild.container.qcow2.image import Qcow2Image


class DataView(io.RawIOBase):
    """`image.data`: read/write/seek over guest bytes, plus `size`, `pread`, `pwrite`.

    Closing the view leaves the image open; close the image to finish it.
    """

    def __init__(self, image: Qcow2Image) -> None:
        super().__init__()
        self.image = image
        self._pos = 0

    @property
    def size(self) -> int:
        """The virtual disk's size in bytes."""
        return self.image.size

    @property
    def skip_unchanged(self) -> bool:
        """Writes equal to what the chain returns allocate nothing (see Qcow2Image)."""
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
        """Move the position (OutOfRangeError before 0, ValueError for a bad whence)."""
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
        """`size` guest bytes at `offset`."""
        return self.image.pread(size, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write guest bytes at `offset`; returns len(data)."""
        return self.image.pwrite(data, offset)

    def flush(self) -> None:
        if not self.image.closed and self.image.writable:
            self.image.flush()

    def close(self) -> None:
        """Closing the view leaves the image open; close the image to finish it."""
        super().close()
