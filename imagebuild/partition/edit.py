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

References: sys/src/cmd/disk/prep/edit.c, edit.h, calc.y (libc's tokenize and
strtoull come from imagebuild.plan9.libc).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagebuild.disk.device import BlockDevice, PartFS
from imagebuild.errors import ImageBuildError, LayoutError, OutOfRangeError
from imagebuild.plan9.libc import UVLONG_MASK, cdiv, strtoull, tokenize, vlong

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
# calc.y: start and end expressions
# ---------------------------------------------------------------------------------------------
_SUFFIX_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}


class _Calc:
    """The grammar of calc.y as precedence climbing.

    yacc's table: '+' '-' < '*' '/' < unary '-' = postfix '%', all left
    associative, so a term is any number of unary minuses, a primary, then any
    number of '%' — and the minuses apply before the percentages (`-5%` is
    `(-5)%`).
    """

    def __init__(self, text: str, dot: int, dollar: int, size: int, unit: int) -> None:
        self.text, self.pos = text, 0
        self.dot, self.dollar, self.size, self.unit = dot, dollar, size, unit
        self.look = self._lex()

    def _lex(self) -> int | str | None:
        """calc.y yylex(): a number (int), a one-character token, or None at the end."""
        text = self.text
        while self.pos < len(text) and text[self.pos] in " \t\n\v\f\r":
            self.pos += 1
        if self.pos >= len(text):
            return None
        c = text[self.pos]
        if "0" <= c <= "9":
            value, end = strtoull(text, self.pos)
            if end == self.pos:  # "0x" with no hex digit: the same token forever
                raise EditError("syntax error")
            self.pos = end
            suffix = text[end].lower() if end < len(text) and text[end].isascii() else ""
            if suffix in _SUFFIX_SHIFT:
                self.pos += 1
                value = ((value << _SUFFIX_SHIFT[suffix]) & UVLONG_MASK) // self.unit
            return vlong(value)
        self.pos += 1
        return c

    def _next(self) -> None:
        self.look = self._lex()

    def parse(self) -> int:
        value = self._expr()
        if self.look is not None:
            raise EditError("syntax error")
        return value

    def _expr(self) -> int:
        value = self._term()
        while self.look in ("+", "-"):
            op = self.look
            self._next()
            rhs = self._term()
            value = vlong(value + rhs if op == "+" else value - rhs)
        return value

    def _term(self) -> int:
        value = self._unary()
        while self.look in ("*", "/"):
            op = self.look
            self._next()
            rhs = self._unary()
            if op == "*":
                value = vlong(value * rhs)
            else:
                if rhs == 0:
                    raise EditError("division by zero")
                value = vlong(cdiv(value, rhs))
        return value

    def _unary(self) -> int:
        negations = 0
        while self.look == "-":
            negations += 1
            self._next()
        value = self._primary()
        if negations % 2:
            value = vlong(-value)
        while self.look == "%":  # FRAC: a percentage of the size
            self._next()
            value = vlong(cdiv(vlong(self.size * value), 100))
        return value

    def _primary(self) -> int:
        look = self.look
        if isinstance(look, int):
            self._next()
            return look
        if look == ".":
            self._next()
            return self.dot
        if look == "$":
            self._next()
            return self.dollar
        if look == "(":
            self._next()
            value = self._expr()
            if self.look != ")":
                raise EditError("syntax error")
            self._next()
            return value
        raise EditError("syntax error")


def parse_expr(text: str, dot: int, dollar: int, size: int, unit: int) -> int:
    """calc.y parseexpr(): `.` is dot, `$` dollar, `N%` N percent of size, `4M` in units."""
    return _Calc(text, dot, dollar, size, unit).parse()


