"""Block devices: file-like views of a disk and its partitions (libdisk, partfs).

9front's dist mkfile runs every disk tool over files served by disk/partfs:
`sdXX/data` is the whole disk and `sdXX/<name>` a partition that fdisk or prep
registered by writing `part NAME START END` to `sdXX/ctl`.  This module is the
same arrangement in-process:

* `Storage` is anything with positional I/O and a size: a raw file
  (`RawFile`) or a QCOW2 data view.
* `BlockDevice` is a seekable view of a sector range of a storage, with the
  fields libdisk's `Disk` carries (`secs`, `sector_size`, `offset` within the
  whole disk) and the CHS geometry libdisk would derive for it.
* `PartFS` is partfs's table of named partitions over one whole disk.

References: sys/src/libdisk/disk.c (findgeometry and friends),
sys/src/cmd/disk/partfs.c (addpart, delpart, ctlstring).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Protocol

from imagebuild.errors import LayoutError, OutOfRangeError, ReadOnlyImageError
from imagebuild.partition.sector0 import NTENTRY, TABLE_OFFSET, TENTRY_SIZE, has_magic
from imagebuild.util.record import Record

SECTOR_SIZE = 512


# Geometry sources (disk.h: Gpart, Gdisk, Gguess).
GEOMETRY_FROM_PARTITIONS = "partition table"
GEOMETRY_GUESSED = "guess"

# guessgeometry(): (heads, sectors) pairs tried in order until 1024 cylinders cover the disk.
GUESS_GEOMETRIES = ((64, 32), (64, 63), (128, 63), (255, 63))
MAX_HEADS, MAX_SECTORS = 255, 63


class Storage(Protocol):
    """Positional I/O over a fixed number of bytes: the one storage interface.

    `size` is in bytes; `pread(size, offset)` returns exactly `size` bytes
    (OutOfRangeError past the end where the storage has a hard end);
    `pwrite(data, offset)` returns len(data).  Implemented by `RawFile`,
    `BytesStorage`, `BlockDevice` and a qcow2 image's `data` view.
    """

    @property
    def size(self) -> int:
        """Bytes of storage."""
        ...

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at byte `offset`."""
        ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write `data` at byte `offset`; returns len(data)."""
        ...


class RawFile:
    """A raw disk image file as Storage; its size is fixed when opened.

    Reads past the end of a short file return zeros; writes must stay inside
    the size (OutOfRangeError; ReadOnlyImageError unless opened writable).
    """

    format = "raw"  # as `container.qcow2.image.open_image` reports it

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int) -> RawFile:
        """Create (or truncate) a sparse raw file of `size` bytes."""
        fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return cls(path, writable=True)

    @property
    def size(self) -> int:
        """The file's size in bytes when opened."""
        return self._size

    @property
    def storage(self) -> RawFile:
        """The disk as Storage: the file itself (a qcow2 image gives its data view)."""
        return self

    def info(self) -> dict[str, int]:
        """A summary like Qcow2Image.info(): the virtual size, which is the file's."""
        return {"virtual_size": self._size}

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset`; past the end of the file they read as zeros."""
        data = os.pread(self._fd, size, offset)
        return data if len(data) == size else data.ljust(size, b"\0")

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write all of `data` at `offset`; returns its length."""
        if not self.writable:
            raise ReadOnlyImageError(f"{self.path}: image is open read-only")
        if offset < 0 or offset + len(data) > self._size:
            raise OutOfRangeError(
                f"{self.path}: write of {len(data)} bytes at offset {offset} runs past the end "
                f"({self._size} bytes)"
            )
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)
        return done

    def fileno(self) -> int:
        """The open file descriptor (for SEEK_DATA/SEEK_HOLE maps)."""
        return self._fd

    def flush(self) -> None:
        """fsync(2) the file when it was opened for writing; OSError from the kernel passes up."""
        if self.writable:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the descriptor; a second close does nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesStorage:
    """In-memory Storage, for tests and small scratch disks."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)

    @property
    def size(self) -> int:
        """Bytes of storage."""
        return len(self.buffer)

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` (fewer past the end)."""
        return bytes(self.buffer[offset : offset + size])

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write `data` at `offset`; returns len(data)."""
        self.buffer[offset : offset + len(data)] = data
        return len(data)


