"""The disk/mkfs replay (imagebuild.fs.mkfs) against a file server that records its requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.errors import LayoutError
from imagebuild.fs.api import FsRefused, SourceFile, Wstat
from imagebuild.fs.mkfs import BUFLEN, MKFSTMP, copy_writes, mkfs
from imagebuild.fs.proto import DMDIR, ProtoEntry


@dataclass
class _File:
    path: str
    mode: int
    mtime: int = 0
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)


class Recorder:
    """A FileServer keeping files in a dict and logging each request."""

    def __init__(self) -> None:
        self.files = {"/": _File("/", DMDIR | 0o775, 0)}
        self.log: list[tuple[object, ...]] = []
        self.user = ""

    def attach(self, user: str) -> None:
        if user == "nobody":
            raise FsRefused("no such user")
        self.user = user

    def walk(self, path: str) -> _File | None:
        return self.files.get(path)

    def stat(self, fid: _File) -> _File:
        return fid

    def create(self, parent: _File, name: str, perm: int) -> _File:
        path = parent.path.rstrip("/") + "/" + name
        if path in self.files:
            raise FsRefused("file exists")
        self.log.append(("create", path, oct(perm)))
        self.files[path] = f = _File(path, perm)
        return f

    def write(self, fid: _File, offset: int, data: bytes | memoryview) -> None:
        self.log.append(("write", fid.path, offset, len(data)))
        end = offset + len(data)
        if len(fid.data) < end:
            fid.data.extend(bytes(end - len(fid.data)))
        fid.data[offset:end] = data

    def wstat(self, fid: _File, change: Wstat) -> None:
        self.log.append(("wstat", fid.path, change))
        if change.uid == "bad":
            raise FsRefused("unknown user 'bad'")
        if change.mtime is not None:
            fid.mtime = change.mtime
        if change.mode is not None:
            fid.mode = change.mode
        if change.name is not None:
            del self.files[fid.path]
            fid.path = fid.path.rsplit("/", 1)[0] + "/" + change.name
            self.files[fid.path] = fid


def _entry(path: str, source: Path, *, mode: int = 0o664, mtime: int = 100,
           uid: str | None = None, origin: str = "proto:1") -> ProtoEntry:
    length = 0 if mode & DMDIR else source.stat().st_size
    return ProtoEntry(path, mode, uid, None, source, mtime, length, origin)


def test_directory_then_file_in_mkfs_order(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"a" * BUFLEN + bytes(BUFLEN) + b"b")
    server = Recorder()
    mkfs(server, [_entry("/d", tmp_path, mode=DMDIR | 0o775), _entry("/d/f", src, uid="bob")],
         user="glenda", default_owner=("sys", "sys"), timestamp=50)
    assert server.log == [
        ("create", "/d", oct(DMDIR | 0o775)),
        ("wstat", "/d", Wstat(mode=DMDIR | 0o775, gid="sys", mtime=50)),
        ("wstat", "/d", Wstat(uid="sys")),
        ("create", f"/d/{MKFSTMP}", "0o666"),
        ("write", f"/d/{MKFSTMP}", 0, BUFLEN),  # the zero piece between is a hole
        ("write", f"/d/{MKFSTMP}", 2 * BUFLEN, 1),
        ("wstat", f"/d/{MKFSTMP}", Wstat(mode=0o664, gid="sys", mtime=50, name="f")),
        ("wstat", "/d/f", Wstat(uid="bob")),
    ]
    assert bytes(server.files["/d/f"].data) == src.read_bytes()


def test_uptodate_targets_are_left_alone_and_directories_rewstated(tmp_path: Path) -> None:
    server = Recorder()
    d = _entry("/d", tmp_path, mode=DMDIR | 0o775, mtime=10)
    mkfs(server, [d, d], user="glenda", default_owner=("sys", "sys"), timestamp=None)
    assert [op[0] for op in server.log] == ["create", "wstat", "wstat"]
    newer = _entry("/d", tmp_path, mode=DMDIR | 0o700, mtime=20)
    mkfs(server, [newer], user="glenda", default_owner=("sys", "sys"), timestamp=None)
    assert [op[0] for op in server.log[3:]] == ["wstat", "wstat"]


def test_refusals_name_the_proto_line(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(LayoutError, match=r"^p:7: /f: unknown user 'bad'$"):
        mkfs(Recorder(), [_entry("/f", src, uid="bad", origin="p:7")], user="glenda",
             default_owner=("sys", "sys"), timestamp=None)
    with pytest.raises(LayoutError, match="mkfs user 'nobody': no such user"):
        mkfs(Recorder(), [], user="nobody", default_owner=("sys", "sys"), timestamp=None)
    with pytest.raises(LayoutError, match="/x is not a directory"):
        mkfs(Recorder(), [_entry("/x/f", src)], user="glenda", default_owner=("s", "s"),
             timestamp=None)
    with pytest.raises(LayoutError, match="mkfs's temporary file"):
        mkfs(Recorder(), [_entry(f"/{MKFSTMP}", src)], user="glenda",
             default_owner=("s", "s"), timestamp=None)


def _reference_writes(data: bytes) -> list[tuple[int, bytes]]:
    """mkfs.c copy() written out plainly: 4088-byte pieces, zero ones skipped, last zero byte."""
    out: list[tuple[int, bytes]] = []
    skipped = False
    for off in range(0, len(data), BUFLEN):
        piece = data[off : off + BUFLEN]
        skipped = piece == bytes(len(piece))
        if not skipped:
            out.append((off, piece))
    if skipped:
        out.append((len(data) - 1, b"\0"))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 3 * BUFLEN)), max_size=8))
def test_copy_writes_match_mkfs_copy(tmp_path_factory: pytest.TempPathFactory,
                                     runs: list[tuple[bool, int]]) -> None:
    data = b"".join(bytes(n) if zero else b"\1" * n for zero, n in runs)
    src = tmp_path_factory.mktemp("cw") / "f"
    src.write_bytes(data)
    got = [(o, bytes(d)) for o, d in copy_writes(SourceFile(src, len(data), "f"))]
    assert got == _reference_writes(data)
