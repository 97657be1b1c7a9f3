"""disk/fdisk: the MBR partition table (primary entries and extended-partition chains).

The dist mkfile runs fdisk on partfs's `sdXX/data` in two ways:

* `disk/fdisk -baw`: forget the old table (-b), give the biggest free gap to
  one active Plan 9 partition (-a), write (-w).  The gap is counted in whole
  cylinders of libdisk's geometry; a partition starting at cylinder 0 starts
  one track (`disk->s` sectors) in, leaving sector 0 and the rest of the first
  track to the boot code.
* `disk/fdisk -b` with commands on stdin (`a p1 . .+100M`, `t p1 FAT32`,
  `A p1`, `w`, `q`): see imagebuild.partition.edit for the editor and its
  expression language; here the unit is one cylinder.

After a write fdisk registers every partition whose type has a name
(plan9, dos, esp, ...) with partfs, so later steps open `sdXX/plan9`.

Where we are stricter than 9front (it prints a warning and goes on): an
unknown type name in `t`, no room for the automatic Plan 9 partition, a
partition that does not fit the 32-bit LBA fields, a looping extended chain,
too many partitions on read.  Each is a LayoutError and nothing is written.

References: sys/src/cmd/disk/prep/fdisk.c, sys/src/libdisk/disk.c.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagebuild.disk.device import SECTOR_SIZE, BlockDevice, PartFS
from imagebuild.errors import ImageFormatError, LayoutError, UnsupportedImageError
from imagebuild.partition.edit import EditError, Editor, Output, Part, format_size
from imagebuild.partition.sector0 import (
    ACTIVE,
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
    TYPE_PLAN9,
    TYPES,
    Tentry,
    encode_chs,
    pack_table,
    type_desc,
    unpack_table,
)


def read_mbr(disk: BlockDevice) -> list[Tentry]:
    """The four primary slots of the MBR in sector 0 (empty slots included)."""
    table = disk.pread(TABLE_SIZE, TABLE_OFFSET)
    if table[-2:] != MAGIC:
        raise ImageFormatError(
            f"{disk.name}: sector 0 has no master boot record (magic {table[-2:].hex()})"
        )
    return unpack_table(table)


@dataclass(frozen=True)
class DosPartition:
    """A partition as fdisk lists it: absolute sectors, with its entry."""

    name: str  # pN or sN, in fdisk's numbering
    start: int
    end: int
    entry: Tentry
    primary: bool

    @property
    def size(self) -> int:
        return self.end - self.start


def read_partitions(disk: BlockDevice) -> list[DosPartition]:
    """Every partition of the MBR and its extended chain, as fdisk's rdpart() finds them."""
    reader = _TableReader(disk)
    reader.read(0, 0, 0)
    return sorted(reader.found, key=lambda p: p.start)


def partfs_names(disk: BlockDevice) -> list[tuple[str, int, int]]:
    """What `disk/fdisk -w` registers with partfs for the table on `disk`: (name, start, end)
    in sectors, named from the type (plan9, dos, esp, ...) and made unique as fdisk does."""
    editor = FdiskEditor(PartFS(disk))
    editor.rdpart()
    editor.assign_ctlnames()
    return [(p.ctlname, p.ctl_start(), p.ctl_end()) for p in editor.dosparts() if p.ctlname]


