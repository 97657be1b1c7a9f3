"""disk/prep: the Plan 9 partition table, a text file in sector 1 of the plan9 partition.

The table is lines `part NAME START END` (sectors relative to the plan9
partition, END exclusive), NUL-padded to one sector.  Sector 0 belongs to the
partition boot sector; only `9fat` may start below sector 2 — it starts at 0,
so its FAT's reserved sectors (format -r 2) cover the boot sector and the
table.

`disk/prep -bw -a 9fat -a nvram -a fs sdXX/plan9` (the dist mkfile) lays out
the named automatic partitions in the fixed order of prep.c's autox[] table,
sizing them by weight within each one's minimum and maximum (see `AUTO` and
`autopartition`), writes the table and registers the partitions with partfs.

Where we are stricter than 9front: a partition too small for the minimum
sizes (9front writes an empty table, or a clipped last partition), a table
longer than one sector (9front truncates it), overlapping explicit partitions
and malformed tables on read are LayoutError / ImageFormatError, and nothing
is written.

References: sys/src/cmd/disk/prep/prep.c, edit.c; sys/src/libdisk/disk.c.
"""

from __future__ import annotations

from collections.abc import Sequence

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import ImageFormatError, LayoutError
from imagebuild.partition.edit import (
    EditError,
    Editor,
    Output,
    cmdsum_size,
)
from imagebuild.partition.plan import Part
from imagebuild.plan9.libc import getfields, strtoll, strtoull
from imagebuild.util.record import Record

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
TABLE_SECTOR = 1
PBS_MAGIC = b"\xeb\x3c\x90"  # checkfat(): a FAT boot sector where the table would go


class AutoPart(Record):
    """prep.c Auto: an automatic partition's size rules, in bytes."""

    FIELDS = ("name", "min", "max", "weight")
    __slots__ = FIELDS

    name: str
    min: int
    max: int  # 0: no maximum
    weight: int

    def __init__(self, name: str, min: int, max: int, weight: int) -> None:
        self.name = name
        self.min = min
        self.max = max
        self.weight = weight


# prep.c autox[]: the order is the layout order on disk.
AUTO: tuple[AutoPart, ...] = (
    AutoPart("9fat", 10 * MB, 100 * MB, 10),
    AutoPart("nvram", 512, 512, 1),
    AutoPart("fscfg", 512, 512, 1),
    AutoPart("fs", 200 * MB, 0, 10),
    AutoPart("fossil", 200 * MB, 0, 4),
    AutoPart("arenas", 500 * MB, 0, 20),
    AutoPart("isect", 25 * MB, 0, 1),
    AutoPart("bloom", 4 * MB, 512 * MB, 1),
    AutoPart("other", 200 * MB, 0, 4),
    AutoPart("swap", 100 * MB, 512 * MB, 1),
    AutoPart("cache", 50 * MB, 1 * GB, 2),
    AutoPart("fscache", 200 * MB, 0, 4),
    AutoPart("fsworm", 500 * MB, 0, 20),
)
AUTO_NAMES = tuple(a.name for a in AUTO)


class Plan9Partition(Record):
    """One line of the table: sectors [start, end) of the plan9 partition."""

    FIELDS = ("name", "start", "end")
    __slots__ = FIELDS

    name: str
    start: int
    end: int

    def __init__(self, name: str, start: int, end: int) -> None:
        self.name = name
        self.start = start
        self.end = end

    @property
    def size(self) -> int:
        """Sectors."""
        return self.end - self.start

    def line(self) -> str:
        """The table line `part NAME START END\n`."""
        return f"part {self.name} {self.start} {self.end}\n"


def pack_table(partitions: Sequence[Plan9Partition], sector_size: int = 512) -> bytes:
    """prep wrpart(): the table text, NUL-padded to one sector."""
    text = "".join(p.line() for p in partitions).encode()
    if len(text) > sector_size - 1:  # snprint would cut it (and keep a NUL)
        raise LayoutError(
            f"partition table: {len(text)} bytes of text do not fit in one "
            f"{sector_size}-byte sector"
        )
    return text + bytes(sector_size - len(text))


