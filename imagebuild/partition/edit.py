"""The partition editor shared by fdisk and prep (9front's disk/prep/edit.c and calc.y).

9front's fdisk and prep are one editor with two back ends: the editor keeps a
sorted list of named parts, reads commands (`a name start end`, `d name`, `.`,
`p`, `P`, `w`, `q`), evaluates start/end expressions with calc.y, and after a
write tells partfs about the result through `ctldiff`.  The back end supplies
what a part is, how it is added, printed and written.

Differences from 9front, all on the safe side:

* A command that 9front answers with `?message` and then carries on is an
  error here (`LayoutError` "SOURCE:LINE: message"), and nothing is written:
  writes and partfs changes are planned in a `DiskPlan` and applied only when
  the whole script succeeded.
* The last line of a script is run even without a trailing newline (9front's
  Brdline drops it).
* Ending a script with changes that no `w` wrote is an error (9front warns).

References: sys/src/cmd/disk/prep/edit.c, edit.h.  The expressions are calc.y
(imagebuild.partition.calc); parts, planned writes and ctl lines are in
imagebuild.partition.plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import ImageBuildError, LayoutError
from imagebuild.partition.calc import CalcError, parse_expr
from imagebuild.partition.plan import CtlOp, DiskPlan, Part, apply_ctl, copy_partfs, ctldiff
from imagebuild.plan9.libc import tokenize

MAXPART = 32  # edit.h: Maxpart
MAXARGS = 10  # edit.c runcmd: char *f[10]

Output = Callable[[str], None]


class EditError(Exception):
    """One of the editor's `?message` answers; the driver adds file and line."""


class _Quit(Exception):
    """The `q` command: stop reading the script."""


class _EndOfInput(Exception):
    """A prompt met the end of the script (getline's exits(0) at EOF)."""


# ---------------------------------------------------------------------------------------------
# The editor
# ---------------------------------------------------------------------------------------------
HELP_TEXT = (
    ". [newdot] - display or set value of dot\n"
    "a name [start [end]] - add partition\n"
    "d name - delete partition\n"
    "h - print help message\n"
    "p - print partition table\n"
    "P - print commands to update sd(3) device\n"
    "w - write partition table\n"
    "q - quit\n"
)


class LineReader:
    """stdin for the editor: numbered script lines; getline() serves prompts too."""

    def __init__(self, script: str, source: str) -> None:
        lines = script.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self._lines: Iterator[tuple[int, str]] = iter(enumerate(lines, 1))
        self.source = source
        self.lineno = 0

    def next_line(self) -> str | None:
        """The next line, leading blanks skipped; None at the end of the script."""
        for lineno, line in self._lines:
            self.lineno = lineno
            return line.lstrip()  # getline() skips leading blanks
        return None

    def where(self) -> str:
        """`SOURCE:LINE` of the line read last, for messages."""
        return f"{self.source}:{self.lineno}"


