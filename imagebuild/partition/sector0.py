"""Sector 0 of a PC disk (and every extended boot record): boot area, partition table, magic.

    offset  size  what
    0       446   boot program (disk/mbr writes it; BOOT_AREA)
    446     64    four 16-byte partition entries (fdisk.c Tentry; TABLE_OFFSET = Toffset)
    510     2     the magic 0x55 0xAA (Magic0, Magic1) that the BIOS and fdisk look for

An entry's `lba` counts from the disk's start in the MBR; in an extended boot
record from that record's sector (a partition) or from the start of the
outermost extended partition (the link to the next record).  CHS fields are
(head, sector | cylinder bits 8-9, cylinder bits 0-7) in the disk's libdisk
geometry.  Every module that reads or writes these bytes takes the layout
from here.

References: sys/src/cmd/disk/prep/fdisk.c (Tentry, Table, the Type* enum,
types[], writechs, Dfmt), sys/src/cmd/disk/mbr.c (Toffset, the magic),
sys/src/libdisk/disk.c (partitiongeometry).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from imagebuild.util.record import Record

SECTOR = 512  # mbr.c and fdisk.c work in 512-byte sectors whatever the disk says
TABLE_OFFSET = 446  # Toffset: where the four entries start
BOOT_AREA = TABLE_OFFSET  # the boot program's room (mbr.c: ndefmbr = Toffset)
TENTRY_SIZE = 16  # sizeof(Tentry)
NTENTRY = 4
MAGIC_OFFSET = TABLE_OFFSET + NTENTRY * TENTRY_SIZE  # 510
MAGIC = b"\x55\xaa"  # Magic0, Magic1
TABLE_SIZE = NTENTRY * TENTRY_SIZE + len(MAGIC)  # Tablesize: the entries and the magic

ACTIVE = 0x80  # Active: the bootable flag in Tentry.active

TYPE_EMPTY = 0x00
TYPE_EXTENDED = 0x05
TYPE_FAT32 = 0x0B
TYPE_EXTHUGE = 0x0F
TYPE_LINUXEXT = 0x85
TYPE_GPT = 0xEE  # a protective MBR in front of a GPT
TYPE_ESP = 0xEF
TYPE_PLAN9 = 0x39  # Type9
EXTENDED_TYPES = (TYPE_EXTENDED, TYPE_EXTHUGE, TYPE_LINUXEXT)

MAX_LBA = 0xFFFFFFFF  # the entries' 32-bit xlba and xsize fields

# fdisk.c types[]: type byte -> (description `t` takes and `p` prints, partfs name;
# "" = fdisk registers no partfs partition for it).
TYPES: dict[int, tuple[str, str]] = {
    0x00: ("EMPTY", ""),
    0x01: ("FAT12", "dos"),
    0x02: ("XENIX", "xenix"),
    0x03: ("XENIX USR", "xenixusr"),
    0x04: ("FAT16", "dos"),
    0x05: ("EXTENDED", ""),
    0x06: ("FATHUGE", "dos"),
    0x07: ("HPFS", "ntfs"),
    0x08: ("AIXBOOT", "aixboot"),
    0x09: ("AIXDATA", "aixdata"),
    0x0A: ("OS/2BOOT", "os2boot"),
    0x0B: ("FAT32", "dos"),
    0x0C: ("FAT32LBA", "dos"),
    0x0E: ("FAT16X", "dos"),
    0x0F: ("EXTHUGE", ""),
    0x16: ("UNFORMATTED", ""),
    0x17: ("HPFS2", "hpfs2"),
    0x1C: ("IBMRECOVERY", "ibm"),
    0x39: ("PLAN9", "plan9"),
    0x52: ("CPM0", "cpm0"),
    0x54: ("DMDDO", "dmdd0"),
    0x56: ("GB", "gb"),
    0x61: ("SPEEDSTOR", "speedstor"),
    0x63: ("SYSV386", "sysv386"),
    0x64: ("NETWARE", "netware"),
    0x75: ("PCIX", "pcix"),
    0x80: ("MINIXV1.3", "minix13"),
    0x81: ("MINIXV1.5", "minix15"),
    0x82: ("LINUXSWAP", "linuxswap"),
    0x83: ("LINUX", "linux"),
    0x85: ("LINUXEXTENDED", ""),
    0x8E: ("LINUXLVM", "linuxlvm"),
    0x93: ("AMOEBA", "amoeba"),
    0x94: ("AMOEBABB", "amoebaboot"),
    0xA5: ("BSD386", "bsd386"),
    0xA6: ("OPENBSD", "openbsd"),
    0xA9: ("NETBSD", "netbsd"),
    0xB7: ("BSDI", "bsdi"),
    0xB8: ("BSDISWAP", "bsdiswap"),
    0xDA: ("OTHER", "other"),
    0xDB: ("CPM", "cpm"),
    0xDE: ("DELLRECOVERY", "dell"),
    0xE1: ("SPEEDSTOR12", "speedstor"),
    0xE4: ("SPEEDSTOR16", "speedstor"),
    0xEE: ("GPT", ""),
    0xEF: ("ESP", "esp"),
    0xFE: ("LANSTEP", "lanstep"),
    0xFF: ("BB", "bb"),
}


def type_desc(type_: int) -> str:
    """fdisk typestr0(): the type's description in TYPES, or `type N` for an unknown byte."""
    return TYPES[type_][0] if type_ in TYPES else f"type {type_}"


