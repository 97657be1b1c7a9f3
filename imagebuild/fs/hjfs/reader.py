"""hjfs reader and checker: list, stat and read files; recount every reference.

The reader follows hjfs's own lookups (fs1.c getblk() with GBREAD,
findentry(), fs2.c chanread(), statbuf(), auth.c uid2name()); the checker
walks every directory from the root and the dump root, recomputes each
block's reference count from the pointers that reach it (what ream,
getfree, chref and dumpblk maintain) and compares with the stored counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import ImageBuildError, ImageFormatError
from imagebuild.fs.api import count_tree
from imagebuild.fs.hjfs.layout import (
    BLOCK,
    DALLOC,
    DGONE,
    DUMPROOTQID,
    NDIRECT,
    NINDIRECT,
    OFFPERBLK,
    QTDIR,
    RBLOCK,
    REFSENTINEL,
    ROOTQID,
    SUPERBLK,
    SUPERMAGIC,
    TDENTRY,
    TINDIR,
    TRAW,
    TREF,
    TYPE_NAMES,
    Dentry,
    HjfsSummary,
    Superblock,
    UserTable,
    default_users,
    indirect_path,
    name_problem,
    ref_blocks,
    unpack_dentries,
    unpack_indir,
    unpack_refs,
)


class HjfsError(ImageBuildError):
    """A path that does not exist, or is of the wrong kind, in an hjfs file system."""


@dataclass(frozen=True)
class HjfsStat:
    """What stat(2) on hjfs reports, plus where the entry lives."""

    name: str
    qid_path: int
    qid_vers: int
    qid_type: int
    mode: int  # Plan 9 Dir.mode: permissions, type bits on top
    uid: str
    gid: str
    muid: str
    length: int  # bytes; 0 for directories
    mtime: int
    atime: int
    blocks: int  # blocks spanned: directory blocks, or HOWMANY(length) for files
    location: tuple[int, int]  # (dentry block, index)

    @property
    def is_dir(self) -> bool:
        return bool(self.qid_type & QTDIR)


def _label(block_type: int) -> str:
    return f"{block_type} ({TYPE_NAMES.get(block_type, '?')})"


def is_hjfs(dev: BlockDevice) -> bool:
    """Whether the device's superblock block carries hjfs's magic (a never-reamed fs does not)."""
    if dev.size < (SUPERBLK + 1) * BLOCK:
        return False
    try:
        return Superblock.unpack(dev.pread(BLOCK, SUPERBLK * BLOCK)).magic == SUPERMAGIC
    except ImageBuildError:
        return False


READ_BLOCKS = 256  # iter_read's pieces: up to 256 blocks (about 1 MiB)
# the largest file getblk can address: direct blocks, then 1 to NINDIRECT levels of indirection
MAX_FILE_BLOCKS = NDIRECT + sum(OFFPERBLK**k for k in range(1, NINDIRECT + 1))


class HjfsVolume:
    """Read access to an hjfs file system on a block device (e.g. the fs partition)."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev
        if dev.size < BLOCK:
            raise ImageFormatError(f"{dev.name}: too small for hjfs ({dev.size} bytes)")
        self.sb = Superblock.unpack(self.block(SUPERBLK))
        if not 0 < self.sb.root < self.sb.size or self.sb.size > dev.size // BLOCK:
            raise ImageFormatError(
                f"{dev.name}: hjfs superblock: root {self.sb.root} or size {self.sb.size} "
                f"outside the device ({dev.size // BLOCK} blocks)"
            )
        self._users: UserTable | None = None
        self._offsets: dict[int, list[int]] = {}

    # -- blocks ---------------------------------------------------------------------------------
    def block(self, b: int) -> bytes:
        return self.dev.pread(BLOCK, b * BLOCK)

    def typed_block(self, b: int, want: int) -> bytes:
        """getbuf() with a type: a block of another type is a phase error."""
        if not 0 <= b < self.sb.size:
            raise ImageFormatError(f"{self.dev.name}: block {b} outside the file system")
        data = self.block(b)
        if data[0] != want:
            raise ImageFormatError(
                f"{self.dev.name}: block {b} has type {_label(data[0])}, expected {_label(want)}"
            )
        return data

    def dentry_at(self, blk: int, deind: int) -> Dentry:
        return unpack_dentries(self.typed_block(blk, TDENTRY))[deind]

    def getblk(self, d: Dentry, blk: int) -> int:
        """fs1.c getblk(GBREAD): the device block holding file block `blk`, 0 for a hole."""
        where = indirect_path(blk)
        if where is None:
            return d.db[blk]
        level, indexes = where
        b = d.ib[level]
        for index in indexes:
            if b == 0:
                return 0
            b = self.offsets(b)[index]
        return b

    def offsets(self, b: int) -> list[int]:
        """An indirect block's pointers (the last few read are kept)."""
        cached = self._offsets.get(b)
        if cached is None:
            if len(self._offsets) >= 64:
                self._offsets.clear()
            cached = self._offsets[b] = unpack_indir(self.typed_block(b, TINDIR))
        return cached

    # -- the tree -------------------------------------------------------------------------------
    def root_location(self) -> tuple[int, int]:
        return self.sb.root, 0

    def entries_at(self, blk: int, deind: int) -> Iterator[tuple[Dentry, int, int]]:
        """A directory's allocated entries in on-disk order, with their locations.

        Raises ImageFormatError for a directory of more blocks than the
        partition has (a corrupt size would make the walk endless).
        """
        d = self.dentry_at(blk, deind)
        if not d.is_dir:
            raise HjfsError(f"{d.name.decode(errors='replace')}: not a directory")
        if d.size > self.sb.size:
            raise ImageFormatError(
                f"{self.dev.name}: directory {d.name.decode(errors='replace')!r} (block {blk} "
                f"entry {deind}) has {d.size} blocks, the partition {self.sb.size}"
            )
        for i in range(d.size):
            b = self.getblk(d, i)
            if b == 0:
                continue
            for j, child in enumerate(unpack_dentries(self.typed_block(b, TDENTRY))):
                if child.mode & DALLOC:
                    yield child, b, j

    def locate(self, path: str) -> tuple[int, int]:
        """Walk `path` from the root (findentry() one element at a time)."""
        blk, deind = self.root_location()
        walked = ""
        for elem in (e for e in path.split("/") if e and e != "."):
            walked += "/" + elem
            target = elem.encode("utf-8", "surrogateescape")
            for child, b, j in self.entries_at(blk, deind):
                if child.name == target:
                    blk, deind = b, j
                    break
            else:
                raise HjfsError(f"{walked}: file does not exist")
        return blk, deind

    @property
    def users(self) -> UserTable:
        """The user table from /adm/users, or hjfs's built-in one without it (readusers())."""
        if self._users is None:
            try:
                self._users = UserTable.parse(self.read("/adm/users", limit=self.sb.size * RBLOCK))
            except HjfsError:
                self._users = UserTable(default_users())
        return self._users

    def _stat(self, d: Dentry, location: tuple[int, int]) -> HjfsStat:
        users = self.users
        return HjfsStat(
            name=d.name.decode("utf-8", "surrogateescape"),
            qid_path=d.path,
            qid_vers=d.vers,
            qid_type=d.type,
            mode=d.plan9_mode,
            uid=users.uid2name(d.uid),
            gid=users.uid2name(d.gid),
            muid=users.uid2name(d.muid),
            length=0 if d.is_dir else d.size,
            mtime=d.mtime,
            atime=d.atime,
            blocks=d.blocks,
            location=location,
        )

    def stat(self, path: str) -> HjfsStat:
        blk, deind = self.locate(path)
        return self._stat(self.dentry_at(blk, deind), (blk, deind))

    def dentry(self, path: str) -> Dentry:
        return self.dentry_at(*self.locate(path))

    def listdir(self, path: str = "/") -> list[str]:
        """Names in a directory, in on-disk order."""
        return [
            d.name.decode("utf-8", "surrogateescape")
            for d, _, _ in self.entries_at(*self.locate(path))
        ]

    def scandir(self, path: str = "/") -> list[HjfsStat]:
        return [self._stat(d, (b, j)) for d, b, j in self.entries_at(*self.locate(path))]

    def read(self, path: str, limit: int | None = None) -> bytes:
        """A file's bytes (chanread(): holes read as zeros), all at once.

        ImageFormatError if the file is longer than `limit` bytes; use
        iter_read for files that may not fit in memory.
        """
        d = self.dentry(path)
        if limit is not None and d.size > limit:
            raise ImageFormatError(
                f"{self.dev.name}: {path}: size {d.size} bytes is more than the partition holds"
            )
        return b"".join(self._iter_dentry(d, path))

    def iter_read(self, path: str) -> Iterator[bytes]:
        """A file's bytes in pieces of at most READ_BLOCKS blocks, holes as zeros (streaming).

        Raises HjfsError for a directory, ImageFormatError for a size past
        the largest file hjfs can address or a bad block pointer.
        """
        return self._iter_dentry(self.dentry(path), path)

    def _iter_dentry(self, d: Dentry, path: str) -> Iterator[bytes]:
        if d.is_dir:
            raise HjfsError(f"{path}: is a directory")
        if d.blocks > MAX_FILE_BLOCKS:
            raise ImageFormatError(
                f"{self.dev.name}: {path}: size {d.size} bytes is past the largest hjfs file"
            )
        return self._blocks_of(d)

    def _blocks_of(self, d: Dentry) -> Iterator[bytes]:
        remaining = d.size
        i = 0
        while remaining > 0:
            n = min(READ_BLOCKS, d.blocks - i)
            numbers = [self.getblk(d, i + k) for k in range(n)]
            out = bytearray()
            k = 0
            while k < n:  # consecutive device blocks are read with one pread
                b = numbers[k]
                run = 1
                while k + run < n and b and numbers[k + run] == b + run:
                    run += 1
                if b == 0:
                    out += bytes(RBLOCK)
                else:
                    if not self.sb.fend <= b or b + run > self.sb.size:
                        raise ImageFormatError(
                            f"{self.dev.name}: block {b} outside the file system"
                        )
                    data = self.dev.pread(run * BLOCK, b * BLOCK)
                    for r in range(run):
                        block = data[r * BLOCK : (r + 1) * BLOCK]
                        if block[0] != TRAW:
                            raise ImageFormatError(
                                f"{self.dev.name}: block {b + r} has type {_label(block[0])}, "
                                f"expected {_label(TRAW)}"
                            )
                        out += block[1:]
                k += run
            del out[remaining:]
            remaining -= len(out)
            i += n
            yield bytes(out)

    def walk(self, path: str = "/") -> Iterator[tuple[str, HjfsStat]]:
        """Every entry below `path`, depth first in on-disk order, with its full path.

        Iterative; raises ImageFormatError when a directory is reached twice
        (a loop in the image) instead of walking forever.
        """
        start = self.locate(path)
        seen = {start}
        stack = [(path.rstrip("/"), iter(self.entries_at(*start)))]
        while stack:
            prefix, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            d, b, j = item
            st = self._stat(d, (b, j))
            full = prefix + "/" + st.name
            yield full, st
            if st.is_dir:
                if (b, j) in seen:
                    raise ImageFormatError(
                        f"{self.dev.name}: {full}: directory reached twice (a loop at "
                        f"block {b} entry {j})"
                    )
                seen.add((b, j))
                stack.append((full, iter(self.entries_at(b, j))))

    def refs(self) -> list[int]:
        """Every block's stored reference count (index = block number), sentinels included."""
        counts: list[int] = []
        for k in range(self.sb.fend - self.sb.fstart):
            counts.extend(unpack_refs(self.typed_block(self.sb.fstart + k, TREF)))
        return counts

    def summary(self) -> HjfsSummary:
        """cons.c cmddf(): free = blocks whose count is 0; plus the tree's contents."""
        free = sum(1 for r in self.refs()[: self.sb.size] if r == 0)
        files, dirs, nbytes = count_tree((st.is_dir, st.length) for _, st in self.walk())
        return HjfsSummary(self.sb.size, self.sb.size - free, free, files, dirs + 1, nbytes)