def unpack_table(
    sector: bytes, *, secs: int | None = None, strict: bool = True, where: str = "plan9"
) -> list[Plan9Partition]:
    """prep rdpart(): parse the table text of sector 1.

    No table (the sector does not start with `part`) reads as [].  With
    strict=False a malformed line is skipped as prep skips it (numbers are
    their numeric prefix) and bytes that are not UTF-8 read as U+FFFD; with
    strict=True each raises ImageFormatError naming `where`, and so do
    partitions past `secs` or overlapping.  A name used twice always raises
    (prep refuses to go on).
    """
    raw = sector.split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if strict:
            raise ImageFormatError(
                f"{where}: partition table: byte {raw[err.start]:#04x} at offset {err.start} "
                f"of sector {TABLE_SECTOR} is not UTF-8"
            ) from None
        text = raw.decode("utf-8", errors="replace")  # prep keeps the bytes; names show U+FFFD
    if not text.startswith("part"):
        return []
    found: list[Plan9Partition] = []
    for line in getfields(text, "\n", 128):
        fields = getfields(line, " \t\r", 5)
        problem = ""
        if not line.startswith("part") or len(fields) != 4 or fields[0] != "part":
            problem = "expected 'part NAME START END'"
        else:
            a, b = strtoll(fields[2]), strtoll(fields[3])
            if strict and not all(_whole_number(f) for f in fields[2:]):
                problem = "start and end must be numbers"
            elif a >= b:
                problem = f"start {a} is not below end {b}"
            elif strict and (a < 0 or (secs is not None and b > secs)):
                problem = f"sectors {a}..{b} lie outside the partition ({secs} sectors)"
        if problem:
            if strict:
                raise ImageFormatError(f"{where}: partition table line {line!r}: {problem}")
            continue
        name = fields[1]
        if any(p.name == name for p in found):
            raise ImageFormatError(f'{where}: already have partition with name "{name}"')
        if strict:
            for p in found:
                if a < p.end and p.start < b:
                    raise ImageFormatError(
                        f'{where}: partition "{name}" {a}-{b} overlaps "{p.name}" '
                        f"{p.start}-{p.end}"
                    )
        found.append(Plan9Partition(name, a, b))
    return found


def _whole_number(text: str) -> bool:
    _, end = strtoull(text)
    return end == len(text) and text[:1] not in (" ", "\t", "+")


def read_table(dev: BlockDevice, *, strict: bool = True) -> list[Plan9Partition]:
    """The Plan 9 partition table in sector 1 of `dev`, sorted by start as prep keeps it.

    Errors (see unpack_table) name the whole disk and the partition.
    """
    if dev.secs <= TABLE_SECTOR:
        return []
    where = dev.name if dev.whole is dev else f"{dev.whole.name} {dev.name}"
    parts = unpack_table(
        dev.read_sectors(TABLE_SECTOR), secs=dev.secs, strict=strict, where=where
    )
    return sorted(parts, key=lambda p: p.start)