# ---------------------------------------------------------------------------------------------
# Planned writes: nothing reaches the disk or partfs until the whole edit succeeded
# ---------------------------------------------------------------------------------------------
class DiskPlan:
    """Writes to a block device, held back until commit(); reads see them."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        self.writes: list[tuple[int, bytes]] = []

    def pread(self, size: int, offset: int) -> bytes:
        data = bytearray(self.dev.pread(size, offset))
        for at, chunk in self.writes:
            lo, hi = max(at, offset), min(at + len(chunk), offset + size)
            if lo < hi:
                data[lo - offset : hi - offset] = chunk[lo - at : hi - at]
        return bytes(data)

    def pwrite(self, data: bytes, offset: int) -> None:
        if offset < 0 or offset + len(data) > self.dev.size:
            raise OutOfRangeError(
                f"{self.dev.name}: write of {len(data)} bytes at offset {offset} runs past "
                f"its end ({self.dev.size} bytes)"
            )
        self.writes.append((offset, bytes(data)))

    def commit(self) -> None:
        for offset, data in self.writes:
            self.dev.pwrite(data, offset)
        self.writes.clear()


@dataclass
class CtlOp:
    """One line written to partfs's ctl: `part NAME START END` or `delpart NAME`."""

    verb: str
    name: str
    start: int = 0
    end: int = 0

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
    for op in ops:
        if op.verb == "delpart":
            parts.delete(op.name)
        else:
            parts.add(op.name, op.start, op.end)


# ---------------------------------------------------------------------------------------------
# The editor
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Part:
    """edit.h Part: start/end in the editor's unit; ctlstart/ctlend in sectors when set."""

    name: str
    ctlname: str = ""
    start: int = 0
    end: int = 0
    ctlstart: int = 0
    ctlend: int = 0
    changed: bool = False

    def ctl_start(self) -> int:
        return self.ctlstart if self.ctlstart else self.start

    def ctl_end(self) -> int:
        return self.ctlend if self.ctlend else self.end


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
        for lineno, line in self._lines:
            self.lineno = lineno
            return line.lstrip()  # getline() skips leading blanks
        return None

    def where(self) -> str:
        return f"{self.source}:{self.lineno}"