# -- the checker -------------------------------------------------------------------------------


class _Checker:
    MAX_REPORTED = 50

    def __init__(self, vol: HjfsVolume) -> None:
        self.vol = vol
        self.sb = vol.sb
        self.problems: list[str] = []
        self.expected: Counter[int] = Counter()
        self.visited: dict[int, int] = {}  # block -> type it was reached as
        self.qids: dict[int, str] = {}
        self._indir_cache: dict[int, list[int]] = {}

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def reach(self, b: int, want: int, what: str) -> bytes | None:
        """A block reached through a pointer: in range, of the right type; None if bad or seen."""
        if not self.sb.fend <= b < self.sb.size:
            self.problem(f"{what}: pointer to block {b} outside the data area")
            return None
        if b in self.visited:
            if self.visited[b] != want:
                self.problem(
                    f"{what}: block {b} is used as {_label(want)} and {_label(self.visited[b])}"
                )
            return None
        self.visited[b] = want
        data = self.vol.block(b)
        if data[0] != want:
            self.problem(f"{what}: block {b} has type {_label(data[0])}, expected {_label(want)}")
            return None
        return data

    def check_entry(self, d: Dentry, path: str, *, root: bool = False) -> None:
        """One allocated entry and everything below it, depth first in on-disk order.

        Iterative (a stack of the entries being checked): no recursion on
        image data; a directory block reached twice is reported by reach().
        """
        stack = [self._check_one(d, path, root)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
            else:
                stack.append(self._check_one(child[0], child[1], False))

    def _check_one(self, d: Dentry, path: str, root: bool) -> Iterator[tuple[Dentry, str]]:
        """One allocated directory entry: name, qid, and the blocks hanging from it; yields
        the allocated entries of its directory blocks for the caller to check in turn."""
        problem = name_problem(d.name)
        if problem and not root:
            self.problem(f"{path}: bad name {d.name!r}: {problem}")
        if d.mode & DGONE:
            self.problem(f"{path}: entry marked gone but still allocated")
        if not root:
            if d.path in self.qids:
                self.problem(f"{path}: qid path {d.path} also used by {self.qids[d.path]}")
            self.qids[d.path] = path
            if not DUMPROOTQID < d.path < self.sb.qidpath:
                self.problem(f"{path}: qid path {d.path} outside 3..{self.sb.qidpath - 1}")
        data_type = TDENTRY if d.is_dir else TRAW
        span = d.blocks
        for i, b in enumerate(d.db):
            if b:
                self.expected[b] += 1
                if i >= span:
                    self.problem(f"{path}: direct block {i} ({b}) lies past its size")
        for b in d.ib:
            if b:
                self.expected[b] += 1
        if d.is_dir and span > self.sb.size:
            self.problem(f"{path}: directory of {span} blocks, the partition has {self.sb.size}")
            return
        if span > MAX_FILE_BLOCKS:
            self.problem(f"{path}: size {d.size} bytes is past the largest hjfs file")
            return
        # follow every block of the entry in file order
        if d.is_dir:
            for i in range(span):
                where = indirect_path(i)
                b = d.db[i] if where is None else self.indirect_target(d, path, i)
                if b == 0:
                    self.problem(f"{path}: directory block {i} is missing")
                    continue
                data = self.reach(b, data_type, f"{path} block {i}")
                if data is not None:
                    yield from self.check_directory(data, path)
        else:
            for i, b in self.file_pointers(d, path, span):
                self.reach(b, data_type, f"{path} block {i}")
        self.check_indirect_extent(d, path, span)

    def file_pointers(self, d: Dentry, path: str, span: int) -> Iterator[tuple[int, int]]:
        """(file block, device block) of every non-zero pointer below `span`, ascending.

        Walks the pointer tree rather than every file block, so a sparse
        file of any size costs only the blocks it has.
        """
        for i in range(min(NDIRECT, span)):
            if d.db[i]:
                yield i, d.db[i]
        base, per = NDIRECT, 1
        for level in range(NINDIRECT):
            per *= OFFPERBLK  # file blocks below one pointer of ib[level]
            if d.ib[level] and base < span:
                # (block, depth left, first file block, file blocks per offset), deepest last
                stack = [(d.ib[level], level, base, per // OFFPERBLK)]
                while stack:
                    b, depth, first, each = stack.pop()
                    offsets = self.indir(b, f"{path} indirect level {level} depth {level - depth}")
                    if offsets is None:
                        continue
                    below = []
                    for k, off in enumerate(offsets):
                        start = first + k * each
                        if off and start < span:
                            if depth == 0:
                                yield start, off
                            else:
                                below.append((off, depth - 1, start, each // OFFPERBLK))
                    stack.extend(reversed(below))
            base += per

    def indirect_target(self, d: Dentry, path: str, i: int) -> int:
        where = indirect_path(i)
        assert where is not None
        level, indexes = where
        b = d.ib[level]
        for depth, index in enumerate(indexes):
            if b == 0:
                return 0
            data = self.indir(b, f"{path} indirect level {level} depth {depth}")
            if data is None:
                return 0
            b = data[index]
        return b

    def indir(self, b: int, what: str) -> list[int] | None:
        """An indirect block's offsets, counting its pointers the first time it is reached."""
        if b in self.visited:
            if self.visited[b] != TINDIR:
                self.problem(f"{what}: block {b} is used as indir and {_label(self.visited[b])}")
                return None
            return self._indir_cache.get(b)
        data = self.reach(b, TINDIR, what)
        if data is None:
            return None
        offsets = unpack_indir(data)
        self._indir_cache[b] = offsets
        for off in offsets:
            if off:
                self.expected[off] += 1
        return offsets

    def check_indirect_extent(self, d: Dentry, path: str, span: int) -> None:
        """Pointers below the indirect blocks past the entry's size (trunc() frees those)."""
        base = NDIRECT
        per = 1
        for level in range(NINDIRECT):
            per *= OFFPERBLK
            if d.ib[level] and base >= span:
                self.problem(f"{path}: indirect block {d.ib[level]} lies past its size")
            base += per

    def check_directory(self, data: bytes, path: str) -> Iterator[tuple[Dentry, str]]:
        """A directory block's entries: duplicate names reported, allocated ones yielded."""
        names: set[bytes] = set()
        for child in unpack_dentries(data):
            if not child.mode & (DALLOC | DGONE):
                continue
            name = child.name.decode("utf-8", "surrogateescape")
            full = path.rstrip("/") + "/" + name
            if child.name in names:
                self.problem(f"{full}: name appears twice in {path}")
            names.add(child.name)
            if child.mode & DALLOC:
                yield child, full

    def run(self) -> list[str]:
        sb = self.sb
        size_on_device = self.vol.dev.size // BLOCK
        if sb.size > size_on_device:
            self.problem(f"superblock: size {sb.size} blocks, device has {size_on_device}")
        if sb.fstart != SUPERBLK + 1 or sb.fend != sb.fstart + ref_blocks(sb.size):
            self.problem(
                f"superblock: reference counts in blocks {sb.fstart}..{sb.fend - 1}, "
                f"ream puts them in 1..{ref_blocks(sb.size)}"
            )
            return self.problems
        stored = self.vol.refs()
        for b in range(sb.fend):
            self.expected[b] += 1  # the superblock and the reference blocks themselves
        self.expected[sb.root] += 1  # createroot()'s getfree
        root_block = self.reach(sb.root, TDENTRY, "root")
        if root_block is None:
            return self.problems
        roots = unpack_dentries(root_block)
        for deind, label in ((0, "/"), (1, "dump root")):
            d = roots[deind]
            if not d.mode & DALLOC or not d.is_dir or d.path != ROOTQID:
                self.problem(f"{label}: entry {deind} of block {sb.root} is not the root directory")
                continue
            self.check_entry(d, "/" if deind == 0 else "/(dump)", root=True)
        # compare every count
        reported = 0
        for b in range(len(stored)):
            have = stored[b]
            if b >= sb.size:
                if have != REFSENTINEL:
                    self.problem(f"block {b}: past the device, count {have} is not the sentinel")
                continue
            want = self.expected.get(b, 0)
            if have != want:
                reported += 1
                if reported <= self.MAX_REPORTED:
                    self.problem(f"block {b}: reference count {have}, expected {want}")
        if reported > self.MAX_REPORTED:
            self.problem(f"... and {reported - self.MAX_REPORTED} more reference count mismatches")
        return self.problems


def fsck(dev: BlockDevice) -> list[str]:
    """Check an hjfs file system; returns one line per problem (empty when consistent)."""
    try:
        vol = HjfsVolume(dev)
    except ImageFormatError as e:
        return [str(e)]
    return _Checker(vol).run()


__all__ = ["HjfsError", "HjfsStat", "HjfsVolume", "fsck", "is_hjfs"]