class Geometry(Record):
    """CHS geometry as libdisk reports it: cylinders, heads, sectors per track; `source`
    says where it came from (GEOMETRY_FROM_PARTITIONS or GEOMETRY_GUESSED)."""

    FIELDS = ("cylinders", "heads", "sectors", "source")
    __slots__ = FIELDS

    cylinders: int
    heads: int
    sectors: int
    source: str

    def __init__(self, cylinders: int, heads: int, sectors: int, source: str) -> None:
        self.cylinders = cylinders
        self.heads = heads
        self.sectors = sectors
        self.source = source


class BlockDevice(io.RawIOBase):
    """A sector-addressed, seekable view of part of a Storage.

    `offset` is the view's first sector within the whole disk (libdisk's
    `Disk.offset`), which format writes as the FAT's hidden sectors.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        start: int = 0,
        secs: int | None = None,
        name: str = "data",
        whole: BlockDevice | None = None,
        sector_size: int = SECTOR_SIZE,
    ) -> None:
        super().__init__()
        if secs is None:
            secs = storage.size // sector_size - start
        if start < 0 or secs < 0 or (start + secs) * sector_size > storage.size:
            raise OutOfRangeError(
                f"{name}: sectors {start}..{start + secs} lie outside a storage of "
                f"{storage.size // sector_size} sectors"
            )
        self.storage = storage
        self.name = name
        self.sector_size = sector_size
        self.start = start
        self.secs = secs
        self.whole = whole if whole is not None else self
        self._pos = 0

    # -- libdisk's Disk fields -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes of the device (secs * sector_size)."""
        return self.secs * self.sector_size

    @property
    def offset(self) -> int:
        """First sector of this view within the whole disk."""
        return self.start - self.whole.start

    def geometry(self) -> Geometry:
        """The geometry libdisk's findgeometry() derives when opened through partfs.

        partfs's ctl reports only `geometry NSECT SECTSIZE`, so libdisk has no
        driver geometry: it takes heads and sectors from the MBR in the whole
        disk's sector 0 (or this view's) when all its entries agree, and
        otherwise guesses from the size.
        """
        sector0 = self.whole.pread(SECTOR_SIZE, 0) if self.whole.size >= SECTOR_SIZE else b""
        if not has_magic(sector0) and self.size >= SECTOR_SIZE:
            sector0 = self.pread(SECTOR_SIZE, 0)
        found = _partition_geometry(sector0, self.secs)
        if found is not None:
            return found
        return guess_geometry(self.secs)

    # -- positional I/O ----------------------------------------------------------------------
    def _check(self, size: int, offset: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise OutOfRangeError(
                f"{self.name}: I/O of {size} bytes at offset {offset} runs past its end "
                f"({self.size} bytes)"
            )

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at device `offset` (OutOfRangeError past the device's end)."""
        self._check(size, offset)
        return self.storage.pread(size, self.start * self.sector_size + offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write at device `offset` (OutOfRangeError past the device's end)."""
        self._check(len(data), offset)
        return self.storage.pwrite(data, self.start * self.sector_size + offset)

    def read_sectors(self, sector: int, count: int = 1) -> bytes:
        """`count` sectors from sector `sector` of this device."""
        return self.pread(count * self.sector_size, sector * self.sector_size)

    def write_sectors(self, sector: int, data: bytes | bytearray | memoryview) -> None:
        """Write whole sectors at sector `sector` (OutOfRangeError unless whole sectors)."""
        if len(data) % self.sector_size:
            raise OutOfRangeError(f"{self.name}: write of {len(data)} bytes is not whole sectors")
        self.pwrite(data, sector * self.sector_size)

    def slice(self, start: int, end: int, name: str) -> BlockDevice:
        """Sectors [start, end) of this view as a new view, like a partfs partition."""
        if start < 0 or start > end or end > self.secs:
            raise OutOfRangeError(
                f"{name}: sectors {start}..{end} lie outside {self.name} ({self.secs} sectors)"
            )
        return BlockDevice(
            self.storage,
            start=self.start + start,
            secs=end - start,
            name=name,
            whole=self.whole,
            sector_size=self.sector_size,
        )

    # -- io.RawIOBase -------------------------------------------------------------------------
    def readable(self) -> bool:
        """Always True (io.RawIOBase)."""
        return True

    def writable(self) -> bool:
        """Always True (io.RawIOBase); writes go through `pwrite` and its range check."""
        return True

    def seekable(self) -> bool:
        """Always True (io.RawIOBase)."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the byte position within this view; the new position. OutOfRangeError below 0."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OutOfRangeError(f"{self.name}: seek to negative offset {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        """The byte position within this view."""
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Read up to len(buffer) bytes at the position; 0 at the end of the view."""
        n = max(0, min(len(buffer), self.size - self._pos))
        data = self.pread(n, self._pos) if n else b""
        memoryview(buffer)[:n] = data
        self._pos += n
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Write `data` at the position via `pwrite` (OutOfRangeError past the end);
        the bytes written.
        """
        n = self.pwrite(data, self._pos)
        self._pos += n
        return n


def _partition_geometry(sector0: bytes, secs: int) -> Geometry | None:
    """libdisk partitiongeometry(): heads/sectors from the end CHS of every used entry."""
    if len(sector0) < SECTOR_SIZE or not has_magic(sector0):
        return None
    heads = sectors = -1
    for i in range(NTENTRY):  # the raw bytes: libdisk reads CHS fields, not Tentry values
        entry = sector0[TABLE_OFFSET + i * TENTRY_SIZE :][:TENTRY_SIZE]
        if entry[4] == 0:  # type
            continue
        end_head, end_sector = entry[5], entry[6] & 63
        if heads == -1:
            heads, sectors = end_head, end_sector
        elif (heads, sectors) != (end_head, end_sector):
            return None
    if heads < 0 or sectors <= 0:
        return None
    heads += 1  # heads count from 0, sectors from 1
    return Geometry(secs // (heads * sectors), heads, sectors, GEOMETRY_FROM_PARTITIONS)


def guess_geometry(secs: int) -> Geometry:
    """libdisk guessgeometry(): the first BIOS-style (h, s) with 1024 cylinders covering secs."""
    for heads, sectors in GUESS_GEOMETRIES:
        if 1024 * heads * sectors >= secs:
            return Geometry(secs // (heads * sectors), heads, sectors, GEOMETRY_GUESSED)
    return Geometry(secs // (MAX_HEADS * MAX_SECTORS), MAX_HEADS, MAX_SECTORS, GEOMETRY_GUESSED)


class PartFS:
    """partfs's partition table: named sector ranges over one whole disk (`data`)."""

    MAX_PARTS = 64  # partfs.c: Part tab[64]

    def __init__(self, disk: BlockDevice) -> None:
        self.disk = disk
        self._parts: dict[str, tuple[int, int]] = {}

    def add(self, name: str, start: int, end: int) -> None:
        """partfs addpart(): `part NAME START END`, sectors absolute within the disk."""
        if start < 0 or start > end or end > self.disk.secs:
            raise LayoutError(
                f"partition {name}: bad partition boundaries {start}..{end} "
                f"(disk has {self.disk.secs} sectors)"
            )
        if name in ("ctl", "data"):
            raise LayoutError(f"partition {name}: partition name already in use")
        if name in self._parts:
            if self._parts[name] == (start, end):
                return  # adding an identical partition is a no-op
            raise LayoutError(f"partition {name}: partition name already in use")
        if len(self._parts) >= self.MAX_PARTS:
            raise LayoutError(f"partition {name}: no free partition slots")
        self._parts[name] = (start, end)

    def delete(self, name: str) -> None:
        """Remove partition `name` (partfs's `delpart`)."""
        if self._parts.pop(name, None) is None:
            raise LayoutError(f"partition {name}: no such partition")

    def __contains__(self, name: object) -> bool:
        return name == "data" or name in self._parts

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        return iter(sorted(((n, s, e) for n, (s, e) in self._parts.items()), key=lambda p: p[1]))

    def __getitem__(self, name: str) -> BlockDevice:
        if name == "data":
            return self.disk
        if name not in self._parts:
            known = ", ".join(["data", *self._parts]) or "data"
            raise LayoutError(f"no partition named {name!r} (have: {known})")
        start, end = self._parts[name]
        return self.disk.slice(start, end, name)
