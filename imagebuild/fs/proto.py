"""Proto files: the file lists disk/mkfs copies into a new file system (libdisk's rdproto).

A proto file lists one file per line, indented under its directory:

    name  mode  uid  gid  source

Indentation counts a space as 1 and a tab as 8; a line more indented than a
directory names a file inside it.  `mode` is `[d][a][l]NNN` (octal) or `-`;
`uid`, `gid` and `source` may be `-` or left out; `$name` in the name, mode,
uid or gid field is replaced by a variable (mkfs reads the environment: the
dist protos use `$objtype`).  A `+` or `*` as the first entry under a
directory copies the source directory's contents: `+` recursively, `*` only
its files.  A line containing `=` sets an option (`mode=`, `uid=`, `gid=`,
`skip=REGEX`) for the lines that follow at its indentation and deeper.

This module reads protos exactly as sys/src/libdisk/proto.c (2024) does:
`read_proto` concatenates its files like `cat $proto $bootproto | disk/mkfs`
and yields the entries in the order mkfs creates them.  Where mkfs only warns
(a missing source file, a bad mode, an unknown option, an undefined
variable) we raise ProtoError naming the proto file and line instead.

Sources are looked up under a source root (mkfs -s), through optional binds
that replace or union subtrees (the dist mkfile's `mk binds`).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from imagebuild.errors import ImageBuildError

# Plan 9 Dir.mode bits (libc.h).
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMTMP = 0x04000000
MODE_MASK = 0xFFFFFFFF  # Dir.mode is a 32-bit ulong
NO_MODE = MODE_MASK  # getmode()'s ~0: the proto gave no mode

PROTO_LINE_MAX = 8 * 1024  # Brdline() cannot return longer lines


class ProtoError(ImageBuildError):
    """A proto file is malformed or names a source that cannot be used."""


@dataclass(frozen=True)
class ProtoEntry:
    """One file or directory mkfs would create, with the Dir it would pass to create/wstat.

    `uid`/`gid` are None when neither the proto line nor a `uid=`/`gid=`
    option names an owner (mkfs would use the source file's owner; the hjfs
    writer uses its default owner).  `mtime` and `length` are the source's
    as stat(2) reports them.
    """

    path: str
    mode: int
    uid: str | None
    gid: str | None
    source: Path
    mtime: int
    length: int
    origin: str = ""

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# -- paths --------------------------------------------------------------------------------------


def cleanname(path: str) -> str:
    """Plan 9 cleanname(2): drop empty and `.` elements, fold `..`, keep a leading `/`."""
    rooted = path.startswith("/")
    out: list[str] = []
    for elem in path.split("/"):
        if elem in ("", "."):
            continue
        if elem == "..":
            if out and out[-1] != "..":
                out.pop()
                continue
            if rooted:
                continue
        out.append(elem)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def _mkpath(prefix: str, elem: str) -> str:
    return cleanname(f"{prefix}/{elem}")


class SourceTree:
    """The source root (mkfs -s) as seen through binds.

    `binds` maps a path of the source tree (as the new file system names it,
    e.g. "/cfg") to a directory that replaces it (`bind new old`) or to a
    list of directories searched in order (a union: `bind -a new old` is
    `[root/old, new]`).  The longest matching bind wins; inside it, a name is
    found in the first member that has it, and a directory listing is every
    member's names, first occurrence first (Plan 9's union read lists
    duplicates, but mkfs then finds the first member's file up to date).
    """

    def __init__(
        self, root: Path, binds: Mapping[str, Path | Sequence[Path]] | None = None
    ) -> None:
        self.root = Path(root)
        self.binds: dict[str, list[Path]] = {}
        for where, what in (binds or {}).items():
            key = cleanname("/" + where)
            members = (
                [Path(what)] if isinstance(what, str | os.PathLike) else [Path(p) for p in what]
            )
            if not members:
                raise ProtoError(f"bind {where}: no directories to bind")
            self.binds[key] = members

    def candidates(self, path: str) -> list[Path]:
        """Real paths that may hold `path` (a rooted path of the source tree), in lookup order."""
        path = cleanname("/" + path)
        best = ""
        for key in self.binds:
            if (path == key or path.startswith(key.rstrip("/") + "/")) and len(key) > len(best):
                best = key
        if not best:
            return [self.root / path.lstrip("/")]
        rest = path[len(best) :].lstrip("/")
        return [member / rest if rest else member for member in self.binds[best]]

    def lookup(self, path: str) -> Path | None:
        for candidate in self.candidates(path):
            if os.path.lexists(candidate):
                return candidate
        return None

    def listdir(self, path: str) -> list[str]:
        """Names in directory `path`, sorted per member (the order a real dirread gives is the
        source file server's; sorting is the reproducible choice), union members in order."""
        path = cleanname("/" + path)
        names: list[str] = []
        seen: set[str] = set()
        for candidate in self.candidates(path):
            if not candidate.is_dir():
                continue
            for name in sorted(os.listdir(candidate)):
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        # bind points directly below `path` show up even where the tree has no such name
        # (the mkfile makes /n/src9/usr with aux/stub before binding over it).
        for key in sorted(self.binds):
            name = posixpath.basename(key)
            if key != "/" and posixpath.dirname(key) == path and name not in seen:
                seen.add(name)
                names.append(name)
        return names


# -- Plan 9 regular expressions -------------------------------------------------------------------


def plan9_regex(pattern: str) -> re.Pattern[str]:
    """Compile a regexp(6) pattern (as regcomp does) into a Python search pattern.

    regexp(6) has `. * + ? | ( ) [ ] ^ $` and `\\c` for a literal c; braces
    and Python's backslash classes mean nothing special there.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
                out.append(c)
            elif c in "[&~|":
                out.append("\\" + c)
            else:
                out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is literal
                out.append("\\]")
                i += 1
        elif c in "{}":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise ValueError(str(e)) from None


# -- the reader (libdisk proto.c) -----------------------------------------------------------------


@dataclass
class _Opt:
    """Options in force from an indentation level on (proto.c's Opt)."""

    level: int
    mode: int = 0
    mask: int = 0
    skip: re.Pattern[str] | None = None
    uid: str | None = None
    gid: str | None = None
    prev: _Opt | None = None


@dataclass
class _File:
    """A proto line: path in the new fs, its last element, explicit source, owner, mode."""

    new: str
    elem: str
    old: str | None
    uid: str
    gid: str
    mode: int


@dataclass
class _Line:
    text: str
    origin: str


@dataclass
class _SourceDir:
    """What dirstat says about a source: mode in Plan 9 bits, times and length."""

    mode: int
    mtime: int
    length: int
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino): a directory met again is a loop


def parse_mode_option(spec: str, mask: int, mode: int) -> tuple[int, int] | None:
    """proto.c parsemode(): apply a `mode=` option to (mask, mode); None if malformed.

    `[ugoa]*[-+=][rwxalt]*` changes the named permission bits (and the
    append, exclusive and temporary bits); a leading octal number sets the
    rw bits outright and forgets earlier options.
    """
    op = ""
    setall = False
    newmode = 0
    newmask = DMAPPEND | DMEXCL | DMTMP
    if spec and spec[0] in "01234567":
        digits = re.match(r"[0-7]+", spec)
        assert digits is not None
        newmask = 0o666
        newmode = int(digits.group(0), 8) & MODE_MASK
        op = "="
        letters = "!"  # proto.c points its cursor at the string "!"
    else:
        i = 0
        while i < len(spec) and not op:
            c = spec[i]
            if c in "-+=":
                op = c
            elif c in _WHO_BITS:
                newmask |= _WHO_BITS[c]
            else:
                return None
            i += 1
        if i == 0:  # an empty spec
            newmask |= 0o666
        letters = spec[i:]
    for c in letters:
        if c == "!":
            setall = True
        elif c in _WHAT_BITS:
            newmode |= _WHAT_BITS[c]
        else:
            return None
    if op in ("+", "-"):
        newmask &= newmode
    if op == "-":
        newmode = ~newmode & MODE_MASK
    if setall:
        mask = 0
    mask |= newmask
    mode = (mode & ~newmask) | (newmode & newmask)
    return mask & MODE_MASK, mode & MODE_MASK


_WHO_BITS = {"a": 0o666, "u": 0o600, "g": 0o060, "o": 0o006}
_WHAT_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "a": DMAPPEND, "l": DMEXCL, "t": DMTMP}


