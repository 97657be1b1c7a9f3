"""gefs reader: superblock, arenas, the snapshot tree, datasets, files.

Opens a gefs partition through a `pread(size, offset)` function, finds the
snapshot a label names, and reads the file tree from it the way fs.c walks
it: a directory's children are the Kent entries keyed by its qid, a file's
bytes are the Kdat blocks keyed by (qid, offset), a missing block reads as
zeros.  Trees are read whole, applying the messages buffered in pivots
(newest, nearest the root, last), as tree.c btlookup()/btnext() do.

References: load.c loadfs(), loadarena(); snap.c opensnap(); tree.c
btlookup(), apply(), statupdate(); fs.c walk1(), readb(); user.c
loadusers(), parseusers(); pack.c dir2statbuf() (times in seconds).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from imagebuild.errors import ImageBuildError
from imagebuild.fs.api import FsSummary, count_tree
from imagebuild.fs.gefs.hash import blkhash, blkhash_many
from imagebuild.fs.gefs.layout import (
    BLKSZ,
    DMDIR,
    KENT,
    KLABEL,
    NSEC,
    OCLEARB,
    OCLOBBER,
    ODELETE,
    OINSERT,
    ORELINK,
    OREPREV,
    OWATIME,
    OWGID,
    OWMODE,
    OWMTIME,
    OWMUID,
    OWSIZE,
    OWSTAT,
    OWUID,
    QTDIR,
    TLEAF,
    ArenaHdr,
    Bptr,
    GefsFormatError,
    Node,
    Superblock,
    TreeRec,
    Xdir,
    dat_key,
    ent_key_parts,
    label_key,
    label_value_parts,
    s32,
    snap_key,
    unpack_node,
)

Pread = Callable[[int, int], bytes]


# 32 arenas of 4 TiB hold 2**33 blocks; pivots have two children or more
MAX_HEIGHT = 40
MAX_USERS = 1 << 20  # bytes of /users read for owner names (a real one holds a few hundred)


class GefsError(ImageBuildError):
    """A path that is missing, or a file where a directory is wanted (and the reverse)."""


@dataclass(frozen=True)
class GefsSummary(FsSummary):
    """df for gefs: blocks of 16 KiB across all arenas, the main dataset's tree."""

    fs_type: ClassVar[str] = "gefs"
    datasets: tuple[str, ...] = ()


def is_gefs(pread: Pread) -> bool:
    """True when block 0 starts with the gefs superblock magic."""
    return pread(8, 0) == b"gefs9.00"


def statupdate(val: bytes, msg: bytes) -> bytes:
    """tree.c statupdate(): apply an Owstat message to a Kent value."""
    d = Xdir.unpack(val)
    if not msg:
        raise GefsFormatError("gefs: malformed wstat message")
    op = msg[0]
    p = 1
    d.vers = (d.vers + 1) & 0xFFFFFFFF
    fields = ((OWSIZE, 8, "length"), (OWMODE, 4, "mode"), (OWMTIME, 8, "mtime"),
              (OWATIME, 8, "atime"), (OWUID, 4, "uid"), (OWGID, 4, "gid"), (OWMUID, 4, "muid"))
    for bit, n, name in fields:
        if op & bit:
            if p + n > len(msg):
                raise GefsFormatError("gefs: malformed wstat message")
            signed = name in ("uid", "gid", "muid", "atime", "mtime")
            v = int.from_bytes(msg[p : p + n], "big", signed=signed)
            setattr(d, name, v)
            if name == "mode":
                d.qtype = (v >> 24) & 0xFF
            p += n
    if p != len(msg):
        raise GefsFormatError("gefs: malformed wstat message")
    return d.pack()