class Editor:
    """edit.c's Edit with the command loop; fdisk and prep subclass the hooks."""

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
        if self._output is not None:
            self._output(text)

    # -- the part list ----------------------------------------------------------------------
    def findpart(self, name: str) -> Part | None:
        for part in self.parts:
            if part.name == name:
                return part
        return None

    def okname(self, name: str) -> None:
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
        self.parts.remove(part)
        self.changed = True

    # -- hooks (edit.h function pointers) ---------------------------------------------------
    def cmd_add(self, name: str, start: int, end: int) -> None:
        raise NotImplementedError

    def cmd_del(self, part: Part) -> None:
        self.delpart(part)

    def cmd_ext(self, args: list[str]) -> None:
        raise EditError("unknown command")

    def cmd_help(self) -> None:
        pass

    def cmd_okname(self, name: str) -> None:
        pass

    def cmd_sum(self, part: Part | None, a: int, b: int) -> None:
        raise NotImplementedError

    def cmd_write(self) -> None:
        raise NotImplementedError

    def cmd_printctl(self) -> None:
        self.print("".join(f"{op}\n" for op in self.ctldiff()))

    # -- reading lines ----------------------------------------------------------------------
    def getline(self) -> str:
        line = self.reader.next_line() if self.reader is not None else None
        if line is None:
            raise _EndOfInput
        return line

    # -- commands ---------------------------------------------------------------------------
    def edit_dot(self, args: list[str]) -> None:
        if len(args) == 1:
            self.print(f"\t. {self.dot}\n")
            return
        if len(args) > 2:
            raise EditError("args")
        self.dot = parse_expr(args[1], self.dot, self.end, self.end, self.unitsz)

    def check_start(self, start: int) -> None:
        if start < 0 or start >= self.end:
            raise EditError("start out of range")
        for part in self.parts:
            if part.start <= start < part.end:
                raise EditError(f'start {self.unit_name} in partition "{part.name}"')

    @staticmethod
    def check_end(start: int, end: int, maxend: int) -> None:
        if start == end:
            raise EditError("size zero partition")
        if end <= start or end > maxend:
            raise EditError("end out of range")

    def check_new_part(self, start: int, end: int) -> None:
        """editadd()'s range checks, in its order, for a start and end already evaluated."""
        self.check_start(start)
        self.check_end(start, end, self.maxend(start))

    def maxend(self, start: int) -> int:
        maxend = self.end
        for part in self.parts:
            if start < part.start < maxend:
                maxend = part.start
        return maxend

    def edit_add(self, args: list[str]) -> None:
        if len(args) < 2:
            raise EditError("args")
        name = args[1]
        self.okname(name)
        self.cmd_okname(name)
        text = args[2] if len(args) >= 3 else self.getline()
        start = parse_expr(text, self.dot, self.end, self.end, self.unitsz)
        self.check_start(start)
        maxend = self.maxend(start)
        text = args[3] if len(args) >= 4 else self.getline()
        end = parse_expr(text, self.dot, maxend, self.end, self.unitsz)
        self.check_end(start, end, maxend)
        if len(args) > 4:
            raise EditError("args")
        self.cmd_add(name, start, end)
        self.dot = end

    def edit_del(self, args: list[str]) -> None:
        if len(args) != 2:
            raise EditError("args")
        part = self.findpart(args[1])
        if part is None:
            raise EditError("no such partition")
        self.cmd_del(part)

    def edit_help(self, args: list[str]) -> None:
        self.print(HELP_TEXT)
        self.cmd_help()

    def edit_print(self, args: list[str]) -> None:
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
        if len(args) != 1:
            raise EditError("args")
        self.cmd_write()
        for part in self.parts:
            part.changed = False
        self.changed = False

    def edit_quit(self, args: list[str]) -> None:
        if len(args) != 1:
            raise EditError("args")
        if self.changed and (not self.warned or self.lastcmd != "q"):
            self.warned = True
            raise EditError("changes unwritten")
        raise _Quit

    def edit_ctlprint(self, args: list[str]) -> None:
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
        """edit.c ctldiff(): the ctl lines that bring partfs in line with the part list.

        partfs's own parts inside the device being edited are dropped unless one
        of ours names the same range (then it and the parts inside it stay);
        then every named part is (re)added, which partfs treats as a no-op when
        nothing changed.
        """
        offset = self.dev.offset
        ctlparts: list[Part] = []
        for name, a, b in self.ctl_state:
            if a >= b:
                continue
            if a < offset or offset + self.dev.secs < b:
                continue  # only partitions inside the one being edited
            if name == self.dev.name:
                continue  # the partition being edited does not count
            ctlparts.append(Part(name, name, a - offset, b - offset, changed=True))
        for ctl in ctlparts:
            for part in self.parts:
                if _areequiv(ctl, part):
                    for inner in ctlparts:
                        if ctl.start <= inner.start and inner.end <= ctl.end:
                            inner.changed = False
                    break
        ops = [CtlOp("delpart", ctl.ctlname) for ctl in ctlparts if ctl.changed]
        for part in self.parts:
            if part.ctlname:
                ops.append(
                    CtlOp("part", part.ctlname, offset + part.ctl_start(), offset + part.ctl_end())
                )
        return ops

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


def _areequiv(p: Part, q: Part) -> bool:
    if not p.ctlname or not q.ctlname:
        return False
    return (
        p.ctlname == q.ctlname
        and p.ctl_start() == q.ctl_start()
        and p.ctl_end() == q.ctl_end()
    )


def format_size(sz: int) -> str:
    """cmdsum's size: `12.34 MB` (truncated hundredths) or `123 B `."""
    for suffix, div in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if sz >= div:
            return f"{sz // div}.{(sz % div) * 100 // div:02d} {suffix}"
    return f"{sz} B "
