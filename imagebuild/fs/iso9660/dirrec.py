"""ISO 9660 directory records (ECMA-119 9.1) as mk9660's genputdir() writes them.

Source: sys/src/cmd/disk/9660/write.c (genputdir, Cputisodir, Cputjolietdir),
cdrdwr.c (Cputdate, parsedir), iso9660.h (struct Cdir).  A record is:

    len xlen extent(both32) data_length(both32) date(7) flags unit gap
    volume_sequence(both16) name_len name [pad to even] system_use

mk9660 writes no version suffix (";1") and sets only the directory flag.
"""

from __future__ import annotations

import calendar
import struct
import time
from dataclasses import dataclass

from imagebuild.fs.iso9660.voldesc import IsoFormatError, both16, both32, read_both32

RECORD_HEADER = 33  # bytes before the file identifier
FLAG_HIDDEN = 0x01
FLAG_DIRECTORY = 0x02
MAX_RECORD = 255  # the length is one byte (genputdir asserts l <= 255)

DOT = b"\x00"  # the identifier of a directory's own record
DOTDOT = b"\x01"  # of its parent's


def record_date(unix: int) -> bytes:
    """Cputdate(): years since 1900, month, day, hour, minute, second, GMT offset 0; 0 -> zeros."""
    if unix == 0:
        return bytes(7)
    tm = time.gmtime(unix)
    return bytes(
        [(tm.tm_year - 1900) & 0xFF, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, 0]
    )


def parse_record_date(data: bytes) -> int:
    """A 7-byte recording date as Unix time (UTC, offset applied); 0 when all zero."""
    if data[:7] == bytes(7):
        return 0
    year, month, day, hour, minute, second = data[:6]
    offset = int(struct.unpack("b", data[6:7])[0]) * 15 * 60
    try:
        when = calendar.timegm((1900 + year, month, day, hour, minute, second, 0, 0, 0))
        return int(when) - offset
    except (ValueError, OverflowError):
        return 0


def record_length(identifier_len: int, system_use_len: int) -> int:
    """genputdir(): 33 + identifier, padded to even, plus the system-use bytes."""
    length = RECORD_HEADER + identifier_len
    return length + (length & 1) + system_use_len


@dataclass
class DirectoryRecord:
    """One directory record; `identifier` is on-disk bytes (ASCII d-characters or UCS-2)."""

    extent: int
    data_length: int
    date: bytes
    flags: int
    identifier: bytes
    system_use: bytes = b""
    volume_sequence_number: int = 1

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & FLAG_DIRECTORY)

    @property
    def is_dot(self) -> bool:
        return self.identifier in (DOT, DOTDOT)

    def pack(self) -> bytes:
        length = record_length(len(self.identifier), len(self.system_use))
        if length > MAX_RECORD:
            raise IsoFormatError(
                f"directory record of {length} bytes (identifier {self.identifier!r}): "
                f"the length field holds at most {MAX_RECORD}"
            )
        out = bytearray([length, 0])
        out += both32(self.extent) + both32(self.data_length)
        out += self.date + bytes([self.flags, 0, 0])
        out += both16(self.volume_sequence_number)
        out += bytes([len(self.identifier)]) + self.identifier
        if len(out) & 1:
            out += b"\0"
        out += self.system_use
        assert len(out) == length
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes, where: str) -> DirectoryRecord:
        """Parse the record at the start of `data` (which may run on past it)."""
        if not data or data[0] < RECORD_HEADER + 1 or data[0] > len(data):
            raise IsoFormatError(f"{where}: bad directory record length {data[0] if data else 0}")
        length = data[0]
        name_len = data[32]
        if RECORD_HEADER + name_len > length:
            raise IsoFormatError(f"{where}: identifier of {name_len} bytes overruns its record")
        use_start = RECORD_HEADER + name_len + ((RECORD_HEADER + name_len) & 1)
        return cls(
            extent=read_both32(data[2:10], f"{where} extent"),
            data_length=read_both32(data[10:18], f"{where} data length"),
            date=bytes(data[18:25]),
            flags=data[25],
            volume_sequence_number=struct.unpack("<H", data[28:30])[0],
            identifier=bytes(data[RECORD_HEADER : RECORD_HEADER + name_len]),
            system_use=bytes(data[use_start:length]),
        )


def iter_records(extent: bytes, block_size: int, where: str) -> list[tuple[int, DirectoryRecord]]:
    """The records of a directory extent with their offsets; a zero length byte skips to the
    next block (ECMA-119 6.8.1.1: records do not cross block boundaries)."""
    out: list[tuple[int, DirectoryRecord]] = []
    pos = 0
    while pos < len(extent):
        if extent[pos] == 0:
            pos = (pos // block_size + 1) * block_size
            continue
        length = extent[pos]
        if pos % block_size + length > block_size:
            raise IsoFormatError(f"{where}: directory record at byte {pos} crosses a block end")
        out.append((pos, DirectoryRecord.unpack(extent[pos : pos + length], f"{where}+{pos}")))
        pos += length
    return out