def apply_msg(kvs: dict[bytes, bytes], op: int, key: bytes, val: bytes) -> None:
    """tree.c apply() of one buffered message."""
    if op == OINSERT:
        kvs[key] = val
    elif op in (ODELETE, OCLEARB, OCLOBBER):
        kvs.pop(key, None)
    elif op == OWSTAT:
        if key in kvs:
            kvs[key] = statupdate(kvs[key], val)
    elif op in (ORELINK, OREPREV):
        if len(val) != 10:
            raise GefsFormatError("gefs: malformed relink message")
        if key in kvs:
            t = TreeRec.unpack(kvs[key])
            link = struct.unpack_from(">q", val, 0)[0]
            if op == ORELINK:
                t.succ = link
            else:
                t.pred = link
            t.nlbl = s32(t.nlbl + struct.unpack_from(">b", val, 8)[0])  # C's int arithmetic
            t.nref = s32(t.nref + struct.unpack_from(">b", val, 9)[0])
            kvs[key] = t.pack()
    else:
        raise GefsFormatError(f"gefs: unknown message op {op}")


@dataclass
class GefsStat:
    """One entry as stat(2) on gefs shows it (times in seconds, names from /adm/users)."""

    name: str
    qid: int
    vers: int
    mode: int
    atime: int
    mtime: int
    length: int
    uid: str
    gid: str
    muid: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & DMDIR)