class Editor:
    """edit.c's Edit with the command loop; fdisk and prep subclass the cmd_* hooks.

    `parts` is partfs's table, `dev` the device edited (a partfs partition);
    the part list is in units of `unitsz` bytes, `end` units long.  Commands
    raise EditError (run_script turns it into LayoutError "SOURCE:LINE: ...");
    nothing reaches `dev` or partfs before commit().
    """

    unit_name = "sector"

    def __init__(self, parts: PartFS, dev: BlockDevice, output: Output | None = None) -> None:
        self.partfs = parts
        self.ctl_state = copy_partfs(parts)  # partfs as it will be after the planned writes
        self.dev = dev
        self.plan = DiskPlan(dev)
        self.ctl_ops: list[CtlOp] = []
        self.parts: list[Part] = []
        self.unitsz = dev.sector_size
        self.end = dev.secs
        self.dot = 0
        self.changed = False
        self.warned = False
        self.lastcmd = ""
        self.reader: LineReader | None = None
        self._output = output
        self.width = len(str(dev.size))  # libdisk mkwidth()

    # -- output ---------------------------------------------------------------------------
    def print(self, text: str) -> None:
        """Write `text` to the output callback, if any (the editor's stdout)."""
        if self._output is not None:
            self._output(text)

    # -- the part list ----------------------------------------------------------------------
    def findpart(self, name: str) -> Part | None:
        """The part named `name`, or None."""
        for part in self.parts:
            if part.name == name:
                return part
        return None

    def okname(self, name: str) -> None:
        """edit.c okname(): EditError for an empty name or one already taken."""
        if name == "":
            raise EditError("partition has no name")
        if self.findpart(name) is not None:
            raise EditError(f'already have partition with name "{name}"')

    def addpart(self, part: Part) -> None:
        """edit.c addpart(): keep the list sorted by start (overlaps are the caller's to stop)."""
        self.okname(part.name)
        if len(self.parts) >= MAXPART:
            raise EditError("too many partitions")
        i = len(self.parts)
        while i > 0 and part.start < self.parts[i - 1].start:
            i -= 1
        self.parts.insert(i, part)
        if part.changed:
            self.changed = True

    def delpart(self, part: Part) -> None:
        """Remove `part` from the list (the next `w` drops it from disk and partfs)."""
        self.parts.remove(part)
        self.changed = True

    # -- hooks (edit.h function pointers) ---------------------------------------------------
    def cmd_add(self, name: str, start: int, end: int) -> None:
        """Hook: add a part over [start, end) in units (range-checked); EditError if refused."""
        raise NotImplementedError

    def cmd_del(self, part: Part) -> None:
        """Hook: delete `part`."""
        self.delpart(part)

    def cmd_ext(self, args: list[str]) -> None:
        """Hook: a command the editor does not know (fdisk's A, t, R); EditError here."""
        raise EditError("unknown command")

    def cmd_help(self) -> None:
        """Hook: print the back end's extra help lines."""
        pass

    def cmd_okname(self, name: str) -> None:
        """Hook: EditError for a name the back end refuses."""
        pass

    def cmd_sum(self, part: Part | None, a: int, b: int) -> None:
        """Hook: print one line of `p` for `part` (None: free space) over [a, b) in units."""
        raise NotImplementedError

    def cmd_write(self) -> None:
        """Hook: plan the table writes for `w`, then queue_ctldiff()."""
        raise NotImplementedError

    def cmd_printctl(self) -> None:
        """Hook for `P`: print the ctl lines a write would send partfs."""
        self.print("".join(f"{op}\n" for op in self.ctldiff()))

    # -- reading lines ----------------------------------------------------------------------
    def getline(self) -> str:
        """The next script line for a prompt (`a`, `t` short of arguments); EOF ends the script."""
        line = self.reader.next_line() if self.reader is not None else None
        if line is None:
            raise _EndOfInput
        return line

    # -- commands ---------------------------------------------------------------------------
    def edit_dot(self, args: list[str]) -> None:
        """`. [expr]`: print dot, or set it to the expression's value."""
        if len(args) == 1:
            self.print(f"\t. {self.dot}\n")
            return
        if len(args) > 2:
            raise EditError("args")
        self.dot = self.expr(args[1], self.end)

    def expr(self, text: str, dollar: int) -> int:
        """calc.y parseexpr() with this editor's dot, size and unit; its errors are `?` answers."""
        try:
            return parse_expr(text, self.dot, dollar, self.end, self.unitsz)
        except CalcError as err:
            raise EditError(str(err)) from None

    def check_start(self, start: int) -> None:
        """editadd(): EditError unless `start` is on the disk and outside every part."""
        if start < 0 or start >= self.end:
            raise EditError("start out of range")
        for part in self.parts:
            if part.start <= start < part.end:
                raise EditError(f'start {self.unit_name} in partition "{part.name}"')

    @staticmethod
    def check_end(start: int, end: int, maxend: int) -> None:
        """editadd(): EditError for an empty part or an end outside (start, maxend]."""
        if start == end:
            raise EditError("size zero partition")
        if end <= start or end > maxend:
            raise EditError("end out of range")

    def check_new_part(self, start: int, end: int) -> None:
        """editadd()'s range checks, in its order, for a start and end already evaluated."""
        self.check_start(start)
        self.check_end(start, end, self.maxend(start))

    def maxend(self, start: int) -> int:
        """The largest end for a part starting at `start`: the next part's start, or the end."""
        maxend = self.end
        for part in self.parts:
            if start < part.start < maxend:
                maxend = part.start
        return maxend

    def edit_add(self, args: list[str]) -> None:
        """`a name [start [end]]`: evaluate, check, hand the part to cmd_add; dot becomes end."""
        if len(args) < 2:
            raise EditError("args")
        name = args[1]
        self.okname(name)
        self.cmd_okname(name)
        text = args[2] if len(args) >= 3 else self.getline()
        start = self.expr(text, self.end)
        self.check_start(start)
        maxend = self.maxend(start)
        text = args[3] if len(args) >= 4 else self.getline()
        end = self.expr(text, maxend)
        self.check_end(start, end, maxend)
        if len(args) > 4:
            raise EditError("args")
        self.cmd_add(name, start, end)
        self.dot = end

    def edit_del(self, args: list[str]) -> None:
        """`d name`."""
        if len(args) != 2:
            raise EditError("args")
        part = self.findpart(args[1])
        if part is None:
            raise EditError("no such partition")
        self.cmd_del(part)

    def edit_help(self, args: list[str]) -> None:
        """`h` or `?`: the help text."""
        self.print(HELP_TEXT)
        self.cmd_help()

    def edit_print(self, args: list[str]) -> None:
        """`p`: one cmd_sum line per part and per gap."""
        if len(args) != 1:
            raise EditError("args")
        lastend = 0
        for part in self.parts:
            if lastend < part.start:
                self.cmd_sum(None, lastend, part.start)
            self.cmd_sum(part, part.start, part.end)
            lastend = part.end
        if lastend < self.end:
            self.cmd_sum(None, lastend, self.end)

    def edit_write(self, args: list[str]) -> None:
        """`w`: cmd_write, then every part counts as written."""
        if len(args) != 1:
            raise EditError("args")
        self.cmd_write()
        for part in self.parts:
            part.changed = False
        self.changed = False

    def edit_quit(self, args: list[str]) -> None:
        """`q`: ends the script; with unwritten changes the first `q` is refused, as in edit.c."""
        if len(args) != 1:
            raise EditError("args")
        if self.changed and (not self.warned or self.lastcmd != "q"):
            self.warned = True
            raise EditError("changes unwritten")
        raise _Quit

    def edit_ctlprint(self, args: list[str]) -> None:
        """`P`: cmd_printctl."""
        if len(args) != 1:
            raise EditError("args")
        self.cmd_printctl()

    def runcmd(self, line: str) -> None:
        """edit.c runcmd(): one command line."""
        args = tokenize(line.lstrip(), MAXARGS)
        if len(args) >= MAXARGS:
            raise EditError(f"too many arguments (at most {MAXARGS - 1})")
        if not args:
            return
        if len(args[0]) != 1:
            raise EditError(f"unknown command {args[0]!r}")
        commands: dict[str, Callable[[list[str]], None]] = {
            ".": self.edit_dot,
            "a": self.edit_add,
            "d": self.edit_del,
            "?": self.edit_help,
            "h": self.edit_help,
            "P": self.edit_ctlprint,
            "p": self.edit_print,
            "w": self.edit_write,
            "q": self.edit_quit,
        }
        try:
            command = commands.get(args[0])
            if command is not None:
                command(args)
            else:
                self.cmd_ext(args)
        finally:
            self.lastcmd = args[0]

    def run_script(self, script: str, source: str) -> None:
        """Run command lines as fdisk or prep read them from stdin; raise on the first `?`."""
        self.reader = reader = LineReader(script, source)
        try:
            while True:
                line = reader.next_line()
                if line is None:
                    break
                try:
                    self.runcmd(line)
                except _EndOfInput:
                    break
                except EditError as err:
                    raise LayoutError(f"{reader.where()}: {err}") from None
                except ImageBuildError as err:
                    raise type(err)(f"{reader.where()}: {err}") from None
        except _Quit:
            return
        finally:
            self.reader = None
        if self.changed:
            raise LayoutError(f"{reader.where()}: changes not written (the script has no 'w')")

    # -- partfs -----------------------------------------------------------------------------
    def ctldiff(self) -> list[CtlOp]:
        """edit.c ctldiff() for this editor's device, parts and planned partfs state."""
        return ctldiff(self.dev, self.ctl_state, self.parts)

    def queue_ctldiff(self) -> None:
        """After a write: plan the ctl lines, checking now that partfs will take them."""
        ops = self.ctldiff()
        apply_ctl(self.ctl_state, ops)
        self.ctl_ops.extend(ops)

    def commit(self) -> None:
        """Apply the planned sector writes, then the partfs changes."""
        self.plan.commit()
        apply_ctl(self.partfs, self.ctl_ops)
        self.ctl_ops.clear()


def cmdsum_size(sz: int) -> str:
    """prep.c/fdisk.c cmdsum's size of `sz` bytes: `12.34 MB` (hundredths truncated) or `123 B `.

    Not imagebuild.util.sizes.format_size: 9front's editors print decimal
    suffixes KB/MB/GB/TB for powers of 1024, always two truncated decimals,
    and a trailing blank after `B`; qemu-img's style (3.68 GiB) rounds to three
    significant digits.
    """
    for suffix, div in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if sz >= div:
            return f"{sz // div}.{(sz % div) * 100 // div:02d} {suffix}"
    return f"{sz} B "