class _TableReader:
    """fdisk rdpart(): walk the MBR and the EBR chains (with a guard against loops)."""

    def __init__(self, disk: BlockDevice, editor: Editor | None = None) -> None:
        self.disk = disk
        self.editor = editor
        self.found: list[DosPartition] = []
        self.count = 0
        self.visited: set[int] = set()

    def table_at(self, sector: int) -> bytes:
        if sector * SECTOR_SIZE + SECTOR_SIZE > self.disk.size:
            raise ImageFormatError(
                f"{self.disk.name}: extended partition table at sector {sector} lies past the "
                f"end of the disk ({self.disk.secs} sectors)"
            )
        if self.editor is not None:  # see the editor's planned writes
            return self.editor.plan.pread(TABLE_SIZE, sector * SECTOR_SIZE + TABLE_OFFSET)
        return self.disk.pread(TABLE_SIZE, sector * SECTOR_SIZE + TABLE_OFFSET)

    def read(self, xbase: int, ebrstart: int, ebrtype: int) -> None:
        if ebrstart in self.visited:
            raise ImageFormatError(
                f"{self.disk.name}: extended partition chain loops back to sector {ebrstart}"
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
                self.found.append(
                    DosPartition(name, start, start + entry.size, entry, primary)
                )
                self.on_partition(name, start, entry, ebrstart, ebrtype)

    def on_partition(
        self, name: str, start: int, entry: Tentry, ebrstart: int, ebrtype: int
    ) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The fdisk editor
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class DosPart(Part):
    """fdisk.c Dospart: an editor part (in cylinders) with its entry's fields."""

    active: int = 0
    type: int = TYPE_EMPTY
    ebrtype: int = 0
    ebrstart: int = 0
    primary: bool = True


_OKNAME = re.compile(r"[ps](?:[ \t\n\f\r\v]*[+-]?[0-9]+)?")

FDISK_HELP = (
    "A name - set partition active\n"
    "R - restore disk back to initial configuration and exit\n"
    "t name [type] - set partition type\n"
)


class FdiskEditor(Editor):
    """fdisk.c over partfs's `data`: the editor's unit is one cylinder."""

    unit_name = "cylinder"

    def __init__(self, parts: PartFS, output: Output | None = None) -> None:
        dev = parts["data"]
        super().__init__(parts, dev, output)
        geometry = dev.geometry()  # at open, before anything is written
        self.heads, self.sectors = geometry.heads, geometry.sectors
        self.sec2cyl = self.heads * self.sectors
        self.unitsz = self.sec2cyl * dev.sector_size
        self.end = dev.secs // self.sec2cyl
        self.secs = dev.secs
        self._mkpart_count = 0
        self.table: list[Tentry] = []
        self._findmbr()

    # -- fdisk.c helpers --------------------------------------------------------------------
    def _findmbr(self) -> None:
        table = self.plan.pread(TABLE_SIZE, TABLE_OFFSET)
        if table[-2:] != MAGIC:
            raise LayoutError(
                f"{self.dev.name}: did not find master boot record "
                "(install boot code with disk/mbr first)"
            )

    def mkpart(
        self,
        name: str | None,
        lba: int,
        size: int,
        *,
        active: int = 0,
        type_: int = TYPE_EMPTY,
        ebrstart: int = 0,
        ebrtype: int = 0,
    ) -> DosPart:
        primary = ebrstart == 0 and ebrtype == 0
        if name is None:
            self._mkpart_count += 1
            name = f"{'p' if primary else 's'}{self._mkpart_count}"
        return DosPart(
            name,
            start=lba // self.sec2cyl,
            end=(lba + size + self.sec2cyl - 1) // self.sec2cyl,
            ctlstart=lba,
            ctlend=lba + size,
            active=active,
            type=type_,
            ebrstart=ebrstart,
            ebrtype=ebrtype,
            primary=primary,
        )

    def mkebrtype(self, end: int) -> int:
        return TYPE_EXTHUGE if end >= 1024 * self.sec2cyl else TYPE_EXTENDED

    def dosparts(self) -> list[DosPart]:
        return [p for p in self.parts if isinstance(p, DosPart)]

    def rdpart(self) -> None:
        """Read the existing MBR (and extended chains) into the part list."""
        editor = self

        class Reader(_TableReader):
            def on_partition(
                self, name: str, start: int, entry: Tentry, ebrstart: int, ebrtype: int
            ) -> None:
                part = editor.mkpart(
                    None, start, entry.size, active=entry.active, type_=entry.type,
                    ebrstart=ebrstart, ebrtype=ebrtype,
                )
                try:
                    editor.addpart(part)
                except EditError as err:
                    raise LayoutError(f"{editor.dev.name}: adding partition: {err}") from None

        Reader(self.dev, self).read(0, 0, 0)

    def haveroom(self, primary: bool, start: int) -> bool:
        parts = self.dosparts()
        if primary:
            # primary slots are taken by primary partitions and runs of secondary ones
            n = 0
            lastsec = False
            for p in parts:
                if p.primary:
                    n, lastsec = n + 1, False
                elif not lastsec:
                    n, lastsec = n + 1, True
            return n < 4
        n = 0
        for i, p in enumerate(parts):
            if p.primary:
                n += 1
            q = parts[i + 1] if i + 1 < len(parts) else None
            qstart = q.start if q is not None else self.end
            if start < p.end or start >= qstart:
                continue
            if not p.primary or (q is not None and not q.primary):
                return True
        return n < 4

    def autopart(self) -> None:
        """fdisk -a: an active Plan 9 partition in the biggest gap with a free primary slot."""
        parts = self.dosparts()
        if any(p.type == TYPE_PLAN9 for p in parts):
            return
        start = bigsize = bigstart = 0
        for p in parts:
            if p.start > start and p.start - start > bigsize and self.haveroom(True, start):
                bigsize, bigstart = p.start - start, start
            start = p.end
        if self.end - start > bigsize and self.haveroom(True, start):
            bigsize, bigstart = self.end - start, start
        if bigsize < 1:
            raise LayoutError(
                f"{self.dev.name}: couldn't find space or partition slot for plan 9 partition "
                f"(disk has {self.end} cylinders of {self.sec2cyl} sectors)"
            )
        active = ACTIVE
        if any(p.primary and p.active & ACTIVE for p in parts):
            active = 0  # active only if no other partition is
        bigsize *= self.sec2cyl
        bigstart *= self.sec2cyl
        if bigstart == 0:  # keep the first track for the boot code
            bigstart += self.sectors
            bigsize -= self.sectors
        part = self.mkpart(None, bigstart, bigsize, active=active, type_=TYPE_PLAN9)
        part.changed = True
        self.changed = True
        try:
            self.addpart(part)
        except EditError as err:
            raise LayoutError(f"{self.dev.name}: error adding plan9 partition: {err}") from None

    # -- editor hooks -----------------------------------------------------------------------
    def cmd_add(self, name: str, start: int, end: int) -> None:
        if not self.haveroom(name[0] == "p", start):
            raise EditError("no room for partition")
        start *= self.sec2cyl
        end *= self.sec2cyl
        if name[0] == "p":
            ebrtype = ebrstart = 0
            if start == 0:
                start += self.sectors
        else:
            if start == 0:
                start += self.sectors
            ebrtype = self.mkebrtype(end)
            ebrstart = start
            start += self.sectors
        part = self.mkpart(name, start, end - start, ebrstart=ebrstart, ebrtype=ebrtype)
        part.changed = True
        part.type = TYPE_PLAN9
        self.addpart(part)

    def cmd_okname(self, name: str) -> None:
        if _OKNAME.fullmatch(name) is None:
            raise EditError("name must be pN or sN")

    def cmd_help(self) -> None:
        self.print(FDISK_HELP + "\n")

    def cmd_sum(self, part: Part | None, a: int, b: int) -> None:
        dos = part if isinstance(part, DosPart) else None
        flags = "'" if dos and dos.changed else " "
        flags += "*" if dos and dos.active & ACTIVE else " "
        name = dos.name if dos else "empty"
        desc = type_desc(dos.type) if dos else ""
        size = (b - a) * self.dev.sector_size * self.sec2cyl
        w = self.width
        self.print(
            f"{flags} {name:<12} {a:>{w}} {b:<{w}} ({b - a} cylinders, {format_size(size)}) "
            f"{desc}\n"
        )

    def cmd_ext(self, args: list[str]) -> None:
        command = args[0]
        if command == "A":
            self.cmd_active(args)
        elif command == "t":
            self.cmd_type(args)
        elif command == "R":
            # recover(): put the old tables back and exit; nothing was written yet
            self.plan.writes.clear()
            self.ctl_ops.clear()
            raise LayoutError("R: partition tables restored to their initial state")
        else:
            raise EditError(f"unknown command {command!r}")

    def cmd_active(self, args: list[str]) -> None:
        if len(args) != 2:
            raise EditError("args")
        if args[1][:1] != "p":
            raise EditError("cannot set secondary partition active")
        part = self.findpart(args[1])
        if not isinstance(part, DosPart):
            raise EditError("unknown partition")
        for other in self.dosparts():
            if other.active & ACTIVE:
                other.active &= ~ACTIVE
                other.changed = True
                self.changed = True
        if not part.active & ACTIVE:
            part.active |= ACTIVE
            part.changed = True
            self.changed = True

    def cmd_type(self, args: list[str]) -> None:
        if len(args) < 2:
            raise EditError("args")
        part = self.findpart(args[1])
        if not isinstance(part, DosPart):
            raise EditError("unknown partition")
        if len(args) == 2:
            while True:  # "new partition type [? for list]: "
                text = self.getline()
                if not text.startswith("?"):
                    break
                self.print(_type_list())
        else:
            text = args[2]
        wanted = text.upper()
        for type_, (desc, _) in sorted(TYPES.items()):
            if desc == wanted:
                if part.type != type_:
                    part.type = type_
                    part.changed = True
                    self.changed = True
                return
        raise EditError(f"unknown partition type {text!r} (t p1 ? lists them)")

    def cmd_write(self) -> None:
        self.wrpart()

    def cmd_printctl(self) -> None:
        self.assign_ctlnames()
        super().cmd_printctl()

    # -- writing ----------------------------------------------------------------------------
    def entry(self, active: int, type_: int, xbase: int, lba: int, end: int) -> Tentry:
        """fdisk wrtentry(): CHS from absolute sectors, lba relative to xbase."""
        if lba - xbase > MAX_LBA or end - lba > MAX_LBA or end > MAX_LBA + 1 + xbase:
            raise LayoutError(
                f"{self.dev.name}: partition at sectors {lba}..{end} does not fit the 32-bit "
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

    def _write_table(self, sector: int, entries: list[Tentry]) -> None:
        self.plan.pwrite(pack_table(entries), sector * SECTOR_SIZE + TABLE_OFFSET)

    def wrextend(self, i: int, xbase: int, startlba: int) -> tuple[int, int]:
        """fdisk wrextend(): the EBR chain from part i on; returns (next part, end of chain)."""
        parts = self.dosparts()
        if i == len(parts) or parts[i].primary:
            endlba = self.secs if i == len(parts) else startlba
            if startlba < endlba:  # an empty EBR closes the chain
                self._write_table(startlba, [])
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
                nextebrtype = self.mkebrtype(endlba)
            entries.append(self.entry(0, nextebrtype, xbase, nextebrstart, endlba))
        self._write_table(startlba, entries)
        return ni, endlba

    def wrpart(self) -> None:
        parts = self.dosparts()
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
            raise LayoutError(f"{self.dev.name}: more than four primary slots needed")
        # the magic already there stays (findmbr checked it)
        self.plan.pwrite(pack_table(table)[:-2], TABLE_OFFSET)
        self.table = table + [Tentry()] * (NTENTRY - len(table))
        self.assign_ctlnames()
        self.queue_ctldiff()

    def assign_ctlnames(self) -> None:
        """fdisk plan9print(): partfs names from the type (plan9, dos, ...), made unique."""
        taken: set[str] = set()
        for p in self.dosparts():
            vname = TYPES.get(p.type, ("", ""))[1]
            if not vname:
                p.ctlname = ""
                continue
            sep = "." if vname[-1].isdigit() else ""  # avoid names like plan90
            name, i = vname, 0
            while name in taken:
                i += 1
                name = f"{vname}{sep}{i}"
            taken.add(name)
            p.ctlname = name


def _type_list() -> str:
    """fdisk dumplist(): the type descriptions, four to a line."""
    descs = [desc for _, (desc, _) in sorted(TYPES.items())]
    lines = ["".join(f"{d:<16}" for d in descs[i : i + 4]) for i in range(0, len(descs), 4)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def fdisk_auto(
    parts: PartFS, *, blank: bool = True, output: Output | None = None
) -> list[Tentry]:
    """`disk/fdisk -baw sdXX/data`: one active Plan 9 partition over the disk, registered."""
    editor = FdiskEditor(parts, output)
    if blank:
        editor.changed = True
    else:
        editor.rdpart()
    editor.autopart()
    editor.runcmd("w")
    editor.commit()
    return editor.table


def fdisk_script(
    parts: PartFS,
    script: str,
    *,
    source: str = "<fdisk script>",
    blank: bool = True,
    output: Output | None = None,
) -> list[Tentry]:
    """`disk/fdisk [-b] sdXX/data` reading commands from `script`; the primary slots after it.

    Any command 9front answers with `?message` raises LayoutError
    "SOURCE:LINE: message" and leaves the disk and partfs untouched.
    """
    editor = FdiskEditor(parts, output)
    if blank:
        editor.changed = True
    else:
        editor.rdpart()
    editor.runcmd("p")  # fdisk prints the table before reading commands
    editor.run_script(script, source)
    editor.commit()
    return read_mbr(parts["data"])


def verify_with_libparted(disk: BlockDevice, entries: Sequence[Tentry]) -> None:
    """Read the table back with libparted and raise LayoutError where it disagrees.

    libparted wants a file, so sector 0 and every EBR go into a sparse scratch
    file of the disk's size.
    """
    import parted  # heavy; only when asked

    used = [(slot, e) for slot, e in enumerate(entries) if e.used]
    logical = [p for p in read_partitions(disk) if not p.primary]
    with tempfile.TemporaryDirectory(prefix="imagebuild-parted-") as tmp:
        path = os.path.join(tmp, "disk.img")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, disk.size)
            os.pwrite(fd, disk.pread(SECTOR_SIZE, 0), 0)
            for ebr in _ebr_sectors(disk):
                os.pwrite(fd, disk.pread(SECTOR_SIZE, ebr * SECTOR_SIZE), ebr * SECTOR_SIZE)
        finally:
            os.close(fd)
        try:
            pdisk = parted.newDisk(parted.getDevice(path))
        except Exception as err:  # pyparted raises its own exception zoo
            raise LayoutError(f"{disk.name}: libparted cannot read the table: {err}") from None
        if pdisk.type != "msdos":
            raise LayoutError(f"{disk.name}: libparted reads a {pdisk.type!r} label, not msdos")
        theirs = {p.number: p for p in pdisk.partitions}
        want_numbers = {slot + 1 for slot, _ in used} | set(range(5, 5 + len(logical)))
        if set(theirs) != want_numbers:
            raise LayoutError(
                f"{disk.name}: libparted sees partitions {sorted(theirs)}, "
                f"the table has {sorted(want_numbers)}"
            )
        checks: list[tuple[int, int, int, int, bool]] = [
            (slot + 1, e.lba, e.size, e.type, e.bootable) for slot, e in used
        ]
        checks += [
            (5 + i, p.start, p.size, p.entry.type, p.entry.bootable) for i, p in enumerate(logical)
        ]
        for number, start, size, type_, boot in checks:
            part = theirs[number]
            extended = bool(part.type & parted.PARTITION_EXTENDED)
            if extended != (type_ in EXTENDED_TYPES):
                raise LayoutError(
                    f"{disk.name}: partition {number}: libparted and the table disagree on "
                    f"whether it is an extended partition (type {type_:#04x})"
                )
            boot_flag = bool(part.getFlag(parted.PARTITION_BOOT))
            got = (part.geometry.start, part.geometry.length, boot_flag)
            if got != (start, size, boot):
                raise LayoutError(
                    f"{disk.name}: partition {number}: libparted reads start/size/boot "
                    f"{got}, the table says {(start, size, boot)}"
                )
            if not extended:
                _check_parted_type(disk.name, number, part, type_)


# Flags libparted 3.5 derives from an msdos entry's type byte (it cannot report the byte).
_PARTED_TYPE_FLAGS = {"lba": (0x0C, 0x0E), "esp": (0xEF,), "lvm": (0x8E,), "swap": (0x82,),
                      "raid": (0xFD,)}
_HIDDEN_TYPES = (0x11, 0x14, 0x16, 0x17, 0x1B, 0x1C, 0x1E)


def _check_parted_type(name: str, number: int, part: Any, type_: int) -> None:
    """The type byte when pyparted can read it (libparted >= 3.6), else the flags it implies."""
    try:
        theirs = part.type_id
    except NotImplementedError:
        theirs = None
    if theirs is not None:
        if theirs != type_:
            raise LayoutError(
                f"{name}: partition {number}: libparted reads type {theirs:#04x}, "
                f"the table says {type_:#04x}"
            )
        return
    if type_ in _HIDDEN_TYPES:
        return
    import parted

    flags = {v: k for k, v in parted.partitionFlag.items()}
    for flag, types in _PARTED_TYPE_FLAGS.items():
        if flag not in flags or not part.isFlagAvailable(flags[flag]):
            continue
        if bool(part.getFlag(flags[flag])) != (type_ in types):
            raise LayoutError(
                f"{name}: partition {number}: libparted's {flag} flag does not match "
                f"type {type_:#04x}"
            )


def _ebr_sectors(disk: BlockDevice) -> list[int]:
    """Sectors holding extended boot records, following the chains from the MBR."""
    found: list[int] = []

    class Collect(_TableReader):
        def read(self, xbase: int, ebrstart: int, ebrtype: int) -> None:
            if ebrstart:
                found.append(ebrstart)
            super().read(xbase, ebrstart, ebrtype)

    Collect(disk).read(0, 0, 0)
    return found
