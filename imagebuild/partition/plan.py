"""The editor's parts and planned writes: nothing reaches the disk or partfs until it succeeded.

fdisk and prep keep a list of parts (`Part`, edit.h), write sector tables
(`DiskPlan`) and tell partfs about the
result with ctl lines (`CtlOp`, edit.c ctldiff).  Both are planned while the
script runs, tried on a scratch copy of partfs's table, and applied by the
editor's commit() once the whole script has succeeded.

References: sys/src/cmd/disk/prep/edit.c (ctldiff, the ctl lines),
sys/src/cmd/disk/partfs.c (the `part` and `delpart` ctl messages).
"""

from __future__ import annotations

from collections.abc import Sequence

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import OutOfRangeError
from imagebuild.util.record import Record


class DiskPlan:
    """Writes to a block device, held back until commit(); reads see them.

    Offsets and sizes are in bytes of `dev`.  fdisk and prep write their
    tables through a plan so that a script failing on its last line leaves
    the disk as it was (9front writes at each `w`).
    """

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.writes: list[tuple[int, bytes]] = []

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` of the device as it will be after commit()."""
        data = bytearray(self.dev.pread(size, offset))
        for at, chunk in self.writes:
            lo, hi = max(at, offset), min(at + len(chunk), offset + size)
            if lo < hi:
                data[lo - offset : hi - offset] = chunk[lo - at : hi - at]
        return bytes(data)

    def pwrite(self, data: bytes, offset: int) -> None:
        """Plan a write; OutOfRangeError (naming the device) if it runs past the end."""
        if offset < 0 or offset + len(data) > self.dev.size:
            raise OutOfRangeError(
                f"{self.dev.name}: write of {len(data)} bytes at offset {offset} runs past "
                f"its end ({self.dev.size} bytes)"
            )
        self.writes.append((offset, bytes(data)))

    def commit(self) -> None:
        """Write everything planned, in order, and forget it."""
        for offset, data in self.writes:
            self.dev.pwrite(data, offset)
        self.writes.clear()


class CtlOp(Record):
    """One line written to partfs's ctl: `part NAME START END` or `delpart NAME`."""

    FIELDS = ("verb", "name", "start", "end")
    __slots__ = FIELDS

    verb: str
    name: str
    start: int
    end: int

    def __init__(self, verb: str, name: str, start: int = 0, end: int = 0) -> None:
        self.verb = verb
        self.name = name
        self.start = start
        self.end = end

    def __str__(self) -> str:
        if self.verb == "delpart":
            return f"delpart {self.name}"
        return f"part {self.name} {self.start} {self.end}"


def copy_partfs(parts: PartFS) -> PartFS:
    """A scratch copy of partfs's table, to try ctl lines on before the real one."""
    scratch = PartFS(parts.disk)
    for name, start, end in parts:
        scratch.add(name, start, end)
    return scratch


def apply_ctl(parts: PartFS, ops: list[CtlOp]) -> None:
    """Write `ops` to partfs's ctl in order; raises what PartFS.add/delete raise."""
    for op in ops:
        if op.verb == "delpart":
            parts.delete(op.name)
        else:
            parts.add(op.name, op.start, op.end)


class Part:
    """edit.h Part: one named part of the editor's list.

    start/end are in the editor's unit (sectors for prep, cylinders for
    fdisk); ctlstart/ctlend, when set, are the exact sectors for partfs;
    ctlname is the partfs name ("" = not registered); changed marks parts
    not yet written.  Parts compare by identity, as the C pointers do.
    """

    __slots__ = ("changed", "ctlend", "ctlname", "ctlstart", "end", "name", "start")

    def __init__(self, name: str, ctlname: str = "", start: int = 0, end: int = 0,
                 ctlstart: int = 0, ctlend: int = 0, changed: bool = False) -> None:
        self.name = name
        self.ctlname = ctlname
        self.start = start
        self.end = end
        self.ctlstart = ctlstart
        self.ctlend = ctlend
        self.changed = changed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.start}..{self.end})"

    def ctl_start(self) -> int:
        """The first sector partfs is told about (ctlstart, else start)."""
        return self.ctlstart if self.ctlstart else self.start

    def ctl_end(self) -> int:
        """The sector after the part as partfs is told (ctlend, else end)."""
        return self.ctlend if self.ctlend else self.end


def ctldiff(dev: BlockDevice, ctl_state: PartFS, parts: Sequence[Part]) -> list[CtlOp]:
    """edit.c ctldiff(): the ctl lines that bring partfs (`ctl_state`) in line with `parts`.

    partfs's own parts inside the device being edited are dropped unless one
    of ours names the same range (then it and the parts inside it stay);
    then every named part is (re)added, which partfs treats as a no-op when
    nothing changed.
    """
    offset = dev.offset
    ctlparts: list[Part] = []
    for name, a, b in ctl_state:
        if a >= b:
            continue
        if a < offset or offset + dev.secs < b:
            continue  # only partitions inside the one being edited
        if name == dev.name:
            continue  # the partition being edited does not count
        ctlparts.append(Part(name, name, a - offset, b - offset, changed=True))
    for ctl in ctlparts:
        for part in parts:
            if _areequiv(ctl, part):
                for inner in ctlparts:
                    if ctl.start <= inner.start and inner.end <= ctl.end:
                        inner.changed = False
                break
    ops = [CtlOp("delpart", ctl.ctlname) for ctl in ctlparts if ctl.changed]
    for part in parts:
        if part.ctlname:
            ops.append(
                CtlOp("part", part.ctlname, offset + part.ctl_start(), offset + part.ctl_end())
            )
    return ops


def _areequiv(p: Part, q: Part) -> bool:
    if not p.ctlname or not q.ctlname:
        return False
    return (
        p.ctlname == q.ctlname
        and p.ctl_start() == q.ctl_start()
        and p.ctl_end() == q.ctl_end()
    )