def has_magic(sector: bytes) -> bool:
    """Whether a (whole) sector ends in the 0x55 0xAA magic at MAGIC_OFFSET."""
    return sector[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def encode_chs(lba: int, heads: int, sectors: int) -> bytes:
    """fdisk writechs(): the 3 CHS bytes of sector `lba` in a heads x sectors geometry.

    Past cylinder 1023 the entry says 1023 / last head / last sector — the
    sector byte then holds `sectors - 1 + 1`, i.e. the last sector number.
    """
    s = lba % sectors
    h = (lba // sectors) % heads
    c = lba // (sectors * heads)
    if c >= 1024:
        c, h, s = 1023, heads - 1, sectors - 1
    return bytes((h & 0xFF, ((s + 1) & 0x3F) | ((c >> 2) & 0xC0), c & 0xFF))


def decode_chs(chs: bytes) -> tuple[int, int, int]:
    """fdisk Dfmt(): (cylinder, head, sector) of a 3-byte CHS field (sector counts from 1)."""
    return chs[2] | ((chs[1] & 0xC0) << 2), chs[0], chs[1] & 0x3F


_TENTRY = struct.Struct("<B3sB3sII")  # the fields of Tentry, in order


class Tentry(Record):
    """fdisk.c Tentry: one 16-byte partition entry of an MBR or EBR.

    `lba` and `size` are in 512-byte sectors (xlba, xsize; 32 bits each, so
    pack() raises struct.error past MAX_LBA); `start_chs`/`end_chs` are the
    raw 3-byte CHS fields.
    """

    FIELDS = ("active", "start_chs", "type", "end_chs", "lba", "size")
    __slots__ = FIELDS

    active: int
    start_chs: bytes  # starth, starts, startc
    type: int
    end_chs: bytes  # endh, ends, endc
    lba: int  # xlba: from the disk's start, or the extended partition's / this EBR's
    size: int  # xsize, sectors

    def __init__(
        self,
        active: int = 0,
        start_chs: bytes = b"\0\0\0",
        type: int = TYPE_EMPTY,
        end_chs: bytes = b"\0\0\0",
        lba: int = 0,
        size: int = 0,
    ) -> None:
        self.active = active
        self.start_chs = start_chs
        self.type = type
        self.end_chs = end_chs
        self.lba = lba
        self.size = size

    def pack(self) -> bytes:
        """The 16 bytes of the entry."""
        return _TENTRY.pack(self.active, self.start_chs, self.type, self.end_chs, self.lba,
                            self.size)

    @classmethod
    def unpack(cls, data: bytes) -> Tentry:
        """The entry in the first 16 bytes of `data` (struct.error if shorter)."""
        return cls(*_TENTRY.unpack(data[:TENTRY_SIZE]))

    @property
    def used(self) -> bool:
        """Whether the slot holds a partition (type not EMPTY)."""
        return self.type != TYPE_EMPTY

    @property
    def bootable(self) -> bool:
        """Whether the Active flag is set."""
        return bool(self.active & ACTIVE)

    @property
    def end(self) -> int:
        """The sector after the partition, relative to the same base as `lba`."""
        return self.lba + self.size

    @property
    def start_chs_values(self) -> tuple[int, int, int]:
        """(cylinder, head, sector) of the first sector."""
        return decode_chs(self.start_chs)

    @property
    def end_chs_values(self) -> tuple[int, int, int]:
        """(cylinder, head, sector) of the last sector."""
        return decode_chs(self.end_chs)

    @property
    def type_name(self) -> str:
        """fdisk's description of the type byte (see type_desc)."""
        return type_desc(self.type)


def pack_table(entries: Sequence[Tentry]) -> bytes:
    """fdisk.c Table: the TABLE_SIZE bytes written at TABLE_OFFSET (empty slots filled in)."""
    slots = list(entries) + [Tentry()] * (NTENTRY - len(entries))
    return b"".join(e.pack() for e in slots[:NTENTRY]) + MAGIC


def unpack_table(data: bytes) -> list[Tentry]:
    """The four entries of a table read from TABLE_OFFSET (the magic is the caller's to check)."""
    return [Tentry.unpack(data[i * TENTRY_SIZE : (i + 1) * TENTRY_SIZE]) for i in range(NTENTRY)]
