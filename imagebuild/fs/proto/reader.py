"""libdisk's rdproto(): one pass over the concatenated proto lines, yielding ProtoEntry values."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from imagebuild.fs.proto.entry import (
    DMAPPEND,
    DMDIR,
    DMEXCL,
    MODE_MASK,
    NO_MODE,
    PROTO_LINE_MAX,
    MissingSource,
    ProtoEntry,
    ProtoError,
)
from imagebuild.fs.proto.modes import parse_mode_option, plan9_regex
from imagebuild.fs.proto.source import SourceTree, cleanname, mkpath

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
    mtime: int = 0  # the proto file's: the mtime of a directory made without a source


@dataclass
class _SourceDir:
    """What dirstat says about a source: mode in Plan 9 bits, times and length."""

    mode: int
    mtime: int
    length: int
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino): a directory met again is a loop


class _ProtoReader:
    """rdproto()'s Mkaux: one pass over the concatenated proto lines."""

    def __init__(
        self,
        lines: list[_Line],
        tree: SourceTree,
        variables: Mapping[str, str],
        cwd: Path | None,
        emit: Callable[[ProtoEntry], None],
        on_missing: Callable[[MissingSource], None] | None,
    ) -> None:
        self.lines = lines
        self.tree = tree
        self.variables = variables
        self.cwd = cwd
        self.emit = emit
        self.on_missing = on_missing  # None: a missing source is an error
        self.pos = 0  # next line to read
        self.indent = 0
        self.origin = "?"
        self.opt: _Opt | None = None
        self.expanding: set[tuple[int, int]] = set()  # directories `+` is inside of
        self.mtimes: dict[int, int] = {}  # one int object per distinct mtime

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
        new = mkpath(parent.new, name)
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
        return self.source_dir(st, new, path)

    def source_dir(self, st: os.stat_result, new: str, path: Path | str) -> _SourceDir:
        """dirstat()'s answer from a stat(2) result; ProtoError for what is not a file or dir."""
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
        if not os.path.exists(directory):
            label = f"{me.new or '/'}/{me.elem}"
            if self.on_missing is None:
                raise self.fail(f"{label}: source directory {directory} does not exist")
            self.on_missing(MissingSource(self.origin, label, directory))
            return
        if not directory.is_dir():
            raise self.fail(f"{me.new or '/'}: can't open source directory {directory}")
        ident = self.stat(directory, me.new or "/").ident
        relative = me.old is not None and not me.old.startswith("/")
        rooted = me.old if me.old is not None else me.new
        if relative or self.tree.plain(rooted):
            self.expand_plain(me, recursive, str(directory), ident)
            return
        self.enter(me, directory, ident)
        try:
            self.expand(me, recursive, self.listdir(me, directory))
        finally:
            self.expanding.discard(ident)

    def enter(self, me: _File, directory: Path | str, ident: tuple[int, int]) -> None:
        """Note that `+` is inside `directory`; ProtoError if it is already (a link loop)."""
        if ident in self.expanding:
            raise self.fail(f"{me.new}: source {directory} contains itself (a symbolic link loop)")
        self.expanding.add(ident)

    def expand_plain(
        self, me: _File, recursive: bool, directory: str, ident: tuple[int, int]
    ) -> None:
        """expand() for a directory whose entries all come from `directory` itself (and so do
        its subdirectories' entries): one scandir per directory and one stat per entry, what
        expand() finds through lookups and stats, and copyfile(permonly) made once."""
        self.enter(me, directory, ident)
        try:
            self._expand_plain(me, recursive, directory)
        finally:
            self.expanding.discard(ident)

    def _expand_plain(self, me: _File, recursive: bool, directory: str) -> None:
        try:
            with os.scandir(directory) as it:
                found = sorted(it, key=_entry_name)
        except OSError as e:
            raise self.fail(
                f"{me.new or '/'}: can't read source directory {directory}: {e.strerror}"
            ) from None
        o = self.opt  # the options stay as they are while `+` expands
        skip = o.skip if o is not None else None
        uid = me.uid if me.uid != "-" else (o.uid if o is not None else None)
        gid = me.gid if me.gid != "-" else (o.gid if o is not None else None)
        keep, put = -1, 0  # copyfile(permonly): the line's rw bits, else the mode= options'
        if me.mode != NO_MODE:
            keep, put = ~0o666, me.mode & 0o666
        elif o is not None and o.mask:
            keep, put = ~o.mask, o.mode & o.mask
        new_prefix = me.new.rstrip("/") + "/"
        origin = self.origin
        emit = self.emit
        mtimes = self.mtimes
        for entry in found:
            name = entry.name
            if skip is not None and skip.search(name):
                continue
            try:
                st = entry.stat()
            except OSError as e:
                raise self.fail(
                    f"{new_prefix + name}: can't stat source {entry.path}: {e.strerror}"
                ) from None
            st_mode = st.st_mode
            mtime = int(st.st_mtime)
            mtime = mtimes.setdefault(mtime, mtime)  # a checkout's files share a few times
            if stat.S_ISREG(st_mode):
                mode = ((st_mode & 0o777) & keep | put) & MODE_MASK
                emit(ProtoEntry(new_prefix + name, mode, uid, gid, entry.path,
                                mtime, st.st_size, origin))  # fmt: skip
            elif not stat.S_ISDIR(st_mode):
                raise self.fail(f"{new_prefix + name}: source {entry.path} is neither a file "
                                "nor a directory")  # fmt: skip
            elif recursive:
                mode = ((DMDIR | (st_mode & 0o777)) & keep | put) & MODE_MASK
                emit(ProtoEntry(new_prefix + name, mode, uid, gid, entry.path,
                                mtime, 0, origin))  # fmt: skip
                old = mkpath(me.old, name) if me.old is not None else None
                child = _File(new_prefix + name, name, old, me.uid, me.gid, me.mode)
                self.expand_plain(child, recursive, entry.path, (st.st_dev, st.st_ino))

    def expand(self, me: _File, recursive: bool, names: list[str]) -> None:
        for name in names:
            if self.opt is not None and self.opt.skip is not None and self.opt.skip.search(name):
                continue
            child = _File(
                mkpath(me.new, name),
                name,
                mkpath(me.old, name) if me.old is not None else None,
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
        """proto.c mkfile(): copy one line's file; a missing source is warned about and its
        deeper lines skipped (skipdir), except a `d` line's, made as an empty directory."""
        source = self.source_of(f)
        if not os.path.exists(source):
            if f.mode != NO_MODE and f.mode & DMDIR:
                made = _SourceDir(DMDIR, self.lines[self.pos - 1].mtime, 0)
                return self.copyfile(f, source, made, permonly=False, missing=True)
            if self.on_missing is None:
                if os.path.lexists(source):
                    self.stat(source, f.new)  # a dangling link: stat names the problem
                raise self.fail(f"{f.new}: source {source} does not exist")
            self.on_missing(MissingSource(self.origin, f.new, source))
            self.skipdir()
            return False
        return self.copyfile(f, source, self.stat(source, f.new), permonly=False)

    def skipdir(self) -> None:
        """proto.c skipdir(): pass over the lines deeper than the current one."""
        level = self.indent
        while self.getline() is not None:
            if self.indent <= level:
                self.popopt()
                self.unread()
                return

    def copyfile(
        self, f: _File, source: Path, d: _SourceDir, *, permonly: bool, missing: bool = False
    ) -> bool:
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
                missing=missing,
            )
        )
        return bool(mode & DMDIR)


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _read_lines(paths: Sequence[Path]) -> list[_Line]:
    """The protos' lines as `cat` would join them, each tagged with file and line number."""
    lines: list[_Line] = []
    pending = ""
    pending_origin = ""
    for path in paths:
        try:
            raw = Path(path).read_bytes()
            mtime = int(os.stat(path).st_mtime)
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
            lines.append(_Line(pending + chunk, origin, mtime))
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
    on_missing: Callable[[MissingSource], None] | None = None,
) -> list[ProtoEntry]:
    """Read protos (concatenated, as `cat a b | mkfs` does) against a source root.

    Returns every file and directory mkfs would enumerate, in its order, with
    `+` and `*` expanded.  `binds` overlays source subtrees (see SourceTree);
    `variables` supplies `$name` values (e.g. {"objtype": "amd64"}); `cwd`
    resolves source paths that don't start with `/`.

    A directory line with a `d` mode whose source does not exist yields an
    entry with `missing=True` (made empty, with the proto file's mtime; a
    git checkout holds no empty directories).  Any other missing source raises ProtoError naming the
    proto file and line, unless `on_missing` is given: then, as disk/mkfs
    warns and goes on, it is called with a MissingSource and the line (with
    the lines below it) is skipped.  Raises ProtoError for malformed protos.
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
        on_missing,
    )
    root = _File(new="", elem="", old=None, uid="-", gid="-", mode=NO_MODE)
    reader.domkfs(root, -1)
    return entries


def missing_summary(missing: Sequence[MissingSource], limit: int = 10) -> str:
    """A few lines for the end of a build: how many sources were missing, the first `limit`."""
    count = len(missing)
    lines = [
        f"warning: {count} file{'s' if count != 1 else ''} named in the protos "
        f"{'do' if count != 1 else 'does'} not exist and {'were' if count != 1 else 'was'} "
        "left out, as disk/mkfs leaves them (--strict or [fs] strict = true: an error)"
    ]
    lines += [f"  {m}" for m in missing[:limit]]
    if count > limit:
        lines.append(f"  ... and {count - limit} more")
    return "\n".join(lines)


__all__ = ["missing_summary", "read_proto"]
