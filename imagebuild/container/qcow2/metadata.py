"""QCOW2 metadata tables outside the header: the snapshot table and the bitmap directory.

Both are lists of variable-length entries (a fixed record, extra data, names,
padding to 8 bytes) declared once in `format.py` (`SNAPSHOT_ENTRY`,
`SNAPSHOT_EXTRA`, `BITMAP_DIRECTORY_ENTRY`).  The engine reads them to refuse
writes and to count references; `qcow2 info` lists them like qemu-img.

References: QEMU, docs/interop/qcow2.txt ("Snapshots", "Bitmaps extension",
"Bitmap directory"); block/qcow2-snapshot.c, block/qcow2-bitmap.c.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from imagebuild.container.qcow2.format import (
    BITMAP_DIRECTORY_ENTRY,
    BITMAPS_EXTENSION,
    BME_FLAG_AUTO,
    BME_FLAG_IN_USE,
    EXT_BITMAPS,
    SNAPSHOT_ENTRY,
    SNAPSHOT_EXTRA,
    align_up,
)
from imagebuild.container.qcow2.header import Qcow2Header
from imagebuild.errors import ImageFormatError

MAX_BITMAP_DIRECTORY = 64 << 20  # QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE


@dataclass
class Snapshot:
    """One snapshot table entry (qcow2.txt "Snapshots"; same field names).

    `disk_size` (bytes) and `icount` come from the extra data; None when the
    entry's extra data is too short to hold them.
    """

    l1_table_offset: int
    l1_size: int
    id: str
    name: str
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int | None = None
    icount: int | None = None


def parse_snapshots(data: bytes, count: int, name: str) -> tuple[list[Snapshot], int]:
    """Decode `count` snapshot table entries from `data` (the table's bytes onward).

    Returns the entries and the table's length in bytes.  Raises
    ImageFormatError (naming file `name`) when an entry runs past `data`.
    """
    snaps: list[Snapshot] = []
    pos = 0
    for i in range(count):
        if pos + SNAPSHOT_ENTRY.size > len(data):
            raise ImageFormatError(f"{name}: snapshot table entry {i} runs past the end of file")
        entry = SNAPSHOT_ENTRY.unpack(data, pos)
        pos += SNAPSHOT_ENTRY.size
        extra = data[pos : pos + entry["extra_data_size"]]
        pos += entry["extra_data_size"]
        end = pos + entry["id_str_size"] + entry["name_size"]
        if end > len(data):
            raise ImageFormatError(f"{name}: snapshot table entry {i} runs past the end of file")
        padded = bytes(extra[: SNAPSHOT_EXTRA.size]).ljust(SNAPSHOT_EXTRA.size, b"\0")
        more = SNAPSHOT_EXTRA.unpack(padded)
        vm_state = entry["vm_state_size"]
        if len(extra) >= SNAPSHOT_EXTRA.offset("disk_size"):
            vm_state = more["vm_state_size_large"]
        snaps.append(Snapshot(
            l1_table_offset=entry["l1_table_offset"], l1_size=entry["l1_size"],
            id=data[pos : pos + entry["id_str_size"]].decode("utf-8", "replace"),
            name=data[pos + entry["id_str_size"] : end].decode("utf-8", "replace"),
            date_sec=entry["date_sec"], date_nsec=entry["date_nsec"],
            vm_clock_nsec=entry["vm_clock_nsec"], vm_state_size=vm_state,
            disk_size=more["disk_size"] if len(extra) >= SNAPSHOT_EXTRA.offset("icount")
            else None,
            icount=more["icount"] if len(extra) >= SNAPSHOT_EXTRA.size else None,
        ))
        pos = align_up(end, 8)
    return snaps, pos


@dataclass
class Bitmap:
    """One bitmap directory entry (qcow2.txt "Bitmap directory"; same field names)."""

    bitmap_table_offset: int
    bitmap_table_size: int  # entries of 8 bytes
    flags: int
    type: int
    granularity_bits: int
    name: str

    @property
    def granularity(self) -> int:
        """Bytes of guest data per bit."""
        return 1 << self.granularity_bits

    def flag_names(self) -> list[str]:
        """qemu-img info's names for the flags set: "in-use", "auto"."""
        names = []
        if self.flags & BME_FLAG_IN_USE:
            names.append("in-use")
        if self.flags & BME_FLAG_AUTO:
            names.append("auto")
        return names


@dataclass
class BitmapDirectory:
    """Where the bitmaps extension says the directory is, and its entries."""

    offset: int
    size: int
    bitmaps: list[Bitmap]


def bitmap_directory_location(header: Qcow2Header) -> tuple[int, int, int] | None:
    """(nb_bitmaps, bitmap_directory_offset, bitmap_directory_size) from the bitmaps
    extension, or None when the image has none (or a truncated one)."""
    ext = header.extension(EXT_BITMAPS)
    if ext is None or len(ext.data) < BITMAPS_EXTENSION.size:
        return None
    fields = BITMAPS_EXTENSION.unpack(ext.data)
    return (fields["nb_bitmaps"], fields["bitmap_directory_offset"],
            fields["bitmap_directory_size"])


def parse_bitmap_directory(data: bytes, count: int, name: str) -> list[Bitmap]:
    """Decode `count` bitmap directory entries from `data` (the directory's bytes).

    Raises ImageFormatError (naming file `name`) when an entry runs past `data`.
    """
    return list(iter_bitmap_directory(data, count, name))


def iter_bitmap_directory(data: bytes, count: int, name: str) -> Iterator[Bitmap]:
    """The entries of `parse_bitmap_directory` one by one (the error comes at the bad one)."""
    pos = 0
    for i in range(count):
        if pos + BITMAP_DIRECTORY_ENTRY.size > len(data):
            raise ImageFormatError(f"{name}: bitmap directory entry {i} runs past its end")
        entry = BITMAP_DIRECTORY_ENTRY.unpack(data, pos)
        start = pos + BITMAP_DIRECTORY_ENTRY.size + entry["extra_data_size"]
        end = start + entry["name_size"]
        if end > len(data):
            raise ImageFormatError(f"{name}: bitmap directory entry {i} runs past its end")
        yield Bitmap(
            bitmap_table_offset=entry["bitmap_table_offset"],
            bitmap_table_size=entry["bitmap_table_size"], flags=entry["flags"],
            type=entry["type"], granularity_bits=entry["granularity_bits"],
            name=data[start:end].decode("utf-8", "replace"),
        )
        pos = align_up(end, 8)
