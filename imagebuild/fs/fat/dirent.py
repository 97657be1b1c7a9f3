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
from collections.abc import Sequence
from datetime import UTC, datetime

from imagebuild.util.layout import Field, Layout
from imagebuild.util.record import Record

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

DIR_ENTRY = Layout("directory entry", "<", [
    Field("DIR_Name", "name", "11s"),
    Field("DIR_Attr", "attributes", "B"),
    Field("DIR_NTRes", "nt_case", "B"),
    Field("DIR_CrtTimeTenth", "create_tenths", "B"),
    Field("DIR_CrtTime", "create_time", "H"),
    Field("DIR_CrtDate", "create_date", "H"),
    Field("DIR_LstAccDate", "access_date", "H"),
    Field("DIR_FstClusHI", "cluster_high", "H"),
    Field("DIR_WrtTime", "time", "H"),
    Field("DIR_WrtDate", "date", "H"),
    Field("DIR_FstClusLO", "cluster_low", "H"),
    Field("DIR_FileSize", "size", "I"),
])
LFN_SLOT = Layout("long-name slot", "<", [
    Field("LDIR_Ord", "ordinal", "B"),
    Field("LDIR_Name1", "name1", "10s"),  # UTF-16 units 1..5
    Field("LDIR_Attr", "attributes", "B"),
    Field("LDIR_Type", "type", "B"),
    Field("LDIR_Chksum", "checksum", "B"),
    Field("LDIR_Name2", "name2", "12s"),  # units 6..11
    Field("LDIR_FstClusLO", "cluster_low", "H"),
    Field("LDIR_Name3", "name3", "4s"),  # units 12..13
])
assert DIR_ENTRY.size == LFN_SLOT.size == DIR_ENTRY_SIZE

# DOS dates run from 1980-01-01 to 2107-12-31 (7 bits of years after 1980).
DOS_EPOCH = 315532800  # 1980-01-01T00:00:00Z
DOS_LAST = 4354819198  # 2107-12-31T23:59:58Z


class DirEntry(Record):
    """One short directory entry."""

    FIELDS = (
        "name", "attributes", "nt_case", "create_tenths", "create_time", "create_date",
        "access_date", "cluster_high", "time", "date", "cluster_low", "size")
    __slots__ = FIELDS

    name: bytes  # 11 bytes, name[8] + ext[3]
    attributes: int
    nt_case: int
    create_tenths: int
    create_time: int
    create_date: int
    access_date: int
    cluster_high: int
    time: int
    date: int
    cluster_low: int
    size: int

    def __init__(
        self,
        name: bytes,
        attributes: int = 0,
        nt_case: int = 0,
        create_tenths: int = 0,
        create_time: int = 0,
        create_date: int = 0,
        access_date: int = 0,
        cluster_high: int = 0,
        time: int = 0,
        date: int = 0,
        cluster_low: int = 0,
        size: int = 0,
    ) -> None:
        self.name = name
        self.attributes = attributes
        self.nt_case = nt_case
        self.create_tenths = create_tenths
        self.create_time = create_time
        self.create_date = create_date
        self.access_date = access_date
        self.cluster_high = cluster_high
        self.time = time
        self.date = date
        self.cluster_low = cluster_low
        self.size = size

    def pack(self) -> bytes:
        """The 32 bytes of the entry (struct.error for a field out of range)."""
        return DIR_ENTRY.pack(self)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> DirEntry:
        """The entry at `offset` of `raw` (struct.error if fewer than 32 bytes remain)."""
        return cls(**DIR_ENTRY.unpack(raw, offset))

    @property
    def first_cluster(self) -> int:
        """DIR_FstClusHI:DIR_FstClusLO (the high half is 0 on FAT12/16)."""
        return self.cluster_high << 16 | self.cluster_low

    @property
    def is_long_name_slot(self) -> bool:
        """Whether these 32 bytes are a long-name slot (ATTR_LONG_NAME in the low six bits)."""
        return self.attributes & 0x3F == ATTR_LONG_NAME

    def display_name(self) -> str:
        """The 8.3 name as readers show it, "NAME.EXT", honouring the NT case bits."""
        raw = bytearray(self.name)
        if raw[0] == KANJI_E5:
            raw[0] = FREE_ENTRY
        # cp437 is ASCII below 0x80: its codec (a 256-entry table) loads only when needed
        codec = "ascii" if raw.isascii() else "cp437"
        base = raw[:8].decode(codec).rstrip(" ")
        ext = raw[8:].decode(codec).rstrip(" ")
        if self.nt_case & NT_LOWER_BASE:
            base = base.lower()
        if self.nt_case & NT_LOWER_EXT:
            ext = ext.lower()
        return f"{base}.{ext}" if ext else base


class LfnSlot(Record):
    """One long-name slot: 13 UTF-16 units of the name, its place, the short name's checksum.

    `ordinal` counts from 1 at the name's start, LFN_LAST marks the slot
    stored first; unused units after the terminating 0 are 0xFFFF.
    """

    FIELDS = ("ordinal", "name1", "attributes", "type", "checksum", "name2", "cluster_low", "name3")
    __slots__ = FIELDS

    ordinal: int
    name1: bytes
    attributes: int
    type: int
    checksum: int
    name2: bytes
    cluster_low: int
    name3: bytes

    def __init__(
        self,
        ordinal: int,
        name1: bytes = b"\xff" * 10,
        attributes: int = ATTR_LONG_NAME,
        type: int = 0,
        checksum: int = 0,
        name2: bytes = b"\xff" * 12,
        cluster_low: int = 0,
        name3: bytes = b"\xff" * 4,
    ) -> None:
        self.ordinal = ordinal
        self.name1 = name1
        self.attributes = attributes
        self.type = type
        self.checksum = checksum
        self.name2 = name2
        self.cluster_low = cluster_low
        self.name3 = name3

    def pack(self) -> bytes:
        """The 32 bytes of the slot."""
        return LFN_SLOT.pack(self)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> LfnSlot:
        """The slot at `offset` of `raw` (struct.error if fewer than 32 bytes remain)."""
        return cls(**LFN_SLOT.unpack(raw, offset))

    @classmethod
    def from_units(cls, ordinal: int, units: Sequence[int], checksum: int) -> LfnSlot:
        """A slot holding `units` (13 of them, padding included)."""
        raw = struct.pack(f"<{LFN_UNITS_PER_SLOT}H", *units)
        return cls(ordinal, raw[:10], checksum=checksum, name2=raw[10:22], name3=raw[22:26])

    def units(self) -> list[int]:
        """The 13 UTF-16 units, as stored."""
        raw = self.name1 + self.name2 + self.name3
        return list(struct.unpack(f"<{LFN_UNITS_PER_SLOT}H", raw))


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
        part = units[(ordinal - 1) * LFN_UNITS_PER_SLOT : ordinal * LFN_UNITS_PER_SLOT]
        if len(part) < LFN_UNITS_PER_SLOT:
            part.append(0)  # terminator; the rest stays 0xFFFF
        part += [0xFFFF] * (LFN_UNITS_PER_SLOT - len(part))
        slot = LfnSlot.from_units(ordinal | (LFN_LAST if i == 0 else 0), part, checksum)
        slots.append(slot.pack())
    return slots


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
