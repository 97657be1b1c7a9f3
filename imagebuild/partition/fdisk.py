"""disk/fdisk: the MBR partition table (primary entries and extended-partition chains).

The dist mkfile runs fdisk on partfs's `sdXX/data` in two ways:

* `disk/fdisk -baw`: forget the old table (-b), give the biggest free gap to
  one active Plan 9 partition (-a), write (-w).  The gap is counted in whole
  cylinders of libdisk's geometry; a partition starting at cylinder 0 starts
  one track (`disk->s` sectors) in, leaving sector 0 and the rest of the first
  track to the boot code.
* `disk/fdisk -b` with commands on stdin (`a p1 . .+100M`, `t p1 FAT32`,
  `A p1`, `w`, `q`): see imagebuild.partition.edit for the editor and
  imagebuild.partition.calc for its expressions; here the unit is one
  cylinder.  The tables themselves are read and written by
  imagebuild.partition.dostable.

After a write fdisk registers every partition whose type has a name
(plan9, dos, esp, ...) with partfs, so later steps open `sdXX/plan9`.

Where we are stricter than 9front (it prints a warning and goes on): an
unknown type name in `t`, no room for the automatic Plan 9 partition, a
partition that does not fit the 32-bit LBA fields, a looping extended chain,
too many partitions on read.  Each is a LayoutError and nothing is written.

References: sys/src/cmd/disk/prep/fdisk.c, sys/src/libdisk/disk.c.
"""

from __future__ import annotations

import re

from imagebuild.disk.device import SECTOR_SIZE, BlockDevice, PartFS
from imagebuild.errors import LayoutError
from imagebuild.partition.dostable import (
    DosPart,
    TableReader,
    TableWriter,
    mkebrtype,
    read_mbr,
)
from imagebuild.partition.edit import EditError, Editor, Output, cmdsum_size
from imagebuild.partition.plan import Part
from imagebuild.partition.sector0 import (
    ACTIVE,
    MAGIC,
    TABLE_OFFSET,
    TABLE_SIZE,
    TYPE_EMPTY,
    TYPE_PLAN9,
    TYPES,
    Tentry,
    pack_table,
    type_desc,
)

# ---------------------------------------------------------------------------------------------
# The fdisk editor
# ---------------------------------------------------------------------------------------------
_OKNAME = r"[ps](?:[ \t\n\f\r\v]*[+-]?[0-9]+)?"  # compiled on first use: only scripts name parts

FDISK_HELP = (
    "A name - set partition active\n"
    "R - restore disk back to initial configuration and exit\n"
    "t name [type] - set partition type\n"
)


class FdiskEditor(Editor):
    """fdisk.c over partfs's `data`: the editor's unit is one cylinder of libdisk's geometry.

    Raises LayoutError at once when sector 0 has no MBR magic (fdisk's
    findmbr: run disk/mbr first).
    """

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
        """fdisk mkpart(): a DosPart over sectors [lba, lba+size), its cylinders rounded outwards;
        name None numbers it pN/sN in reading order.
        """
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

    def dosparts(self) -> list[DosPart]:
        """The part list (every part of this editor is a DosPart)."""
        return [p for p in self.parts if isinstance(p, DosPart)]

    def rdpart(self) -> None:
        """Read the existing MBR (and extended chains) into the part list."""
        editor = self

        class Reader(TableReader):
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

        Reader(self.dev, self.plan.pread).read(0, 0, 0)

    def haveroom(self, primary: bool, start: int) -> bool:
        """fdisk haveroom(): whether a primary (or secondary) partition may start at cylinder
        `start` within the four MBR slots.
        """
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
        """fdisk cmdadd(): a Plan 9 partition over cylinders [start, end); pN is primary, sN
        secondary with its EBR a track in.
        """
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
            ebrtype = mkebrtype(end, self.sec2cyl)
            ebrstart = start
            start += self.sectors
        part = self.mkpart(name, start, end - start, ebrstart=ebrstart, ebrtype=ebrtype)
        part.changed = True
        part.type = TYPE_PLAN9
        self.addpart(part)

    def cmd_okname(self, name: str) -> None:
        """fdisk cmdokname(): names are pN or sN."""
        if re.fullmatch(_OKNAME, name) is None:
            raise EditError("name must be pN or sN")

    def cmd_help(self) -> None:
        """fdisk cmdhelp(): the A, R and t lines."""
        self.print(FDISK_HELP + "\n")

    def cmd_sum(self, part: Part | None, a: int, b: int) -> None:
        """fdisk cmdsum(): `'* name start end (N cylinders, SIZE) TYPE`."""
        dos = part if isinstance(part, DosPart) else None
        flags = "'" if dos and dos.changed else " "
        flags += "*" if dos and dos.active & ACTIVE else " "
        name = dos.name if dos else "empty"
        desc = type_desc(dos.type) if dos else ""
        size = (b - a) * self.dev.sector_size * self.sec2cyl
        w = self.width
        self.print(
            f"{flags} {name:<12} {a:>{w}} {b:<{w}} ({b - a} cylinders, {cmdsum_size(size)}) "
            f"{desc}\n"
        )

    def cmd_ext(self, args: list[str]) -> None:
        """fdisk cmdext(): A, t and R; EditError for anything else."""
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
        """`A pN`: make pN the only active partition."""
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
        """`t name [type]`: set the type by its description (prompting when missing); EditError if
        unknown.
        """
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
        """`w`: wrpart()."""
        self.wrpart()

    def cmd_printctl(self) -> None:
        """`P`: name the parts for partfs first, as fdisk does."""
        self.assign_ctlnames()
        super().cmd_printctl()

    # -- writing ----------------------------------------------------------------------------
    def wrpart(self) -> None:
        """fdisk wrpart(): plan the EBRs and the MBR's slots (its magic stays), then partfs."""
        writer = TableWriter(self.dev.name, self.heads, self.sectors, self.secs)
        self.table, ebrs = writer.tables(self.dosparts())
        for sector, table in ebrs:
            self.plan.pwrite(table, sector * SECTOR_SIZE + TABLE_OFFSET)
        self.plan.pwrite(pack_table(self.table)[:-len(MAGIC)], TABLE_OFFSET)
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
    """`disk/fdisk -baw sdXX/data`: one active Plan 9 partition over the disk, registered.

    blank=False keeps the partitions already there (no -b).  Returns the
    four MBR slots written.  Raises LayoutError (naming the disk) when there
    is no MBR or no room; nothing is written then.
    """
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


def partfs_names(disk: BlockDevice) -> list[tuple[str, int, int]]:
    """What `disk/fdisk -w` registers with partfs for the table on `disk`: (name, start, end)
    in sectors, named from the type (plan9, dos, esp, ...) and made unique as fdisk does."""
    editor = FdiskEditor(PartFS(disk))
    editor.rdpart()
    editor.assign_ctlnames()
    return [(p.ctlname, p.ctl_start(), p.ctl_end()) for p in editor.dosparts() if p.ctlname]