class GefsVolume:
    """A gefs file system opened read-only; `dataset` picks the label walked (main by default)."""

    def __init__(self, pread: Pread, size: int) -> None:
        self.pread = pread
        self.size = size
        try:
            self.sb = Superblock.unpack(self.block(0))
        except GefsFormatError:
            last = size - size % BLKSZ - BLKSZ
            self.sb = Superblock.unpack(self.block(last))
        self.arenas = [self._arena(addr, h) for addr, h in self.sb.arenas]
        self.snap = self.tree_kvs(self.sb.snap_bp, self.sb.snap_ht)
        self._cache: dict[str, _Dataset] = {}
        self._users: dict[int, str] | None = None

    def block(self, addr: int) -> bytes:
        if addr < 0 or addr + BLKSZ > self.size:
            raise GefsFormatError(f"gefs: block {addr:#x} is outside the partition")
        return self.pread(BLKSZ, addr)

    def checked(self, bp: Bptr) -> bytes:
        blk = self.block(bp.addr)
        if blkhash(blk) != bp.hash:
            raise GefsFormatError(f"gefs: block {bp.addr:#x}: checksum does not match")
        return blk

    def checked_many(self, bps: list[Bptr]) -> bytes:
        """The blocks `bps` name, one after another, each checked against its pointer's hash."""
        blocks = [self.block(bp.addr) for bp in bps]
        for bp, h in zip(bps, blkhash_many(blocks), strict=True):
            if h != bp.hash:
                raise GefsFormatError(f"gefs: block {bp.addr:#x}: checksum does not match")
        return b"".join(blocks)

    def _arena(self, addr: int, h: int) -> ArenaHdr:
        for a in (addr, addr + BLKSZ):  # load.c loadarena(): h0, else h1
            blk = self.block(a)
            if blkhash(blk) == h:
                hdr = ArenaHdr.from_block(blk)
                if not (hdr.size >= BLKSZ and addr + hdr.size + 2 * BLKSZ <= self.size
                        and 0 <= hdr.used <= hdr.size):
                    raise GefsFormatError(f"gefs: arena at {addr:#x}: size {hdr.size} out of range")
                return hdr
        raise GefsFormatError(f"gefs: arena at {addr:#x}: both headers are corrupt")

    def node(self, bp: Bptr) -> Node:
        return unpack_node(self.checked(bp))

    def tree_kvs(self, root: Bptr, ht: int) -> dict[bytes, bytes]:
        """Every effective key/value of the tree at `root`, messages applied, in key order."""
        if not 0 < ht <= MAX_HEIGHT:
            raise GefsFormatError(f"gefs: tree height {ht} (at most {MAX_HEIGHT})")
        out = self._subtree(root, ht, 0, set())
        return dict(sorted(out.items()))

    def _subtree(self, bp: Bptr, ht: int, depth: int, seen: set[int]) -> dict[bytes, bytes]:
        if depth >= ht:
            raise GefsFormatError(f"gefs: tree deeper than its height {ht}")
        if bp.addr in seen:
            raise GefsFormatError(f"gefs: block {bp.addr:#x} appears twice in one tree")
        seen.add(bp.addr)
        n = self.node(bp)
        if any(not k for k, _ in n.vals) or any(not m.key for m in n.msgs):
            raise GefsFormatError(f"gefs: node {bp.addr:#x} holds an empty key (no key type)")
        if n.btype == TLEAF:
            if depth != ht - 1:
                raise GefsFormatError(f"gefs: leaf {bp.addr:#x} above the bottom of the tree")
            return dict(n.vals)
        kvs: dict[bytes, bytes] = {}
        for _, v in n.vals:
            kvs.update(self._subtree(Bptr.unpack(v), ht, depth + 1, seen))
        for m in n.msgs:
            apply_msg(kvs, m.op, m.key, m.val)
        return kvs

    # -- snapshots -------------------------------------------------------------------------
    def labels(self) -> dict[str, tuple[int, int]]:
        """label -> (snapshot generation, flags)."""
        return {
            k[1:].decode("utf-8", "replace"): label_value_parts(v)
            for k, v in self.snap.items()
            if k[0] == KLABEL
        }

    def snapshot(self, label: str) -> TreeRec:
        lv = self.snap.get(label_key(label.encode()))
        if lv is None:
            raise GefsFormatError(f"gefs: no dataset labelled {label!r}")
        gen, _ = label_value_parts(lv)
        rec = self.snap.get(snap_key(gen))
        if rec is None:
            raise GefsFormatError(f"gefs: label {label!r} names missing snapshot {gen}")
        return TreeRec.unpack(rec)

    def dataset(self, label: str = "main") -> _Dataset:
        ds = self._cache.get(label)
        if ds is None:
            t = self.snapshot(label)
            ds = _Dataset(self, self.tree_kvs(t.bp, t.ht))
            self._cache[label] = ds
        return ds

    def users(self) -> dict[int, str]:
        """id -> name from the adm dataset's /users (user.c parseusers, first pass)."""
        if self._users is None:
            adm = self.dataset("adm")
            if adm._walk1("/users")[1].length > MAX_USERS:  # a length read from the image
                raise GefsFormatError(f"gefs: /users is longer than {MAX_USERS} bytes")
            text = adm.read("/users").decode("utf-8", "replace")
            self._users = {}
            for line in text.split("\n"):
                f = line.split(":")
                if line and not line.startswith("#") and len(f) >= 2:
                    try:
                        self._users[int(f[0])] = f[1]
                    except ValueError:
                        continue
        return self._users

    # -- conveniences over main ------------------------------------------------------------
    def stat(self, path: str, label: str = "main") -> GefsStat:
        return self.dataset(label).stat(path)

    def listdir(self, path: str, label: str = "main") -> list[str]:
        return self.dataset(label).listdir(path)

    def read(self, path: str, label: str = "main") -> bytes:
        return self.dataset(label).read(path)

    def walk(self, path: str = "/", label: str = "main") -> Iterator[tuple[str, GefsStat]]:
        prefix = "/" + "/".join(e for e in path.split("/") if e)
        for p, st in self.dataset(label).walk():
            if p == prefix or p.startswith(prefix.rstrip("/") + "/"):
                yield p, st

    def scandir(self, path: str = "/", label: str = "main") -> list[GefsStat]:
        ds = self.dataset(label)
        return [ds.stat(path.rstrip("/") + "/" + n) for n in ds.listdir(path)]

    def iter_read(self, path: str, label: str = "main") -> Iterator[bytes]:
        return self.dataset(label).iter_read(path)

    def summary(self) -> GefsSummary:
        """Blocks used and free (from the arena headers) and what the main dataset holds."""
        files, dirs, nbytes = count_tree((st.is_dir, st.length) for _, st in self.walk())
        total = sum(a.size for a in self.arenas) // BLKSZ
        used = sum(a.used for a in self.arenas) // BLKSZ
        return GefsSummary(total, used, total - used, files, dirs, nbytes, BLKSZ,
                           tuple(sorted(self.labels())))


