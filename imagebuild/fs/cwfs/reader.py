"""Read a cwfs64x file system from its partitions: the config, the cache, the worm, `other`.

A worm address of the main (cw) file system is read the way cw.c cwio(Oread)
does: its bucket (waddr % msize) in the cache map names a cache slot when an
entry holds it in any state but Cnone; otherwise the block is on the worm at
that address.  `other` is a plain device: block n at n * RBUFSIZE.

References (9front, sys/src/cmd/cwfs): config.c sysinit()/mergeconf(), cw.c
cwio()/getcentry()/cwsaddr()/cwraddr(), dentry.c rel2abs(), 9p2.c mkdir9p2()
(the stat a client sees), uidgid.c uidtostr().
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import ImageFormatError
from imagebuild.fs.api import FsSummary, count_tree
from imagebuild.fs.cwfs.layout import (
    BKPERBLK,
    BUFSIZE,
    CACHE_ADDR,
    CONFIG_ADDR,
    DIRPERBUF,
    INDPERBUF,
    NDBLOCK,
    NIBLOCK,
    QPROOT,
    QPSUPER,
    RBUFSIZE,
    ROOT_ADDR,
    SUPER_ADDR,
    TAG_NAMES,
    Bucket,
    Cache,
    Cdump,
    Cdump1,
    Cnone,
    Config,
    Cread,
    Dentry,
    Superb,
    Tcache,
    Tdir,
    Tfile,
    Tind1,
    Tsuper,
    dentry_at,
    get_off,
    get_tag,
)
from imagebuild.fs.cwfs.tree import mkmode9p2
from imagebuild.fs.cwfs.users import UserTable

MAX_USERS = 1 << 20  # bytes of /adm/users read for owner names (a real one holds a few hundred)

class CwfsError(ImageFormatError):
    """The partitions do not hold a readable cwfs file system."""


def is_cwfs(fscache: BlockDevice) -> bool:
    """Whether the partition starts with a cwfs config block (what rc/bin/fstype looks at)."""
    if fscache.size < RBUFSIZE:
        return False
    block = fscache.pread(RBUFSIZE, 0)
    return get_tag(block)[0] == 10 and b"blocksize" in block[:BUFSIZE]


@dataclass(frozen=True)
class CwfsStat:
    """What stat(2) shows of a file (9p2.c mkdir9p2())."""

    name: str
    mode: int  # 9P mode: permissions and DMDIR/DMAPPEND/DMEXCL/DMTMP
    uid: str
    gid: str
    muid: str
    length: int  # bytes; 0 for directories
    mtime: int
    atime: int
    qid_path: int
    qid_vers: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & 0x80000000)


@dataclass(frozen=True)
class CwfsSummary(FsSummary):
    """FsSummary of the main file system in worm blocks: `blocks_total` is the worm's size,
    `blocks_used` the addresses handed out (fsize) less the free list; plus the cache."""

    fs_type: ClassVar[str] = "cwfs64x"

    cache_slots: int = 0
    qidgen: int = 0


class BlockSource:
    """Blocks of one file system by address (a plain device; CwBlocks adds the cache)."""

    def __init__(self, device: BlockDevice, name: str) -> None:
        self.device = device
        self.name = name

    def read(self, addr: int) -> bytes:
        if addr < 0 or (addr + 1) * RBUFSIZE > self.device.size:
            raise CwfsError(f"cwfs {self.name}: block {addr} lies outside the partition")
        return self.device.pread(RBUFSIZE, addr * RBUFSIZE)

    @property
    def sbaddr(self) -> int:
        return SUPER_ADDR

    @property
    def root_addr(self) -> int:
        return ROOT_ADDR


class CwBlocks(BlockSource):
    """cwio(Oread): the cache slot for a worm address, else the worm block itself."""

    def __init__(self, cache_dev: BlockDevice, worm_dev: BlockDevice, newcache: bool) -> None:
        super().__init__(cache_dev, "main")
        self.worm = worm_dev
        self.newcache = newcache
        raw = cache_dev.pread(RBUFSIZE, CACHE_ADDR * RBUFSIZE)
        tag, path = get_tag(raw)
        if tag != Tcache or path != QPSUPER:
            raise CwfsError(f"cwfs: cache header tag {tag}/{path}, expected {Tcache}/{QPSUPER}")
        self.cache = Cache.unpack(raw)
        if self.cache.msize <= 0 or self.cache.maddr <= CACHE_ADDR:
            raise CwfsError(f"cwfs: cache header has msize {self.cache.msize}")
        self._map: dict[int, bytes] = {}
        self._index: dict[int, dict[int, tuple[int, int]]] = {}  # bucket -> waddr -> (i, state)

    def bucket(self, bn: int) -> Bucket:
        addr = self.cache.maddr + bn // BKPERBLK
        raw = self._map.get(addr)
        if raw is None:
            if len(self._map) > 256:
                self._map.clear()
            raw = self._map[addr] = self.device.pread(RBUFSIZE, addr * RBUFSIZE)
        return Bucket.unpack(raw, bn % BKPERBLK)

    def slot(self, waddr: int) -> tuple[int, int] | None:
        """(cache block, state) of the entry holding waddr, or None when only the worm has it."""
        bn = waddr % self.cache.msize
        index = self._index.get(bn)
        if index is None:
            if len(self._index) > 4096:
                self._index.clear()
            index = self._index[bn] = {
                c.waddr: (i, c.state) for i, c in enumerate(self.bucket(bn).entry)
                if c.state != Cnone
            }  # fmt: skip
        hit = index.get(waddr)
        if hit is None:
            return None
        return self.cache.slot_addr(waddr, hit[0], self.newcache), hit[1]

    def read(self, addr: int) -> bytes:
        hit = self.slot(addr)
        if hit is not None:
            return self.device.pread(RBUFSIZE, hit[0] * RBUFSIZE)
        if addr < 0 or (addr + 1) * RBUFSIZE > self.worm.size:
            raise CwfsError(f"cwfs main: worm block {addr} lies outside fsworm")
        return self.worm.pread(RBUFSIZE, addr * RBUFSIZE)

    @property
    def sbaddr(self) -> int:
        return self.cache.sbaddr

    @property
    def root_addr(self) -> int:
        return self.cache.cwraddr


class RoBlocks(CwBlocks):
    """The dump file system (`filsys dump o`) as cw.c roread() reads it: a cache slot only
    while it holds the worm's copy (Cdump, Cread, Cdump1), otherwise the worm block."""

    def read(self, addr: int) -> bytes:
        hit = self.slot(addr)
        if hit is not None and hit[1] in (Cdump, Cread, Cdump1):
            return self.device.pread(RBUFSIZE, hit[0] * RBUFSIZE)
        if addr < 0 or (addr + 1) * RBUFSIZE > self.worm.size:
            raise CwfsError(f"cwfs dump: worm block {addr} lies outside fsworm")
        return self.worm.pread(RBUFSIZE, addr * RBUFSIZE)

    @property
    def root_addr(self) -> int:
        return self.cache.roraddr