# ---------------------------------------------------------------------------------------------
# Automatic partitions
# ---------------------------------------------------------------------------------------------
def autopartition(
    names: Sequence[str],
    secs: int,
    sector_size: int = 512,
    *,
    offset: int = 0,
    where: str = "plan9",
) -> list[Plan9Partition]:
    """prep autoxpart(): the automatic layout of `names` over a partition of `secs` sectors.

    Sizes: every unsized partition is offered its weight's share of what is
    left; the first one whose share is under its minimum gets the minimum (and
    the round starts again), then the first one over its maximum gets the
    maximum; when neither applies all take their shares, each rounded down and
    the rest passed on, so the shares use every sector.  Layout: in autox[]
    order from sector 0 when 9fat is asked for, else from sector 2 (after the
    boot sector and the table); a partition running past the end stops one
    stride short of it (9front's rule: with partfs's one-sector stride the
    last one ends at secs-1 when the two reserved sectors push it over).
    """
    wanted = _check_names(names)
    # partfs's ctl has no `alignment` line: libdisk takes psecsize = secsize, physalign 0.
    psecsize, physalign = sector_size, 0
    stride = psecsize // sector_size
    pa = (offset - physalign + stride) % stride
    total = secs
    secs -= (secs + pa) % stride
    sizes: dict[str, int] = {}
    rules = [a for a in AUTO if a.name in wanted]
    minimum = sum(a.min // sector_size for a in rules)

    def too_small() -> LayoutError:
        return LayoutError(
            f"{where}: {total} sectors ({cmdsum_size(total * sector_size).strip()}) are too "
            f"small for automatic partitions {' '.join(a.name for a in rules)}, whose minimum "
            f"sizes add up to {minimum} sectors (ran out of disk space during autopartition)"
        )

    while True:
        open_rules = [a for a in rules if a.name not in sizes]
        totw = sum(a.weight for a in open_rules)
        if totw == 0:
            break
        if secs <= 0:
            raise too_small()
        fixed = _first_limited(open_rules, secs, totw, sector_size)
        if fixed is not None:
            name, size = fixed
            sizes[name] = size
            secs -= size
            continue
        for a in open_rules:  # shares by weight; rounding leftovers go to the later ones
            share = (secs * a.weight) // totw
            sizes[a.name] = share
            secs -= share
            totw -= a.weight
    if secs < 0:  # 9front would clip the last partition below its minimum
        raise too_small()

    layout: list[Plan9Partition] = []
    s = 0
    if "9fat" not in wanted:
        s = 2  # reserve the boot sector and the partition table
        if (s + pa) % stride:
            s += stride - (s + pa) % stride
    secs = total
    for a in rules:
        e = s + sizes[a.name]
        if (e + pa) % stride:
            e += stride - (e + pa) % stride
        if e > secs:
            e = secs - stride + (secs + pa) % stride
        if e <= s:
            raise too_small()
        layout.append(Plan9Partition(a.name, s, e))
        s = e
    return layout


def _check_names(names: Sequence[str]) -> set[str]:
    wanted: set[str] = set()
    for name in names:
        if name not in AUTO_NAMES:
            raise LayoutError(
                f"don't know how to create automatic partition {name!r} "
                f"(known: {' '.join(AUTO_NAMES)})"
            )
        if name in wanted:
            raise LayoutError(f"automatic partition {name!r} asked for more than once")
        wanted.add(name)
    return wanted


def _first_limited(
    rules: list[AutoPart], secs: int, totw: int, sector_size: int
) -> tuple[str, int] | None:
    """The first partition whose share is under its minimum, else the first over its maximum."""
    for a in rules:
        if (secs * a.weight) // totw < a.min // sector_size:
            return a.name, a.min // sector_size
    for a in rules:
        if a.max and (secs * a.weight) // totw > a.max // sector_size:
            return a.name, a.max // sector_size
    return None


# ---------------------------------------------------------------------------------------------
# The prep editor
# ---------------------------------------------------------------------------------------------
# prep.c isfrog[]: control characters, space, '/' and DEL may not appear in names.
_FROG = frozenset([*range(0x20), 0x20, ord("/"), 0x7F])


class PrepEditor(Editor):
    """prep.c over partfs's plan9 partition: the unit is one sector."""

    unit_name = "sector"

    def __init__(self, parts: PartFS, partition: str, output: Output | None = None) -> None:
        dev = parts[partition]
        super().__init__(parts, dev, output)
        self.unitsz = dev.sector_size
        self.end = dev.secs
        self.table: list[Plan9Partition] = []
        self._checkfat()

    def _checkfat(self) -> None:
        if self.dev.secs <= TABLE_SECTOR:
            return
        if self.dev.read_sectors(TABLE_SECTOR)[:3] == PBS_MAGIC:
            raise LayoutError(
                f"{self.dev.name}: there's a fat partition where the plan9 partition table "
                "would go (zero its second sector to overwrite it)"
            )

    def rdpart(self) -> None:
        """prep rdpart(): the table already in sector 1 into the part list (ImageFormatError if
        malformed).
        """
        for p in read_table(self.dev):
            self.addpart(Part(p.name, p.name, p.start, p.end))

    def plan9_partitions(self) -> list[Plan9Partition]:
        """The part list as table lines, in order."""
        return [Plan9Partition(p.name, p.start, p.end) for p in self.parts]

    def autoxpart(self, names: Sequence[str]) -> None:
        """prep autoxpart(): the automatic partitions `names` (LayoutError if unknown or too big),
        unless parts exist.
        """
        _check_names(names)
        if self.parts:
            self.print("partitions already exist; not repartitioning\n")
            return
        for p in autopartition(
            names, self.dev.secs, self.dev.sector_size, offset=self.dev.offset, where=self.dev.name
        ):
            self.print(f"{p.name} {p.size}\n")
            self.addpart(Part(p.name, p.name, p.start, p.end, changed=True))

    # -- editor hooks -----------------------------------------------------------------------
    def cmd_add(self, name: str, start: int, end: int) -> None:
        """prep cmdadd(): only 9fat may cover sectors 0 and 1 (the pbs and the table)."""
        if start < 2 and name != "9fat":
            raise EditError("overlaps with the pbs and/or the partition table")
        self.addpart(Part(name, name, start, end, changed=True))

    def cmd_okname(self, name: str) -> None:
        """prep cmdokname(): no control characters, blanks, '/' or DEL in a name."""
        if any(b in _FROG for b in name.encode()):
            raise EditError("bad character in name")

    def cmd_sum(self, part: Part | None, a: int, b: int) -> None:
        """prep cmdsum(): `' name start end (N sectors, SIZE)`."""
        flag = "'" if part and part.changed else " "
        name = part.name if part else "empty"
        size = (b - a) * self.dev.sector_size
        w = self.width
        self.print(f"{flag} {name:<12} {a:>{w}} {b:<{w}} ({b - a} sectors, {cmdsum_size(size)})\n")

    def cmd_write(self) -> None:
        """prep wrpart(): plan sector 1's table (LayoutError if it does not fit), then partfs."""
        table = self.plan9_partitions()
        sector = pack_table(table, self.dev.sector_size)
        if self.dev.secs <= TABLE_SECTOR:
            raise LayoutError(f"{self.dev.name}: no sector 1 for the partition table")
        self.plan.pwrite(sector, TABLE_SECTOR * self.dev.sector_size)
        self.table = table
        self.queue_ctldiff()


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def _editor(parts: PartFS, partition: str, output: Output | None, blank: bool) -> PrepEditor:
    """An editor on `parts[partition]`: an empty table (-b), else the one on disk."""
    editor = PrepEditor(parts, partition, output)
    if not blank:
        editor.rdpart()
    return editor


def prep_auto(
    parts: PartFS,
    names: Sequence[str],
    *,
    partition: str = "plan9",
    blank: bool = True,
    output: Output | None = None,
) -> list[Plan9Partition]:
    """`disk/prep -bw -a NAME... sdXX/plan9`: lay out, write sector 1, register with partfs."""
    editor = _editor(parts, partition, output, blank)
    editor.autoxpart(names)
    editor.runcmd("w")
    editor.commit()
    return editor.table


def write_table(
    parts: PartFS,
    partitions: Sequence[Plan9Partition],
    *,
    partition: str = "plan9",
    blank: bool = True,
) -> list[Plan9Partition]:
    """prep with `a NAME START END` for each partition, then `w`; checked as editadd checks.

    Unlike 9front (whose addpart does not look for overlaps on read), any
    overlap or range problem is a LayoutError before anything is written.
    """
    editor = _editor(parts, partition, None, blank)
    for p in partitions:
        try:
            editor.okname(p.name)
            editor.cmd_okname(p.name)
            editor.check_new_part(p.start, p.end)
            editor.cmd_add(p.name, p.start, p.end)
        except EditError as err:
            where = f"{editor.dev.name}: part {p.name} {p.start} {p.end}"
            raise LayoutError(f"{where}: {err}") from None
    editor.runcmd("w")
    editor.commit()
    return editor.table


def prep_script(
    parts: PartFS,
    script: str,
    *,
    partition: str = "plan9",
    source: str = "<prep script>",
    blank: bool = True,
    output: Output | None = None,
) -> list[Plan9Partition]:
    """`disk/prep [-b] sdXX/plan9` reading commands from `script`; the table after it."""
    editor = _editor(parts, partition, output, blank)
    editor.runcmd("p")
    editor.run_script(script, source)
    editor.commit()
    return read_table(parts[partition])
