"""FAT directory entries: the 32-byte record, long-name slots, and format's naming rules.

The record is format.c's struct Dosdir (Microsoft's DIR_* fields):

    0x00 name[8] ext[3]   short (8.3) name, blank padded
    0x0B attr             DRONLY 0x01 DHIDDEN 0x02 DSYSTEM 0x04 DVLABEL 0x08 DDIR 0x10 DARCH 0x20
    0x0C reserved[10]     NT case bits (0x0C), creation time and date, access date,
                          high half of the first cluster (0x14, FAT32)
    0x16 time[2] date[2]  modification time and date
    0x1A start[2]         low half of the first cluster
    0x1C length[4]

A long name is stored in slots of 13 UTF-16 units just before its short
entry, in reverse order, the first slot flagged 0x40 (format.c putnamesect).

The naming functions reproduce format.c's islongname, putname, mkalias and
the checksum loop of addrname, so file names come out as 9front writes them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime

DIR_ENTRY_SIZE = 32
LFN_UNITS_PER_SLOT = 13  # DOSRUNE
MAX_LONG_NAME = 255  # Microsoft's limit; format.c's DOSNAMELEN is 261

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_LABEL = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = 0x0F

LFN_LAST = 0x40  # ordinal flag of the slot written first (the name's last part)
FREE_ENTRY = 0xE5  # name[0] of a deleted entry
KANJI_E5 = 0x05  # name[0] standing for a real 0xE5
NT_LOWER_BASE = 0x08  # reserved[0] bits Windows NT uses for an all-lowercase base/extension
NT_LOWER_EXT = 0x10

# Characters that make format.c's islongname() choose a long name.
LONG_NAME_CHARS = "+,:;=[] "
# Characters isdoschar() keeps in an alias (besides letters and digits).
ALIAS_CHARS = "$%'-_@~`!(){}^#&"
# Characters no FAT name may contain (Microsoft's list; format does not check).
FORBIDDEN_CHARS = '"*/:<>?\\|'

_ENTRY = struct.Struct("<11sBBBHHHHHHHI")
assert _ENTRY.size == DIR_ENTRY_SIZE
# Byte offsets of the 13 UTF-16 units in a long-name slot.
_LFN_UNIT_OFFSETS = (1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30)

# DOS dates run from 1980-01-01 to 2107-12-31 (7 bits of years after 1980).
DOS_EPOCH = 315532800  # 1980-01-01T00:00:00Z
DOS_LAST = 4354819198  # 2107-12-31T23:59:58Z


@dataclass
class DirEntry:
    """One short directory entry."""

    name: bytes  # 11 bytes, name[8] + ext[3]
    attributes: int = 0
    nt_case: int = 0
    create_tenths: int = 0
    create_time: int = 0
    create_date: int = 0
    access_date: int = 0
    cluster_high: int = 0
    time: int = 0
    date: int = 0
    cluster_low: int = 0
    size: int = 0

    def pack(self) -> bytes:
        return _ENTRY.pack(
            self.name, self.attributes, self.nt_case, self.create_tenths, self.create_time,
            self.create_date, self.access_date, self.cluster_high, self.time, self.date,
            self.cluster_low, self.size,
        )

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> DirEntry:
        return cls(*_ENTRY.unpack_from(raw, offset))

    @property
    def first_cluster(self) -> int:
        return self.cluster_high << 16 | self.cluster_low

    @property
    def is_long_name_slot(self) -> bool:
        return self.attributes & 0x3F == ATTR_LONG_NAME

    def display_name(self) -> str:
        """The 8.3 name as readers show it, "NAME.EXT", honouring the NT case bits."""
        raw = bytearray(self.name)
        if raw[0] == KANJI_E5:
            raw[0] = FREE_ENTRY
        base = raw[:8].decode("cp437").rstrip(" ")
        ext = raw[8:].decode("cp437").rstrip(" ")
        if self.nt_case & NT_LOWER_BASE:
            base = base.lower()
        if self.nt_case & NT_LOWER_EXT:
            ext = ext.lower()
        return f"{base}.{ext}" if ext else base


# -- format.c's naming rules ----------------------------------------------------------------
def is_long_name(name: str) -> bool:
    """islongname(): does `name` need long-name slots?  Counts UTF-8 bytes as format does."""
    raw = name.encode()
    extended = any(c & 0x80 or chr(c) in LONG_NAME_CHARS for c in raw)
    dots = raw.count(b".")
    dot = raw.rfind(b".")
    is_8dot3 = (dots == 0 and len(raw) <= 8) or (
        dots == 1 and dot <= 8 and len(raw) - (dot + 1) <= 3
    )
    return extended or not is_8dot3


def _toupper(c: int) -> int:
    """Plan 9 libc toupper(): ASCII letters only."""
    return c - 32 if ord("a") <= c <= ord("z") else c


def short_name_field(name: str) -> bytes:
    """putname(): the 11 blank-padded upper-case bytes of an 8.3 name."""
    raw = name.encode()
    out = bytearray(b" " * 11)
    pos = 0
    while pos < 8 and pos < len(raw) and raw[pos] != ord("."):
        out[pos] = _toupper(raw[pos])
        pos += 1
    dot = raw.rfind(b".", pos)
    if dot >= 0:
        for i, c in enumerate(raw[dot + 1 : dot + 4]):
            out[8 + i] = _toupper(c)
    return bytes(out)


def _is_dos_char(c: str) -> bool:
    """isdoschar(): the characters an alias keeps."""
    return c.isascii() and (c.isalnum() or c in ALIAS_CHARS)


def make_alias(name: str, alias_id: int) -> str:
    """mkalias(): up to six name characters, "~", the id, and up to three of the extension."""
    end = name.rfind(".")
    if end < 0:
        end = len(name)
    base = [c for c in name[:end] if _is_dos_char(c)][:6]
    sid = str(alias_id)
    if len(base) + 1 + len(sid) > 8:
        base = base[: 8 - 1 - len(sid)]
    ext = [c for c in name[end:] if _is_dos_char(c)][:3]
    alias = "".join(base) + "~" + sid
    return f"{alias}.{''.join(ext)}" if ext else alias


def lfn_checksum(short_name: bytes) -> int:
    """The rotate-and-add checksum of the 11-byte short name, stored in every slot."""
    total = 0
    for c in short_name:
        total = (((total & 1) << 7) | ((total & 0xFE) >> 1)) + c
        total &= 0xFF
    return total


def lfn_slots(long_name: str, checksum: int) -> list[bytes]:
    """putnamesect() for every slot, in on-disk order (last part first)."""
    units = [ord(c) for c in long_name]
    count = (len(units) + LFN_UNITS_PER_SLOT - 1) // LFN_UNITS_PER_SLOT
    slots = []
    for i in range(count):
        ordinal = count - i
        slot = bytearray(b"\xff" * DIR_ENTRY_SIZE)
        slot[0] = ordinal | (LFN_LAST if i == 0 else 0)
        slot[11] = ATTR_LONG_NAME
        slot[12] = 0
        slot[13] = checksum
        slot[26:28] = b"\0\0"
        part = units[(ordinal - 1) * LFN_UNITS_PER_SLOT : ordinal * LFN_UNITS_PER_SLOT]
        if len(part) < LFN_UNITS_PER_SLOT:
            part.append(0)  # terminator; the rest stays 0xFFFF
        for offset, unit in zip(_LFN_UNIT_OFFSETS, part, strict=False):
            slot[offset : offset + 2] = unit.to_bytes(2, "little")
        slots.append(bytes(slot))
    return slots


def lfn_slot_units(slot: bytes | memoryview) -> list[int]:
    """The 13 UTF-16 units of a long-name slot, as stored."""
    return [slot[o] | slot[o + 1] << 8 for o in _LFN_UNIT_OFFSETS]


# -- time stamps ------------------------------------------------------------------------------
def dos_time_date(timestamp: int) -> tuple[int, int]:
    """puttime() for a Unix time taken as UTC, clamped to the years DOS can encode."""
    t = datetime.fromtimestamp(min(max(timestamp, DOS_EPOCH), DOS_LAST), UTC)
    time = (t.hour << 11) | (t.minute << 5) | (t.second >> 1)
    date = ((t.year - 1980) << 9) | (t.month << 5) | t.day
    return time, date


def dos_datetime(time: int, date: int) -> datetime:
    """A DOS time and date as a UTC datetime; 1980-01-01 when the fields name no valid
    instant (month 0, 24 o'clock, ...), as mtools shows such entries."""
    try:
        return datetime(
            1980 + (date >> 9), (date >> 5) & 15, date & 31,
            time >> 11, (time >> 5) & 63, (time & 31) * 2, tzinfo=UTC,
        )
    except ValueError:
        return datetime.fromtimestamp(DOS_EPOCH, UTC)