class CwfsVolume:
    """A cwfs file system read through its blocks: `filsys` main (the default), other, or
    dump (the dump file system: /yyyy/mmdd, each a frozen copy of main's root)."""

    def __init__(self, fscache: BlockDevice, fsworm: BlockDevice, other: BlockDevice | None = None,
                 *, filsys: str = "main") -> None:  # fmt: skip
        self.config = Config.parse(fscache.pread(RBUFSIZE, CONFIG_ADDR * RBUFSIZE))
        self.main = CwBlocks(fscache, fsworm, self.config.newcache)
        self.other = BlockSource(other, "other") if other is not None else None
        if filsys == "main":
            self.blocks: BlockSource = self.main
        elif filsys == "other" and self.other is not None:
            self.blocks = self.other
        elif filsys == "dump":
            self.blocks = RoBlocks(fscache, fsworm, self.config.newcache)
        else:
            have = "main, dump" + (", other" if self.other is not None else "")
            raise CwfsError(f"cwfs: no file system {filsys!r} (file systems: {have})")
        self._users: UserTable | None = None
        self._main_view = self if filsys == "main" else CwfsVolume(fscache, fsworm)

    # -- blocks and entries -------------------------------------------------------------------
    def tagged(self, addr: int, tag: int, path: int) -> bytes:
        block = self.blocks.read(addr)
        t, p = get_tag(block)
        if t != tag or p != path:
            raise CwfsError(
                f"cwfs: block {addr} tagged {TAG_NAMES.get(t, t)}/{p}, "
                f"expected {TAG_NAMES.get(tag, tag)}/{path}"
            )
        return block

    def superblock(self) -> Superb:
        return Superb.unpack(self.tagged(self.blocks.sbaddr, Tsuper, QPSUPER))

    def root(self) -> Dentry:
        return dentry_at(self.tagged(self.blocks.root_addr, Tdir, QPROOT), 0)

    def data_blocks(self, d: Dentry) -> Iterator[int]:
        """rel2abs() for every block of d in order (0 for a hole), up to its size."""
        count = -(-d.size // BUFSIZE)
        if d.is_dir:
            count = NDBLOCK + sum(INDPERBUF ** (i + 1) for i in range(NIBLOCK))
        n = 0
        for a in d.dblock:
            if n >= count or (d.is_dir and not a):
                return
            yield a
            n += 1
        for i in range(NIBLOCK):
            for a in self._ind(d.iblocks[i], i, d.qpath, count - n, d.is_dir):
                yield a
                n += 1
            if n >= count:
                return

    def _ind(self, addr: int, depth: int, qpath: int, left: int, is_dir: bool) -> Iterator[int]:
        if left <= 0:
            return
        span = INDPERBUF ** (depth + 1)
        if not addr:
            if not is_dir:
                yield from [0] * min(span, left)
            return
        block = self.tagged(addr, Tind1 + depth, qpath)
        for k in range(INDPERBUF):
            if left <= 0:
                return
            child = get_off(block, k)
            if depth == 0:
                if is_dir and not child:
                    return
                yield child
                left -= 1
            else:
                for a in self._ind(child, depth - 1, qpath, min(left, INDPERBUF**depth), is_dir):
                    yield a
                    left -= 1

    def entries(self, d: Dentry) -> Iterator[Dentry]:
        seen: set[int] = set()  # a block named twice: indirect blocks could loop for hours
        for addr in self.data_blocks(d):
            if addr in seen:
                raise CwfsError(f"cwfs: directory block {addr} appears twice in one directory")
            seen.add(addr)
            block = self.tagged(addr, Tdir, d.qpath)
            for slot in range(DIRPERBUF):
                e = dentry_at(block, slot)
                if e.allocated:
                    yield e

    def lookup(self, path: str) -> Dentry:
        d = self.root()
        for elem in [p for p in posixpath.normpath("/" + path).split("/") if p]:
            if not d.is_dir:
                raise CwfsError(f"cwfs: {path}: not a directory")
            for e in self.entries(d):
                if e.name == elem.encode("utf-8", "surrogateescape"):
                    d = e
                    break
            else:
                raise CwfsError(f"cwfs: {path}: file does not exist")
        return d

    # -- what clients see ---------------------------------------------------------------------
    @property
    def users(self) -> UserTable:
        if self._users is None:
            try:
                if self._main_view.lookup("/adm/users").size > MAX_USERS:  # read from the image
                    raise CwfsError(f"cwfs: /adm/users is longer than {MAX_USERS} bytes")
                self._users = UserTable.parse(self._main_view.read("/adm/users"))
            except CwfsError:
                self._users = UserTable.default()
        return self._users

    def stat_of(self, d: Dentry) -> CwfsStat:
        u = self.users
        return CwfsStat(
            name=d.name.decode("utf-8", "surrogateescape"), mode=mkmode9p2(d.mode),
            uid=u.uidtostr(d.uid), gid=u.uidtostr(d.gid), muid=u.uidtostr(d.muid),
            length=0 if d.is_dir else d.size, mtime=d.mtime & 0xFFFFFFFF,
            atime=d.atime & 0xFFFFFFFF,
            qid_path=d.path ^ 0x80000000 if d.is_dir else d.path, qid_vers=d.version,
        )  # fmt: skip

    def stat(self, path: str) -> CwfsStat:
        return self.stat_of(self.lookup(path))

    def scandir(self, path: str) -> list[CwfsStat]:
        d = self.lookup(path)
        if not d.is_dir:
            raise CwfsError(f"cwfs: {path}: not a directory")
        return [self.stat_of(e) for e in self.entries(d)]

    def listdir(self, path: str = "/") -> list[str]:
        return [st.name for st in self.scandir(path)]

    def iter_entry(self, d: Dentry) -> Iterator[bytes]:
        """The file's bytes a block at a time, holes as zeros."""
        left = d.size
        for addr in self.data_blocks(d):
            piece = self.tagged(addr, Tfile, d.qpath)[:BUFSIZE] if addr else bytes(BUFSIZE)
            yield piece[: min(left, BUFSIZE)]
            left -= BUFSIZE
            if left <= 0:
                return

    def read_entry(self, d: Dentry) -> bytes:
        return b"".join(self.iter_entry(d))

    def iter_read(self, path: str) -> Iterator[bytes]:
        d = self.lookup(path)
        if d.is_dir:
            raise CwfsError(f"cwfs: {path}: is a directory")
        worm = self.blocks.worm if isinstance(self.blocks, CwBlocks) else self.blocks.device
        if d.size > worm.size:  # only holes could fill it: zeros for hours
            raise CwfsError(f"cwfs: {path}: size {d.size} bytes is more than the partition holds")
        return self.iter_entry(d)

    def read(self, path: str) -> bytes:
        return b"".join(self.iter_read(path))

    def walk(self, path: str = "/") -> Iterator[tuple[str, CwfsStat]]:
        """Every entry below `path`, parents before children, as (path, stat)."""
        for p, d in self.walk_entries(path):
            yield p, self.stat_of(d)

    def walk_entries(self, path: str = "/") -> Iterator[tuple[str, Dentry]]:
        """Every entry below `path`, parents before children, as (path, Dentry)."""
        top = self.lookup(path)
        prefix = posixpath.normpath("/" + path.lstrip("/")).rstrip("/")
        stack: list[tuple[str, Dentry]] = [(prefix, top)]
        seen: set[int] = set()  # directory qid paths: a loop would walk forever
        while stack:
            prefix, d = stack.pop()
            if d.qpath in seen:
                raise CwfsError(f"cwfs: {prefix or '/'}: directory qid {d.qpath:#x} appears twice")
            seen.add(d.qpath)
            for e in self.entries(d):
                path = prefix + "/" + e.name.decode("utf-8", "surrogateescape")
                yield path, e
                if e.is_dir:
                    stack.append((path, e))

    def summary(self) -> CwfsSummary:
        sb = self.superblock()
        files, dirs, total = count_tree((e.is_dir, e.size) for _, e in self.walk_entries())
        h = self.main.cache
        used = sb.fsize - sb.tfree
        return CwfsSummary(
            blocks_total=h.wsize, blocks_used=used, blocks_free=h.wsize - used, files=files,
            directories=dirs + 1, bytes=total, block_size=RBUFSIZE, cache_slots=h.csize,
            qidgen=sb.qidgen,
        )