class _ProtoReader:
    """rdproto()'s Mkaux: one pass over the concatenated proto lines."""

    def __init__(
        self,
        lines: list[_Line],
        tree: SourceTree,
        variables: Mapping[str, str],
        cwd: Path | None,
        emit: Callable[[ProtoEntry], None],
    ) -> None:
        self.lines = lines
        self.tree = tree
        self.variables = variables
        self.cwd = cwd
        self.emit = emit
        self.pos = 0  # next line to read
        self.indent = 0
        self.origin = "?"
        self.opt: _Opt | None = None
        self.expanding: set[tuple[int, int]] = set()  # directories `+` is inside of

    # -- errors --
    def fail(self, message: str) -> ProtoError:
        return ProtoError(f"{self.origin}: {message}")

    # -- lines --
    def getline(self) -> str | None:
        """The next line that is not blank or a comment, without its indentation."""
        if self.indent < 0:
            return None
        while True:
            self.indent = 0
            if self.pos >= len(self.lines):
                self.indent = -1
                return None
            line = self.lines[self.pos]
            self.pos += 1
            self.origin = line.origin
            text = line.text
            i = 0
            while i < len(text) and text[i] in " \t":
                self.indent += 1 if text[i] == " " else 8
                i += 1
            if i == len(text) or text[i] == "#":
                continue
            return text[i:]

    def unread(self) -> None:
        self.pos -= 1

    def popopt(self) -> None:
        while self.opt is not None and self.opt.level > self.indent:
            self.opt = self.opt.prev

    def setopt(self, key: str, val: str) -> None:
        o = self.opt
        if o is None or self.indent > o.level:
            # a deeper level starts with a copy of the options around it
            o = _Opt(self.indent) if o is None else replace(o, level=self.indent, prev=o)
            self.opt = o
        elif self.indent < o.level:
            return
        if key == "skip":
            try:
                o.skip = plan9_regex(val)
            except ValueError as e:
                raise self.fail(f"bad regular expression {val!r}: {e}") from None
        elif key == "uid":
            o.uid = val or None
        elif key == "gid":
            o.gid = val or None
        elif key == "mode":
            parsed = parse_mode_option(val, o.mask, o.mode)
            if parsed is None:
                raise self.fail(f"bad mode specification {val!r}")
            o.mask, o.mode = parsed
        else:
            raise self.fail(f"bad option {key}={val}")

    # -- fields --
    def field(self, text: str) -> tuple[str, str]:
        """getname(): the next blank-separated field (with $variables), and the rest."""
        text = text.lstrip(" \t")
        end = 0
        while end < len(text) and text[end] not in " \t":
            end += 1
        token, rest = text[:end], text[end:]
        if token.startswith("$"):
            name = token[1:]
            if name not in self.variables:
                raise self.fail(f"undefined variable ${name}")
            token = self.variables[name]
        return token, rest

    def getmode(self, text: str) -> tuple[int, str]:
        token, rest = self.field(text)
        if token in ("", "-"):
            return NO_MODE, rest
        mode = 0
        s = token
        for letter, bit in (("d", DMDIR), ("a", DMAPPEND), ("l", DMEXCL)):
            if s.startswith(letter):
                mode |= bit
                s = s[1:]
        if len(s) != 3 or any(c not in "01234567" for c in s):
            raise self.fail(f"bad mode specification {token!r}")
        return mode | int(s, 8), rest

    def getfile(self, parent: _File) -> _File | None:
        while True:
            text = self.getline()
            if text is None:
                return None
            self.popopt()
            if "=" in text:
                key, val = text.split("=", 1)
                self.setopt(key, val)
                continue
            break
        name, text = self.field(text)
        new = _mkpath(parent.new, name)
        elem = new.rsplit("/", 1)[-1]
        mode, text = self.getmode(text)
        uid, text = self.field(text)
        gid, text = self.field(text)
        old_token = text.lstrip(" \t").split(" ", 1)[0].split("\t", 1)[0]
        old = None if old_token in ("", "-") else old_token
        return _File(new, elem, old, uid or "-", gid or "-", mode)

    # -- sources --
    def source_of(self, f: _File) -> Path:
        """setname(): where a proto line's file comes from."""
        if f.old is not None and not f.old.startswith("/"):
            if self.cwd is None:
                raise self.fail(f"relative source path {f.old!r} needs a working directory")
            return self.cwd / cleanname(f.old)
        rooted = f.old if f.old is not None else f.new
        found = self.tree.lookup(rooted)
        if found is None:
            return self.tree.candidates(rooted)[0]
        return found

    def stat(self, path: Path, new: str) -> _SourceDir:
        try:
            st = os.stat(path)
        except OSError as e:
            raise self.fail(f"{new}: can't stat source {path}: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            return _SourceDir(
                DMDIR | (st.st_mode & 0o777), int(st.st_mtime), 0, (st.st_dev, st.st_ino)
            )
        if stat.S_ISREG(st.st_mode):
            return _SourceDir(st.st_mode & 0o777, int(st.st_mtime), st.st_size)
        raise self.fail(f"{new}: source {path} is neither a file nor a directory")

    # -- the walk (domkfs, mktree, mkfile, copyfile) --
    def domkfs(self, me: _File, level: int) -> None:
        child = self.getfile(me)
        if child is None:
            return
        if child.elem in ("+", "*"):
            recursive = child.elem == "+"
            child.new = me.new
            self.mktree(child, recursive)
            child = self.getfile(me)
        while child is not None and self.indent > level:
            if self.mkfile(child):
                self.domkfs(child, self.indent)
            child = self.getfile(me)
        if child is not None:
            self.unread()

    def mktree(self, me: _File, recursive: bool) -> None:
        directory = self.source_of(me)
        if not directory.is_dir():
            raise self.fail(f"{me.new or '/'}: can't open source directory {directory}")
        ident = self.stat(directory, me.new or "/").ident
        if ident in self.expanding:
            raise self.fail(f"{me.new}: source {directory} contains itself (a symbolic link loop)")
        self.expanding.add(ident)
        try:
            self.expand(me, recursive, self.listdir(me, directory))
        finally:
            self.expanding.discard(ident)

    def expand(self, me: _File, recursive: bool, names: list[str]) -> None:
        for name in names:
            if self.opt is not None and self.opt.skip is not None and self.opt.skip.search(name):
                continue
            child = _File(
                _mkpath(me.new, name),
                name,
                _mkpath(me.old, name) if me.old is not None else None,
                me.uid,
                me.gid,
                me.mode,
            )
            source = self.source_of(child)
            info = self.stat(source, child.new)
            if info.mode & DMDIR and not recursive:
                continue  # `*` copies only the files
            if self.copyfile(child, source, info, permonly=True) and recursive:
                self.mktree(child, recursive)

    def listdir(self, me: _File, directory: Path) -> list[str]:
        try:
            if me.old is not None and not me.old.startswith("/"):
                return sorted(os.listdir(directory))
            return self.tree.listdir(me.old if me.old is not None else me.new)
        except OSError as e:
            raise self.fail(
                f"{me.new or '/'}: can't read source directory {directory}: {e.strerror}"
            ) from None

    def mkfile(self, f: _File) -> bool:
        source = self.source_of(f)
        if not os.path.lexists(source):
            raise self.fail(f"{f.new}: source {source} does not exist")
        return self.copyfile(f, source, self.stat(source, f.new), permonly=False)

    def copyfile(self, f: _File, source: Path, d: _SourceDir, *, permonly: bool) -> bool:
        o = self.opt
        uid = f.uid if f.uid != "-" else (o.uid if o is not None else None)
        gid = f.gid if f.gid != "-" else (o.gid if o is not None else None)
        mode = d.mode
        if f.mode != NO_MODE:
            if permonly:
                mode = (mode & ~0o666) | (f.mode & 0o666)
            elif (mode & DMDIR) != (f.mode & DMDIR):
                kind = "a directory" if mode & DMDIR else "not a directory"
                raise self.fail(f"inconsistent mode for {f.new}: source {source} is {kind}")
            else:
                mode = f.mode
        elif o is not None and o.mask:
            mode = (mode & ~o.mask) | (o.mode & o.mask)
        mode &= MODE_MASK
        self.emit(
            ProtoEntry(
                path=f.new,
                mode=mode,
                uid=uid,
                gid=gid,
                source=source,
                mtime=d.mtime,
                length=d.length if not mode & DMDIR else 0,
                origin=self.origin,
            )
        )
        return bool(mode & DMDIR)