class _Dataset:
    """One snapshot's file tree."""

    def __init__(self, vol: GefsVolume, kvs: dict[bytes, bytes]) -> None:
        self.vol = vol
        self.kvs = kvs
        self.children: dict[int, dict[bytes, Xdir]] = {}
        self.root: Xdir | None = None
        for k, v in kvs.items():
            if k[0] != KENT:
                continue
            up, name = ent_key_parts(k)
            d = Xdir.unpack(v)
            if up == -1:
                self.root = d
            else:
                self.children.setdefault(up, {})[name] = d

    def _walk1(self, path: str) -> tuple[str, Xdir]:
        if self.root is None:
            raise GefsFormatError("gefs: dataset has no root directory")
        d, name = self.root, "/"
        for elem in [e for e in path.split("/") if e]:
            if not d.qtype & QTDIR:
                raise GefsError(f"{path}: file does not exist")
            nd = self.children.get(d.qid, {}).get(elem.encode("utf-8", "surrogateescape"))
            if nd is None:
                raise GefsError(f"{path}: file does not exist")
            d, name = nd, elem
        return name, d

    def _stat(self, name: str, d: Xdir) -> GefsStat:
        try:
            users = self.vol.users()
        except (GefsFormatError, GefsError):
            users = {}

        def who(i: int) -> str:
            return users.get(i, str(i))
        return GefsStat(name, d.qid, d.vers, d.mode, (d.atime + NSEC // 2) // NSEC,
                        (d.mtime + NSEC // 2) // NSEC, d.length, who(d.uid), who(d.gid),
                        who(d.muid))

    def stat(self, path: str) -> GefsStat:
        name, d = self._walk1(path)
        return self._stat(name, d)

    def listdir(self, path: str) -> list[str]:
        _, d = self._walk1(path)
        if not d.qtype & QTDIR:
            raise GefsError(f"{path}: not a directory")
        return sorted(n.decode("utf-8", "surrogateescape") for n in self.children.get(d.qid, {}))

    def read(self, path: str) -> bytes:
        return b"".join(self.iter_read(path))

    def iter_read(self, path: str) -> Iterator[bytes]:
        """The file's bytes a block at a time, holes as zeros.  A length past the partition's
        size is refused (GefsFormatError): only a hole could fill it, and reading it would
        stream zeros for hours."""
        _, d = self._walk1(path)
        if d.qtype & QTDIR:
            raise GefsError(f"{path}: is a directory")
        if d.length > self.vol.size:
            raise GefsFormatError(
                f"gefs: {path}: length {d.length} bytes is more than the partition holds")
        return self._blocks(d)

    def _blocks(self, d: Xdir) -> Iterator[bytes]:
        """Runs of at most 256 blocks, their hashes checked together (blkhash_many)."""
        left = d.length
        run: list[Bptr] = []
        for off in range(0, d.length, BLKSZ):
            v = self.kvs.get(dat_key(d.qid, off))
            if v is None:
                piece = self.vol.checked_many(run) + bytes(min(BLKSZ, d.length - off))
                run = []
            else:
                run.append(Bptr.unpack(v))
                if len(run) < 256:
                    continue
                piece, run = self.vol.checked_many(run), []
            yield piece[:left]
            left -= len(piece)
        if run:
            yield self.vol.checked_many(run)[:left]

    def walk(self) -> Iterator[tuple[str, GefsStat]]:
        if self.root is None:
            return
        stack = [("/", self.root)]
        seen: set[int] = set()
        while stack:
            path, d = stack.pop()
            if d.qtype & QTDIR:
                if d.qid in seen:
                    raise GefsFormatError(f"gefs: {path}: directory qid {d.qid} appears twice")
                seen.add(d.qid)
            yield path, self._stat(path.rpartition("/")[2] or "/", d)
            if d.qtype & QTDIR:
                for name, c in sorted(self.children.get(d.qid, {}).items(), reverse=True):
                    child = path.rstrip("/") + "/" + name.decode("utf-8", "surrogateescape")
                    stack.append((child, c))


__all__ = [
    "GefsError", "GefsStat", "GefsSummary", "GefsVolume", "apply_msg", "is_gefs", "statupdate",
]
