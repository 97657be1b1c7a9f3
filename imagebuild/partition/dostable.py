"""fdisk's back end: the MBR and the extended boot record chains, read and written.

A disk's DOS partitions are the used entries of the MBR (primary, `pN`) and
of the EBR chains that its extended entries lead to (secondary, `sN`).  In an
EBR the first entry is a partition, `lba` counted from that EBR's sector; the
second, when present, links to the next EBR, `lba` counted from the start of
the outermost extended partition (`xbase`).  fdisk writes every EBR chain
from the sector the extended partition starts at, one EBR a track before
each secondary partition, and closes a chain with an empty EBR when space is
left.

Where we are stricter than 9front: a GPT's protective entry, a chain that
loops, runs off the disk or links more than MAX_CHAIN tables, and a partition
that does not fit the entries' 32-bit fields are errors (ImageFormatError,
UnsupportedImageError, LayoutError) where fdisk would loop, read garbage or
truncate.

References: sys/src/cmd/disk/prep/fdisk.c (rdpart, wrpart, wrextend,
wrtentry, mkebrtype, Dospart).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imagebuild.disk.device import SECTOR_SIZE, BlockDevice
from imagebuild.errors import ImageFormatError, LayoutError, UnsupportedImageError
from imagebuild.partition.plan import Part
from imagebuild.partition.sector0 import (
    EXTENDED_TYPES,
    MAGIC,
    MAX_LBA,
    NTENTRY,
    TABLE_OFFSET,
    TABLE_SIZE,
    TYPE_EMPTY,
    TYPE_EXTENDED,
    TYPE_EXTHUGE,
    TYPE_GPT,
    Tentry,
    encode_chs,
    pack_table,
    unpack_table,
)
from imagebuild.util.record import Record

MAX_CHAIN = 128  # tables (MBR + EBRs) read on one chain before we call it corrupt

Pread = Callable[[int, int], bytes]  # (size, offset) -> bytes, as BlockDevice.pread


class DosPart(Part):
    """fdisk.c Dospart: an editor part (start/end in cylinders) with its entry's fields.

    ctlstart/ctlend are the partition's sectors on the disk; ebrstart/ebrtype
    are the EBR in front of a secondary partition and the type of the entry
    that links to it (0 for a primary partition).
    """

    __slots__ = ("active", "ebrstart", "ebrtype", "primary", "type")

    def __init__(self, name: str, *, start: int = 0, end: int = 0, ctlstart: int = 0,
                 ctlend: int = 0, active: int = 0, type: int = TYPE_EMPTY, ebrtype: int = 0,
                 ebrstart: int = 0, primary: bool = True) -> None:
        super().__init__(name, start=start, end=end, ctlstart=ctlstart, ctlend=ctlend)
        self.active = active
        self.type = type
        self.ebrtype = ebrtype
        self.ebrstart = ebrstart
        self.primary = primary


class DosPartition(Record):
    """A partition as fdisk lists it: absolute sectors [start, end), with its entry."""

    FIELDS = ("name", "start", "end", "entry", "primary")
    __slots__ = FIELDS

    name: str  # pN or sN, in fdisk's numbering
    start: int
    end: int
    entry: Tentry
    primary: bool

    def __init__(self, name: str, start: int, end: int, entry: Tentry, primary: bool) -> None:
        self.name = name
        self.start = start
        self.end = end
        self.entry = entry
        self.primary = primary

    @property
    def size(self) -> int:
        """Sectors."""
        return self.end - self.start


def read_mbr(disk: BlockDevice) -> list[Tentry]:
    """The four primary slots of the MBR in sector 0 (empty slots included).

    Raises ImageFormatError (naming the disk) when sector 0 has no magic.
    """
    table = disk.pread(TABLE_SIZE, TABLE_OFFSET)
    if table[-2:] != MAGIC:
        raise ImageFormatError(
            f"{disk.name}: sector 0 has no master boot record (magic {table[-2:].hex()})"
        )
    return unpack_table(table)


def read_partitions(disk: BlockDevice) -> list[DosPartition]:
    """Every partition of the MBR and its extended chains, sorted by start, as rdpart() finds them.

    Raises ImageFormatError / UnsupportedImageError as TableReader.read does.
    """
    reader = TableReader(disk)
    reader.read(0, 0, 0)
    return sorted(reader.found, key=lambda p: p.start)


class TableReader:
    """fdisk rdpart(): walk the MBR and the EBR chains, calling on_partition for each partition.

    `pread` reads the disk (default: disk.pread); the editor passes its
    planned writes' view.  Raises ImageFormatError for a chain that loops,
    runs past the disk or is longer than MAX_CHAIN tables, and
    UnsupportedImageError for a GPT's protective entry.
    """

    def __init__(self, disk: BlockDevice, pread: Pread | None = None) -> None:
        self.disk = disk
        self.pread = pread if pread is not None else disk.pread
        self.found: list[DosPartition] = []
        self.count = 0
        self.visited: set[int] = set()

    def table_at(self, sector: int) -> bytes:
        """The TABLE_SIZE bytes of the table in `sector` (entries and magic)."""
        if sector * SECTOR_SIZE + SECTOR_SIZE > self.disk.size:
            raise ImageFormatError(
                f"{self.disk.name}: extended partition table at sector {sector} lies past the "
                f"end of the disk ({self.disk.secs} sectors)"
            )
        return self.pread(TABLE_SIZE, sector * SECTOR_SIZE + TABLE_OFFSET)

    def read(self, xbase: int, ebrstart: int, ebrtype: int) -> None:
        """Read the table at `ebrstart` (0: the MBR) and the chains it leads to."""
        if ebrstart in self.visited:
            raise ImageFormatError(
                f"{self.disk.name}: extended partition chain loops back to sector {ebrstart}"
            )
        if len(self.visited) >= MAX_CHAIN:
            raise ImageFormatError(
                f"{self.disk.name}: extended partition chains link more than {MAX_CHAIN} tables"
            )
        self.visited.add(ebrstart)
        if xbase == 0:
            xbase = ebrstart
        table = self.table_at(ebrstart)
        if table[-2:] != MAGIC:
            return
        for entry in unpack_table(table):
            if entry.type == TYPE_EMPTY:
                continue
            if entry.type in EXTENDED_TYPES:
                self.read(xbase, xbase + entry.lba, entry.type)
            elif entry.type == TYPE_GPT:
                raise UnsupportedImageError(
                    f"{self.disk.name}: disk uses GPT partition format (protective MBR entry)"
                )
            else:
                primary = ebrstart == 0 and ebrtype == 0
                self.count += 1
                name = f"{'p' if primary else 's'}{self.count}"
                start = ebrstart + entry.lba
                self.found.append(DosPartition(name, start, start + entry.size, entry, primary))
                self.on_partition(name, start, entry, ebrstart, ebrtype)

    def on_partition(
        self, name: str, start: int, entry: Tentry, ebrstart: int, ebrtype: int
    ) -> None:
        """Called for each partition found, in disk order of the tables; does nothing here."""


def ebr_sectors(disk: BlockDevice) -> list[int]:
    """Sectors holding extended boot records, following the chains from the MBR."""
    found: list[int] = []

    class Collect(TableReader):
        def read(self, xbase: int, ebrstart: int, ebrtype: int) -> None:
            if ebrstart:
                found.append(ebrstart)
            super().read(xbase, ebrstart, ebrtype)

    Collect(disk).read(0, 0, 0)
    return found


def mkebrtype(end: int, sec2cyl: int) -> int:
    """fdisk mkebrtype(): EXTHUGE for a chain ending past cylinder 1023, else EXTENDED."""
    return TYPE_EXTHUGE if end >= 1024 * sec2cyl else TYPE_EXTENDED


class TableWriter:
    """fdisk wrpart(): the tables for a list of DosParts (sorted by start), in write order.

    `name` names the disk in errors; heads and sectors are its libdisk
    geometry, `secs` its size in sectors.  tables() raises LayoutError for a
    partition that does not fit the 32-bit fields or more than four primary
    slots.
    """

    def __init__(self, name: str, heads: int, sectors: int, secs: int) -> None:
        self.name = name
        self.heads, self.sectors, self.secs = heads, sectors, secs
        self.sec2cyl = heads * sectors
        self.writes: list[tuple[int, list[Tentry]]] = []
        self.parts: Sequence[DosPart] = ()

    def entry(self, active: int, type_: int, xbase: int, lba: int, end: int) -> Tentry:
        """fdisk wrtentry(): CHS from absolute sectors, lba relative to xbase."""
        if lba - xbase > MAX_LBA or end - lba > MAX_LBA or end > MAX_LBA + 1 + xbase:
            raise LayoutError(
                f"{self.name}: partition at sectors {lba}..{end} does not fit the 32-bit "
                "sector fields of an MBR entry"
            )
        return Tentry(
            active=active,
            start_chs=encode_chs(lba, self.heads, self.sectors),
            type=type_,
            end_chs=encode_chs(end - 1, self.heads, self.sectors),
            lba=lba - xbase,
            size=end - lba,
        )

    def wrextend(self, i: int, xbase: int, startlba: int) -> tuple[int, int]:
        """fdisk wrextend(): the EBR chain from part i on; returns (next part, end of chain)."""
        parts = self.parts
        if i == len(parts) or parts[i].primary:
            endlba = self.secs if i == len(parts) else startlba
            if startlba < endlba:  # an empty EBR closes the chain
                self.writes.append((startlba, []))
            return i, endlba
        p = parts[i]
        nextebrtype = TYPE_EMPTY
        if i + 1 >= len(parts):
            nextebrstart = p.ctlend
        else:
            x = parts[i + 1]
            if x.primary:
                nextebrstart = x.ctlstart
            else:
                nextebrstart, nextebrtype = x.ebrstart, x.ebrtype
        ni, endlba = self.wrextend(i + 1, xbase, nextebrstart)
        entries = [self.entry(p.active, p.type, startlba, p.ctlstart, p.ctlend)]
        if nextebrstart != endlba:
            if nextebrtype == TYPE_EMPTY:
                nextebrtype = mkebrtype(endlba, self.sec2cyl)
            entries.append(self.entry(0, nextebrtype, xbase, nextebrstart, endlba))
        self.writes.append((startlba, entries))
        return ni, endlba

    def tables(self, parts: Sequence[DosPart]) -> tuple[list[Tentry], list[tuple[int, bytes]]]:
        """(the MBR's primary slots, [(sector, TABLE_SIZE bytes of an EBR)] in write order)."""
        self.parts, self.writes = parts, []
        table: list[Tentry] = []
        i = 0
        while i < len(parts) and len(table) < NTENTRY:
            p = parts[i]
            if p.primary:
                table.append(self.entry(p.active, p.type, 0, p.ctlstart, p.ctlend))
                i += 1
            else:
                ni, endlba = self.wrextend(i, p.ebrstart, p.ebrstart)
                table.append(self.entry(0, p.ebrtype, 0, p.ebrstart, endlba))
                i = ni
        if i != len(parts):
            raise LayoutError(f"{self.name}: more than four primary slots needed")
        slots = table + [Tentry()] * (NTENTRY - len(table))
        return slots, [(sector, pack_table(entries)) for sector, entries in self.writes]