def _read_lines(paths: Sequence[Path]) -> list[_Line]:
    """The protos' lines as `cat` would join them, each tagged with file and line number."""
    lines: list[_Line] = []
    pending = ""
    pending_origin = ""
    for path in paths:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ProtoError(f"{path}: can't open proto: {e.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtoError(f"{path}: not UTF-8 at byte {e.start}") from None
        for number, chunk in enumerate(text.split("\n"), 1):
            origin = pending_origin or f"{path}:{number}"
            if "\0" in chunk:
                raise ProtoError(f"{origin}: null bytes in proto")
            lines.append(_Line(pending + chunk, origin))
            pending, pending_origin = "", ""
        # the text after the last newline continues into the next file, as with cat
        last = lines.pop()
        pending, pending_origin = last.text, (last.origin if last.text else "")
    if pending:
        raise ProtoError(f"{pending_origin}: last line has no newline (mkfs would ignore it)")
    for line in lines:
        if len(line.text.encode("utf-8")) + 1 > PROTO_LINE_MAX:
            raise ProtoError(f"{line.origin}: line longer than {PROTO_LINE_MAX} bytes")
    return lines


def read_proto(
    paths: Sequence[Path],
    source_root: Path,
    *,
    binds: Mapping[str, Path | Sequence[Path]] | None = None,
    variables: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> list[ProtoEntry]:
    """Read protos (concatenated, as `cat a b | mkfs` does) against a source root.

    Returns every file and directory mkfs would enumerate, in its order, with
    `+` and `*` expanded.  `binds` overlays source subtrees (see SourceTree);
    `variables` supplies `$name` values (e.g. {"objtype": "amd64"}); `cwd`
    resolves source paths that don't start with `/`.
    """
    if not Path(source_root).is_dir():
        raise ProtoError(f"source root {source_root}: not a directory")
    entries: list[ProtoEntry] = []
    reader = _ProtoReader(
        _read_lines(paths),
        SourceTree(Path(source_root), binds),
        variables or {},
        cwd,
        entries.append,
    )
    root = _File(new="", elem="", old=None, uid="-", gid="-", mode=NO_MODE)
    reader.domkfs(root, -1)
    return entries


__all__ = [
    "DMAPPEND",
    "DMDIR",
    "DMEXCL",
    "DMTMP",
    "ProtoEntry",
    "ProtoError",
    "SourceTree",
    "cleanname",
    "plan9_regex",
    "read_proto",
]
