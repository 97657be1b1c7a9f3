"""hjfs writer: the fs partition as `hjfs -r`, the mkfile's console commands and disk/mkfs leave it.

The dist mkfile's `%.disk` rule runs, after the FAT step:

    hjfs -f $d/fs -n $s -S -r
    echo on; create /dist sys sys 775 d; create /usr sys sys 775 d
    newuser glenda; newuser adm +glenda; newuser sys +glenda; newuser upas +glenda
    disk/mkfs -z 4096 -U -s /n/src9 -d /n/newfs <{cat $proto $bootproto}

We replay that sequence on an in-memory model of hjfs, operation by
operation, in the order the 9P requests reach hjfs, so that block
allocation, qid paths, versions, owners and times come out as hjfs computes
them; then we write the final blocks in long runs.  Nothing touches the
device until the whole tree has been placed, so a tree too big for the
partition fails before anything is written.

References (9front, sys/src/cmd/hjfs unless noted):
- fs1.c ream(), createroot(), getfree()/putfree() with the free list,
  getblk(), trunc(), newentry(), writeusers(), modified();
- fs2.c chancreat(), chanopen(OTRUNC), chanwrite(), chanwstat();
- auth.c udef[], userssave(), usersload(), cmdnewuser(), createuserdir();
- cons.c cmdcreate(); main.c (-S: FSNOPERM|FSCHOWN);
- sys/src/cmd/disk/mkfs.c protoenum(), uptodate(), mkdir(), copy() with -z;
- sys/src/libbio (a Biobuf of 4095 bytes flushes 4090 at a time).
"""

from __future__ import annotations

import os
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeAlias

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import InputError, LayoutError
from imagebuild.fs.hjfs.layout import (
    BLOCK,
    DALLOC,
    DEPERBLK,
    DUMPROOTQID,
    NAMELEN,
    NDIRECT,
    NINDIRECT,
    NOUID,
    OFFPERBLK,
    QTDIR,
    RBLOCK,
    REFPERBLK,
    REFSIZ,
    ROOTQID,
    SUPERBLK,
    TRAW,
    TREF,
    ZERO_BLOCK,
    Dentry,
    FsSummary,
    Superblock,
    User,
    UserTable,
    block_of,
    default_users,
    howmany,
    indirect_path,
    name_problem,
    pack_dentries,
    pack_indir,
    ref_blocks,
    to_short,
    user_problem,
)
from imagebuild.fs.proto import DMAPPEND, DMDIR, DMEXCL, ProtoEntry
from imagebuild.util.progress import Progress

# The console lines the dist mkfile feeds hjfs between ream and mkfs (its echo on/off omitted).
MKFILE_CONSOLE: tuple[str, ...] = (
    "create /dist sys sys 775 d",
    "create /usr sys sys 775 d",
    "newuser glenda",
    "newuser adm +glenda",
    "newuser sys +glenda",
    "newuser upas +glenda",
)
# Who runs mkfs: its attach name becomes every new file's creator and muid.  It must be a
# user hjfs knows at that point; the dist is built as glenda.
MKFS_USER = "glenda"
DEFAULT_OWNER = ("sys", "sys")

FREELISTLEN = 256  # dat.h: the free-block channel's capacity
MKFS_BUFLEN = 4096 - 8  # mkfs -z 4096: buflen = 4096-8, the size of each read and write
MKFS_TMP = b"__mkfstmp"  # copy() writes here, then renames by wstat
USERS_BIO = RBLOCK - 5  # userssave(): Binits on RBLOCK bytes keeps Bungetsize (UTFmax+1) back
ADM_UID = -1  # writeusers() and createroot() act as uid -1 ("adm")
RUN_BYTES = 8 << 20  # write in runs of up to this many bytes
_FILE_KEY = 1 << 32  # file data blocks are recorded as file_index * _FILE_KEY + file_block

# Replay modes: DRY places every file as if it had no holes, without reading it (it checks
# everything, bounds the blocks needed, and is exact for a tree without holes); PLAN reads
# each file to find its holes and records where its blocks go; STREAM does the same and
# writes the data at once.  DRY and STREAM models keep only the blocks written at the end
# (directories, indirect blocks, the user table), not the file data.
DRY, PLAN, STREAM = "dry", "plan", "stream"
# Files are read in pieces that start on both a 4088-byte write and a 4095-byte block boundary.
PIECE = 4 * (MKFS_BUFLEN * RBLOCK // 7)  # 4 * lcm(4088, 4095) = 9565920 bytes

_ZERO_CHUNK = bytes(MKFS_BUFLEN)
_ZERO_RBLOCK = bytes(RBLOCK)
_RAW_TYPE = bytes((TRAW,))



# -- block allocation (getfree/putfree) ---------------------------------------------------------


class _Allocator:
    """Reference counts and hjfs's free list.

    getfree() first takes blocks queued on the free list (a channel of 256
    block numbers), then scans the reference counts from the start for the
    first free block, allocates it, and queues the following free blocks of
    the same reference block while the channel has room.  putfree() queues a
    block it frees if there is room.  During ream the channel does not exist
    yet (initfs creates it afterwards), so nothing is queued.
    """

    def __init__(self, size: int, used_below: int) -> None:
        self.size = size
        self.refs = bytearray(size)
        self.refs[:used_below] = b"\x01" * used_below
        self.freelist: list[int] | None = None  # queued blocks, the next first
        self.low = used_below  # every block below this one is in use
        self.overflow = 0  # blocks handed out past the end while planning

    def getfree(self) -> int:
        refs = self.refs
        freelist = self.freelist
        if freelist is not None:
            while freelist:
                b = freelist.pop(0)
                if refs[b] == 0:
                    refs[b] = 1
                    return b
        b = refs.find(0, self.low)
        if b < 0:
            self.overflow += 1
            return self.size + self.overflow - 1
        refs[b] = 1
        self.low = b + 1
        if freelist is not None:
            end = min((b // REFPERBLK + 1) * REFPERBLK, self.size)
            pos = b + 1
            stop = min(end, pos + FREELISTLEN - len(freelist))
            if refs.count(0, pos, stop) == stop - pos:  # all free, as on a fresh device
                freelist.extend(range(pos, stop))
                return b
            while len(freelist) < FREELISTLEN:
                j = refs.find(0, pos, end)
                if j < 0:
                    break
                freelist.append(j)
                pos = j + 1
        return b

    def getfree_many(self, count: int) -> list[int]:
        """What `count` getfree() calls return, taking consecutive free queued blocks at once."""
        refs = self.refs
        freelist = self.freelist
        taken: list[int] = []
        while len(taken) < count:
            n = min(count - len(taken), len(freelist or ()))
            if freelist and n > 1:
                run = range(freelist[0], freelist[0] + n)
                if freelist[:n] == list(run) and refs.count(0, run.start, run.stop) == n:
                    refs[run.start : run.stop] = b"\x01" * n
                    del freelist[:n]
                    taken += run
                    continue
            taken.append(self.getfree())
        return taken

    def putfree(self, b: int) -> None:
        if b >= self.size:
            return
        self.refs[b] -= 1
        if self.refs[b] == 0:
            self.low = min(self.low, b)
            if self.freelist is not None and len(self.freelist) < FREELISTLEN:
                self.freelist.append(b)


# -- the model ----------------------------------------------------------------------------------


@dataclass
class _Node:
    """A Dentry and where it lives (hjfs's Loc: block and index), with its entry count."""

    dentry: Dentry
    blk: int
    deind: int
    entries: int = 0


@dataclass(frozen=True)
class _Source:
    path: Path
    length: int


class _Placed(NamedTuple):
    """A file a DRY replay placed without reading it: where each of its blocks went."""

    path: Path
    length: int
    where: str
    numbers: list[int]  # device block of each file block


DirBlock: TypeAlias = "list[Dentry | None]"
Offsets: TypeAlias = "array[int]"
# a block's final content: dentries, indirect offsets, raw bytes, or file data (an int key)
BlockContent: TypeAlias = "DirBlock | Offsets | bytes | int"


class HjfsPlan:
    """The fs partition after ream, console commands and mkfs, held in memory until write()."""

    def __init__(
        self,
        size: int,
        now: int,
        mode: str = PLAN,
        sink: _RunWriter | None = None,
        dense_files: int = 0,
    ) -> None:
        if mode not in (DRY, PLAN, STREAM) or (mode == STREAM) != (sink is not None):
            raise ValueError(f"bad replay mode {mode!r}")
        self.size = size
        self.now = now
        self.mode = mode
        self.sink = sink
        # STREAM: the first files copied are known to have no holes and are on the device already
        self.dense_files = dense_files
        self.files_copied = 0
        self.placed: list[_Placed] = []  # DRY: every file copied, in order
        self.placed_written = 0  # DRY: how many of those write_placed() wrote
        self.fstart = SUPERBLK + 1
        self.fend = self.fstart + ref_blocks(size)
        self.alloc = _Allocator(size, self.fend)
        self.qidpath = DUMPROOTQID + 1
        self.blocks: dict[int, BlockContent] = {}
        self.paths: dict[str, _Node] = {}
        self.sources: list[_Source] = []
        self.users = UserTable(default_users())
        self.mkfs_uids: dict[str, int] = {}  # user and group names mkfs looked up
        self.root = 0

    # -- hjfs internals -------------------------------------------------------------------------
    def _modified(self, d: Dentry, uid: int) -> None:
        """fs1.c modified(): every change stamps the time, the modifier and a new version."""
        d.mtime = d.atime = self.now
        d.muid = uid
        d.vers = (d.vers + 1) & 0xFFFFFFFF

    def _getblk(self, d: Dentry, blk: int, create: bool) -> tuple[int, bool]:
        """fs1.c getblk(): the device block of file block `blk`, allocating on the way.

        Returns (block, new); block 0 when absent and not creating.  New
        indirect blocks are allocated level by level before the data block.
        """
        where = indirect_path(blk)
        if where is None:
            table: list[int] | Offsets = d.db
            index = blk
        else:
            level, indexes = where
            table, index = d.ib, level
            for next_index in indexes:
                if table[index] == 0:
                    if not create:
                        return 0, False
                    table[index] = self.alloc.getfree()
                    self.blocks[table[index]] = array("Q", bytes(8 * OFFPERBLK))
                content = self.blocks[table[index]]
                assert isinstance(content, array)
                table, index = content, next_index
        if table[index] == 0:
            if not create:
                return 0, False
            table[index] = self.alloc.getfree()
            return table[index], True
        return table[index], False

    def _place(self, d: Dentry, touched: Sequence[int]) -> list[int]:
        """getblk(GBCREATE) for ascending file blocks: their device blocks, allocating as needed.

        The same allocations in the same order as _getblk block by block: the
        indirect blocks on the way to each table of pointers, then the data
        blocks it lacks.
        """
        out: list[int] = []
        i = 0
        while i < len(touched):
            leaf, lo = self._leaf(d, touched[i])
            hi = lo + (NDIRECT if lo == 0 else OFFPERBLK)
            j = bisect_left(touched, hi, i)  # touched[i:j] hang below this table
            missing = [bl - lo for bl in touched[i:j] if leaf[bl - lo] == 0]
            new = self.alloc.getfree_many(len(missing))
            for k, b in zip(missing, new, strict=True):
                leaf[k] = b
            out += new if len(new) == j - i else [leaf[bl - lo] for bl in touched[i:j]]
            i = j
        return out

    def _leaf(self, d: Dentry, blk: int) -> tuple[list[int] | Offsets, int]:
        """The table holding file block `blk`'s pointer and the file block of its first slot,
        allocating the indirect blocks on the way as getblk does."""
        where = indirect_path(blk)
        if where is None:
            return d.db, 0
        level, indexes = where
        table: list[int] | Offsets = d.ib
        index = level
        for next_index in indexes:
            if table[index] == 0:
                table[index] = self.alloc.getfree()
                self.blocks[table[index]] = array("Q", bytes(8 * OFFPERBLK))
            content = self.blocks[table[index]]
            assert isinstance(content, array)
            table, index = content, next_index
        return table, blk - indexes[-1]

    def _delindir(self, table: list[int] | Offsets, index: int, depth: int) -> None:
        """fs1.c delindir(): free an indirect tree, children first, zeroing the pointers."""
        b = table[index]
        if b == 0:
            return
        if depth > 0:
            content = self.blocks.get(b)
            if isinstance(content, array):
                for k in range(OFFPERBLK):
                    if content[k]:
                        self._delindir(content, k, depth - 1)
        self.alloc.putfree(b)
        table[index] = 0

    def _truncate(self, d: Dentry) -> None:
        """fs1.c trunc(..., 0): free direct blocks in order, then each indirect tree."""
        for i in range(NDIRECT):
            if d.db[i]:
                self.alloc.putfree(d.db[i])
                d.db[i] = 0
        for level in range(NINDIRECT):
            self._delindir(d.ib, level, level + 1)
        d.size = 0

    def _dirblock(self, b: int) -> DirBlock:
        content = self.blocks[b]
        assert isinstance(content, list)
        return content

    def _create(self, parent: _Node, name: bytes, perm: int, uid: int, *, noperm: bool) -> _Node:
        """fs2.c chancreat(): newentry (maybe a new directory block), newqid, modified(parent)."""
        pd = parent.dentry
        bi, slot = divmod(parent.entries, DEPERBLK)
        blk, new = self._getblk(pd, bi, create=bi == pd.size)
        if new:
            self.blocks[blk] = [None] * DEPERBLK
            pd.size = bi + 1
        qid = self.qidpath
        self.qidpath += 1
        self._modified(pd, uid)
        if not noperm:  # console creates (CHFNOPERM) skip this; 9P creates don't
            if perm & DMDIR:
                perm &= ~0o777 | (pd.mode & 0o777)
            else:
                perm &= ~0o666 | (pd.mode & 0o666)
        d = Dentry(
            name=name,
            uid=uid,
            muid=uid,
            gid=pd.gid,
            mode=DALLOC | (perm & 0o777),
            path=qid,
            type=(perm >> 24) & 0xFF,
            atime=self.now,
            mtime=self.now,
        )
        self._dirblock(blk)[slot] = d
        parent.entries += 1
        return _Node(d, blk, slot)

    def _wstat(
        self,
        node: _Node,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime: int | None = None,
        rename: tuple[_Node, bytes, int] | None = None,
    ) -> None:
        """fs2.c chanwstat() for the fields given; a rename marks the parent modified."""
        d = node.dentry
        if uid is not None:
            d.uid = uid
        if gid is not None:
            d.gid = gid
        if mtime is not None:
            d.mtime = mtime & 0xFFFFFFFF  # Dir.mtime is 32 bits on the wire
        if mode is not None:
            d.mode = (d.mode & ~0o777) | (mode & 0o777)
            d.type = (mode >> 24) & 0xFF
        if rename is not None:
            parent, name, by = rename
            d.name = name
            self._modified(parent.dentry, by)

    def _write_bytes(self, node: _Node, offset: int, data: bytes, uid: int) -> None:
        """fs2.c chanwrite() of literal bytes (the user table)."""
        d = node.dentry
        end = offset + len(data)
        i = offset
        while i < end:
            bl, r = divmod(i, RBLOCK)
            rn = min(RBLOCK - r, end - i)
            b, new = self._getblk(d, bl, create=True)
            old = self.blocks.get(b)
            block = bytearray(RBLOCK) if new or not isinstance(old, bytes) else bytearray(old)
            block[r : r + rn] = data[i - offset : i - offset + rn]
            self.blocks[b] = bytes(block)
            i += rn
        self._modified(d, uid)
        d.size = max(d.size, end)

    def _register(self, path: str, node: _Node) -> None:
        self.paths[path] = node

    # -- ream and the user table ---------------------------------------------------------------
    def ream(self) -> None:
        """fs1.c ream() + createroot(): root and dump root share the first free block."""
        if self.fend >= self.size:
            raise LayoutError(
                f"hjfs: a device of {self.size} blocks has no room past its "
                f"{self.fend - self.fstart} reference-count blocks"
            )
        self.root = self.alloc.getfree()
        root = Dentry(name=b"/", mode=DALLOC | 0o775, path=ROOTQID, type=QTDIR)
        root.uid = root.muid = root.gid = ADM_UID
        root.mtime = root.atime = self.now
        dump = Dentry(**{**root.__dict__, "db": [0] * NDIRECT, "ib": [0] * NINDIRECT})
        self.blocks[self.root] = [root, dump] + [None] * (DEPERBLK - 2)
        self._register("/", _Node(root, self.root, 0))
        self.alloc.freelist = []  # initfs() creates the free list after ream

    def writeusers(self) -> None:
        """fs1.c writeusers(): make /adm, create or truncate /adm/users, write the table."""
        root = self.paths["/"]
        if "/adm" not in self.paths:
            self._register("/adm", self._create(root, b"adm", DMDIR | 0o775, ADM_UID, noperm=False))
        adm = self.paths["/adm"]
        users = self.paths.get("/adm/users")
        if users is None:
            users = self._create(adm, b"users", 0o664, ADM_UID, noperm=False)
            self._register("/adm/users", users)
        else:  # chanopen(OWRITE|OTRUNC)
            self._truncate(users.dentry)
            self._modified(users.dentry, ADM_UID)
        for piece in bio_pieces(self.users.serialize(), USERS_BIO):
            # Bchanwrite appends at the current length
            self._write_bytes(users, users.dentry.size, piece, ADM_UID)

    def readusers(self) -> None:
        """fs1.c readusers(): the table hjfs works with is what /adm/users says."""
        node = self.paths["/adm/users"]
        self.users = UserTable.parse(self.read_literal(node))

    def read_literal(self, node: _Node) -> bytes:
        d = node.dentry
        out = bytearray()
        for bl in range((d.size + RBLOCK - 1) // RBLOCK):
            b, _ = self._getblk(d, bl, create=False)
            content = self.blocks.get(b) if b else None
            out += content if isinstance(content, bytes) else _ZERO_RBLOCK
        return bytes(out[: d.size])

    # -- console ----------------------------------------------------------------------------------
    def console(self, line: str) -> None:
        """One hjfs console line (cons.c); only commands that change the disk do anything."""
        args = tokenize(line)
        if not args:
            raise LayoutError(f"hjfs console: empty command {line!r}")
        cmd = args[0]
        if cmd == "create":
            self._cmd_create(line, args)
        elif cmd == "newuser":
            self._cmd_newuser(line, args)
        elif cmd in ("echo", "sync", "allow", "disallow", "noauth", "chatty", "users", "df"):
            if cmd == "users":
                self.readusers()
        else:
            raise LayoutError(f"hjfs console: unsupported command {line!r}")

    def _uid(self, name: str, what: str) -> int:
        uid = self.users.name2uid(name)
        if uid is None:
            known = ", ".join(u.name for u in self.users.users)
            raise LayoutError(f"{what}: unknown hjfs user {name!r} (known: {known})")
        return uid

    def _walk_parent(self, line: str, path: str) -> tuple[_Node, str, str]:
        """cons.c walkpath(): the parent directory and last element of an absolute path."""
        if not path.startswith("/"):
            raise LayoutError(f"hjfs console: {line!r}: {path}: file does not exist")
        elems = [e for e in path.split("/") if e]
        if not elems or path.endswith("/"):
            raise LayoutError(f"hjfs console: {line!r}: {path}: trailing slash")
        parent_path = "/" + "/".join(elems[:-1])
        parent = self.paths.get(parent_path)
        if parent is None or not parent.dentry.is_dir:
            raise LayoutError(f"hjfs console: {line!r}: {parent_path}: file does not exist")
        return parent, parent_path, elems[-1]

    def _cmd_create(self, line: str, args: list[str]) -> None:
        """cons.c cmdcreate(): create PATH UID GID PERM [dla]; owner set, then group by wstat."""
        if len(args) not in (5, 6):
            raise LayoutError(f"hjfs console: {line!r}: syntax error")
        try:
            perm = int(args[4], 8) & 0o777
        except ValueError:
            raise LayoutError(f"hjfs console: {line!r}: syntax error") from None
        for flag in args[5] if len(args) == 6 else "":
            bits = {"l": DMEXCL, "d": DMDIR, "a": DMAPPEND}.get(flag)
            if bits is None:
                raise LayoutError(f"hjfs console: {line!r}: syntax error")
            perm |= bits
        uid = self._uid(args[2], f"hjfs console: {line!r}")
        gid = self._uid(args[3], f"hjfs console: {line!r}")
        parent, parent_path, name = self._walk_parent(line, args[1])
        path = parent_path.rstrip("/") + "/" + name
        if path in self.paths:
            raise LayoutError(f"hjfs console: {line!r}: file exists")
        problem = name_problem(name.encode())
        if problem:
            raise LayoutError(f"hjfs console: {line!r}: {problem}")
        node = self._create(parent, name.encode(), perm, uid, noperm=True)
        self._register(path, node)
        self._wstat(node, gid=gid)

    def _cmd_newuser(self, line: str, args: list[str]) -> None:
        """auth.c cmdnewuser(): add or change a user, rewrite /adm/users, maybe make /usr/NAME."""
        if len(args) < 2:
            raise LayoutError(f"hjfs console: {line!r}: syntax error")
        name = args[1]
        if user_problem(name):
            raise LayoutError(f"hjfs console: {line!r}: invalid user name")
        table = self.users.users
        uid, gid = 0, 10000
        user: User | None = None
        for u in table:
            if u.name == name:
                user = u
                break
            if u.uid == uid:
                uid += 1
            if u.uid == gid:
                gid += 1
        resort = createdir = False
        if user is None:
            resort = True
            user = User(gid, name)
            table.append(user)
            if len(args) == 2 or args[2] != ":":
                user.lead = user.uid = uid
                createdir = True
        for arg in args[2:]:
            if arg == ":":
                continue
            if arg[0] not in "+-=":
                if user_problem(arg):
                    raise LayoutError(f"hjfs console: {line!r}: bad option {arg}")
                user.name = arg
                continue
            other = next((v for v in table if v.name == arg[1:]), None)
            if other is None:
                raise LayoutError(f"hjfs console: {line!r}: no user {arg[1:]!r}")
            if arg[0] == "=":
                user.lead = other.uid
                continue
            j = 0
            while j < len(user.members) and user.members[j] < other.uid:
                j += 1
            if arg[0] == "-":
                if j >= len(user.members) or user.members[j] != other.uid:
                    raise LayoutError(f"hjfs console: {line!r}: {arg[1:]} is not a member")
                del user.members[j]
            else:
                user.members.insert(j, other.uid)
        if resort:
            table.sort(key=lambda u: u.uid)
        self.writeusers()
        if createdir:
            self._createuserdir(name, uid)

    def _createuserdir(self, name: str, uid: int) -> None:
        """auth.c createuserdir(): /usr/NAME owned by the new user; the group set by wstat."""
        usr = self.paths.get("/usr")
        if usr is None or not usr.dentry.is_dir:
            return
        target = usr
        path = "/usr/" + name
        if path not in self.paths and not name_problem(name.encode()):
            target = self._create(usr, name.encode(), DMDIR | 0o775, uid, noperm=True)
            self._register(path, target)
        # when the create fails hjfs applies the wstat to /usr itself
        self._wstat(target, gid=self.users.name2uid(name))

    # -- mkfs -----------------------------------------------------------------------------------
    def mkfs(
        self,
        entries: Sequence[ProtoEntry],
        *,
        user: str,
        default_owner: tuple[str, str],
        timestamp: int | None,
    ) -> None:
        """disk/mkfs -z 4096 -U over a mount of this hjfs, one proto entry at a time."""
        creator = self.users.name2uid(user)
        if creator is None:
            raise LayoutError(f"mkfs user {user!r}: hjfs answers 'no such user' to its attach")
        self.mkfs_uids = {}  # the user table does not change while mkfs runs
        for entry in entries:
            self._mkfs_entry(entry, creator, default_owner, timestamp)

    def _owner(self, entry: ProtoEntry, name: str | None, default: str) -> int:
        chosen = name if name is not None else default
        uid = self.mkfs_uids.get(chosen)
        if uid is not None:
            return uid
        uid = self.users.name2uid(chosen)
        if uid is None:
            known = ", ".join(u.name for u in self.users.users)
            raise LayoutError(
                f"{entry.origin}: {entry.path}: unknown hjfs user or group {chosen!r} "
                f"(known: {known})"
            )
        self.mkfs_uids[chosen] = uid
        return uid

    def _mkfs_entry(
        self,
        entry: ProtoEntry,
        creator: int,
        default_owner: tuple[str, str],
        timestamp: int | None,
    ) -> None:
        where = f"{entry.origin}: {entry.path}" if entry.origin else entry.path
        path = entry.path
        if not path.startswith("/"):
            raise LayoutError(f"{where}: not a path in the new file system")
        mtime = entry.mtime if timestamp is None else min(entry.mtime, timestamp)
        uid = self._owner(entry, entry.uid, default_owner[0])
        gid = self._owner(entry, entry.gid, default_owner[1])

        existing = self.paths.get(path)
        if existing is not None:
            # uptodate(): a target at least as new as the source is left alone
            if existing.dentry.mtime & 0xFFFFFFFF >= mtime & 0xFFFFFFFF:
                return
            if entry.is_dir and existing.dentry.is_dir:  # mkdir(): create fails, wstat it
                self._wstat(existing, mode=entry.mode, gid=gid, mtime=mtime)
                self._wstat(existing, uid=uid)
                return
            raise LayoutError(
                f"{where}: already in the file system from an older source; "
                "replacing files is not supported"
            )
        parent_path, name = path.rsplit("/", 1)
        parent_path = parent_path or "/"
        name_bytes = name.encode("utf-8", "surrogateescape")
        problem = name_problem(name_bytes)
        if problem:
            raise LayoutError(f"{where}: hjfs cannot store this name: {problem}")
        if name_bytes == MKFS_TMP:
            raise LayoutError(f"{where}: the name {MKFS_TMP.decode()} is mkfs's temporary file")
        parent = self.paths.get(parent_path)
        if parent is None or not parent.dentry.is_dir:
            raise LayoutError(f"{where}: can't create: {parent_path} is not a directory")

        if entry.is_dir:
            node = self._create(parent, name_bytes, entry.mode, creator, noperm=False)
            self._wstat(node, mode=entry.mode, gid=gid, mtime=mtime)
            self._wstat(node, uid=uid)
        else:
            if parent_path.rstrip("/") + "/" + MKFS_TMP.decode() in self.paths:
                raise LayoutError(f"{where}: {parent_path} holds a file named {MKFS_TMP.decode()}")
            node = self._create(parent, MKFS_TMP, 0o666, creator, noperm=False)
            self._copy(node, entry, creator, where)
            self._wstat(
                node, mode=entry.mode, gid=gid, mtime=mtime, rename=(parent, name_bytes, creator)
            )
            self._wstat(node, uid=uid)
        self._register(path, node)

    def _copy(self, node: _Node, entry: ProtoEntry, creator: int, where: str) -> None:
        """mkfs copy(): 4088-byte writes, all-zero pieces skipped, a last zero byte if needed.

        Each write runs modified() on the file; hjfs allocates each 4095-byte
        block the first time a write touches it, in file order.
        """
        length = entry.length
        if length == 0:
            return
        d = node.dentry
        index = self.files_copied
        self.files_copied += 1
        if self.mode == DRY or index < self.dense_files:
            # no holes: every 4088-byte piece is written, each block allocated in turn
            if self.mode == DRY and not os.access(entry.source, os.R_OK):
                raise InputError(f"{where}: can't read {entry.source}")
            numbers = self._place(d, range(howmany(length)))
            self._forget(numbers)
            if self.mode == DRY:
                self.placed.append(_Placed(entry.source, length, where, numbers))
            writes = -(-length // MKFS_BUFLEN)
        else:
            writes = 0
            if self.sink is None:
                self.sources.append(_Source(entry.source, length))
            for piece in read_pieces(entry.source, length, where):
                writes += piece.writes
                numbers = self._place(d, piece.touched)
                if self.sink is None:
                    key = (len(self.sources) - 1) * _FILE_KEY
                    for b, bl in zip(numbers, piece.touched, strict=True):
                        self.blocks[b] = key + bl
                else:  # the data goes out now
                    self._forget(numbers)
                    _emit_file_blocks(self.sink, numbers, piece)
        d.mtime = d.atime = self.now
        d.muid = creator
        d.vers = (d.vers + writes) & 0xFFFFFFFF
        d.size = length

    def _forget(self, numbers: list[int]) -> None:
        """File data that is not kept in the model goes to `numbers`: blocks freed earlier (a
        truncated /adm/users) lose their old content."""
        if not self.blocks.keys().isdisjoint(numbers):
            for b in numbers:
                self.blocks.pop(b, None)

    def write_placed(self, out: _RunWriter) -> int:
        """Write the data of the files a DRY replay placed, reading each once, in order.

        Stops before the first file that turns out to have a hole (the DRY
        layout is wrong from there on) and returns how many files were
        written; they went where an exact replay puts them too.
        """
        if self.mode != DRY:
            raise ValueError("only a dry replay has files placed without reading them")
        for placed in self.placed[self.placed_written :]:
            for piece in read_pieces(placed.path, placed.length, placed.where):
                if piece.holes:
                    return self.placed_written
                first, last = piece.touched[0], piece.touched[-1]
                _emit_file_blocks(out, placed.numbers[first : last + 1], piece)
            self.placed_written += 1
        return self.placed_written

    # -- results --------------------------------------------------------------------------------
    @property
    def blocks_needed(self) -> int:
        """Blocks in use at the end, counting any that did not fit (a bound for DRY)."""
        return self.size - self.alloc.refs.count(0) + self.alloc.overflow

    @property
    def fits(self) -> bool:
        return self.blocks_needed <= self.size

    def check_fits(self, name: str) -> None:
        if not self.fits:
            raise LayoutError(
                f"{name}: the tree needs {self.blocks_needed} hjfs blocks of {BLOCK} bytes "
                f"({self.blocks_needed * BLOCK} bytes) but the partition has {self.size} blocks"
            )

    def summary(self) -> FsSummary:
        free = self.alloc.refs.count(0)
        files = dirs = nbytes = 0
        for node in self.paths.values():
            if node.dentry.is_dir:
                dirs += 1
            else:
                files += 1
                nbytes += node.dentry.size
        return FsSummary(self.size, self.size - free, free, files, dirs, nbytes)

    def superblock(self) -> Superblock:
        return Superblock(self.size, self.fstart, self.fend, self.root, self.qidpath)

    def ref_block(self, k: int) -> bytes:
        """Reference block k: counts of blocks k*1365 .. ; past the device, REFSENTINEL."""
        first = k * REFPERBLK
        counts = self.alloc.refs[first : first + REFPERBLK]
        payload = bytearray(REFSIZ * REFPERBLK)
        payload[0 : REFSIZ * len(counts) : REFSIZ] = counts
        if len(counts) < REFPERBLK:  # ream(): entries past the end of the device read -1
            payload[REFSIZ * len(counts) :] = b"\xff" * (REFSIZ * (REFPERBLK - len(counts)))
        return block_of(TREF, payload)

    def write(self, dev: BlockDevice, *, progress: Progress | None = None) -> None:
        """Write superblock, reference counts and every block the model holds, in runs.

        File data recorded by a PLAN replay is read again from the sources
        here; a STREAM replay wrote it already.
        """
        self.write_runs(_RunWriter(dev, progress))

    def write_runs(self, out: _RunWriter) -> None:
        if self.mode == DRY and self.placed_written < len(self.placed):
            raise ValueError("a dry replay writes its files' data first (write_placed)")
        self.check_fits(out.dev.name)
        out.put(SUPERBLK, self.superblock().pack())
        for k in range(self.fend - self.fstart):
            out.put(self.fstart + k, self.ref_block(k))
        sources = _SourceReader(self.sources)
        numbers = sorted(self.blocks)
        i = 0
        try:
            while i < len(numbers):
                b = numbers[i]
                content = self.blocks[b]
                if isinstance(content, int):
                    # a run of consecutive blocks of one file: read it at once
                    n = 1
                    while (
                        n < RUN_BYTES // BLOCK
                        and i + n < len(numbers)
                        and numbers[i + n] == b + n
                        and self.blocks[b + n] == content + n
                    ):
                        n += 1
                    index, bl = divmod(content, _FILE_KEY)
                    data = sources.read(index, bl * RBLOCK, n * RBLOCK)
                    piece = Piece(bl * RBLOCK, data, list(range(bl, bl + n)), writes=0, holes=False)
                    _emit_file_blocks(out, range(b, b + n), piece)
                    i += n
                    continue
                if isinstance(content, list):
                    out.put(b, pack_dentries(content))
                elif isinstance(content, array):
                    out.put(b, pack_indir(content))
                else:
                    out.put(b, block_of(TRAW, content))
                i += 1
            out.flush()
        finally:
            sources.close()


# -- helpers --------------------------------------------------------------------------------------


def tokenize(line: str) -> list[str]:
    """tokenize(2): blank-separated fields; '...' quotes, '' inside quotes is a quote."""
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t\r\n":
            i += 1
        if i >= n:
            return args
        token = []
        quoting = False
        while i < n and (quoting or line[i] not in " \t\r\n"):
            c = line[i]
            if c == "'":
                if quoting and line[i + 1 : i + 2] == "'":
                    token.append("'")
                    i += 2
                    continue
                quoting = not quoting
                i += 1
                continue
            token.append(c)
            i += 1
        args.append("".join(token))


def bio_pieces(data: bytes, size: int) -> list[bytes]:
    """The writes a Biobuf of `size` bytes makes of UTF-8 text printed into it.

    fmt (fmtdef.h FMTRUNE) and Bputc flush the buffer when the next rune
    does not fit, so a piece is `size` bytes unless a multi-byte rune would
    straddle its end; then it ends before that rune.
    """
    pieces: list[bytes] = []
    start = i = 0
    while i < len(data):
        lead = data[i]
        n = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if i + n - start > size:
            pieces.append(data[start:i])
            start = i
        i += n
    if start < len(data):
        pieces.append(data[start:])
    return pieces


class Piece(NamedTuple):
    """A piece of a source file as mkfs -z 4096 copies it into hjfs."""

    offset: int
    data: bytes
    touched: list[int]  # file blocks whose first write falls in this piece
    writes: int
    holes: bool  # whether mkfs skips any of it (or writes the final zero byte)


def read_pieces(source: Path, length: int, where: str = "") -> Iterator[Piece]:
    """Read `source` as mkfs -z 4096 copies it into hjfs, a piece at a time.

    mkfs reads `length` bytes in 4088-byte pieces; an all-zero piece is
    skipped with seek (a hole), any other is written.  If the last piece was
    a hole it writes one zero byte at length-1.
    """
    label = where or str(source)
    nblocks = howmany(length)
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"{label}: can't open {source}: {e.strerror}") from None
    try:
        if os.fstat(fd).st_size != length:
            raise InputError(f"{label}: {source} changed size since the proto was read")
        offset = 0
        next_block = 0  # blocks below this one were touched already
        while offset < length:
            data = os.pread(fd, min(PIECE, length - offset), offset)
            if len(data) != min(PIECE, length - offset):
                raise InputError(f"{label}: {source} changed size since the proto was read")
            end = offset + len(data)
            touched: list[int] = []
            writes = 0
            last_hole = False
            zero = _zero_pieces(data, _ZERO_CHUNK)
            if not zero:
                writes = -(-len(data) // MKFS_BUFLEN)
                touched.extend(range(max(next_block, offset // RBLOCK), (end - 1) // RBLOCK + 1))
            else:
                skipped = set(zero)
                for k, start in enumerate(range(0, len(data), MKFS_BUFLEN)):
                    last_hole = k in skipped
                    if last_hole:
                        continue
                    chunk_end = min(start + MKFS_BUFLEN, len(data))
                    writes += 1
                    first = max((offset + start) // RBLOCK, next_block)
                    last = (offset + chunk_end - 1) // RBLOCK
                    touched.extend(range(first, last + 1))
                    next_block = max(next_block, last + 1)
            if touched:
                next_block = max(next_block, touched[-1] + 1)
            if end == length and last_hole:  # the final one-byte write
                writes += 1
                if next_block < nblocks:
                    touched.append(nblocks - 1)
            yield Piece(offset, data, touched, writes, holes=bool(zero))
            offset = end
    finally:
        os.close(fd)


def _zero_pieces(data: bytes, zeros: bytes) -> list[int]:
    """Which of the pieces of len(zeros) bytes that `data` splits into (the last may be short)
    are all zero, by index.

    The byte in the middle of each piece rules most pieces out at once; only
    those where it is zero are compared in full.
    """
    size = len(zeros)
    count = -(-len(data) // size)
    middles = data[size // 2 :: size]
    candidates = []
    k = middles.find(0)
    while k >= 0:
        candidates.append(k)
        k = middles.find(0, k + 1)
    if len(middles) < count:  # the last piece is too short to have a middle byte
        candidates.append(count - 1)
    return [
        k for k in candidates if data.startswith(zeros[: min(size, len(data) - k * size)], k * size)
    ]


def scan_holes(source: Path, length: int, where: str = "") -> tuple[list[int], int]:
    """The file blocks mkfs -z 4096 makes hjfs allocate for `source`, and how many writes."""
    touched: list[int] = []
    writes = 0
    for piece in read_pieces(source, length, where):
        touched.extend(piece.touched)
        writes += piece.writes
    return touched, writes


def _emit_file_blocks(out: _RunWriter, numbers: Sequence[int], piece: Piece) -> None:
    """Write the blocks `piece` touches, placed at device blocks `numbers`.

    Runs of consecutive device blocks holding consecutive file blocks go
    out at once; all-zero blocks are left unwritten (a raw block's type byte
    is 0 too).
    """
    touched, offset = piece.touched, piece.offset
    view = memoryview(piece.data)
    first = offset // RBLOCK  # the piece starts on a block boundary
    zero_blocks = {first + k for k in _zero_pieces(piece.data, _ZERO_RBLOCK)}
    for i, n in _runs(numbers, touched):
        start = touched[i] * RBLOCK - offset
        pieces = [view[p : p + RBLOCK] for p in range(start, start + n * RBLOCK, RBLOCK)]
        zero = [k for k in range(n) if touched[i + k] in zero_blocks] if zero_blocks else []
        written = 0
        for k in [*zero, n]:
            if written < k:
                out.put_raw(numbers[i + written], pieces[written:k])
            written = k + 1


def _runs(numbers: Sequence[int], touched: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first index, length) of each run where both `numbers` and `touched` count up by one."""
    breaks = [
        k
        for k in range(1, len(numbers))
        if numbers[k] != numbers[k - 1] + 1 or touched[k] != touched[k - 1] + 1
    ]
    for first, end in zip([0, *breaks], [*breaks, len(numbers)], strict=True):
        yield first, end - first


class _RunWriter:
    """Collects whole blocks at consecutive numbers and writes each run with one pwrite.

    A run is kept as the list of its parts and joined when written, so file
    data is copied once between the read and the write.
    """

    def __init__(self, dev: BlockDevice, progress: Progress | None = None) -> None:
        self.dev = dev
        self.progress = progress
        self.parts: list[bytes | memoryview] = []
        self.length = 0  # bytes in parts
        self.start = 0  # the block the run starts at
        self.written = 0

    def put(self, b: int, block: bytes) -> None:
        if block != ZERO_BLOCK:  # a fresh partition already reads as zeros
            self._put_parts(b, [block], BLOCK)

    def put_raw(self, b: int, pieces: Sequence[memoryview]) -> None:
        """TRAW blocks b, b+1, ... holding `pieces` of RBLOCK bytes (the last may be short)."""
        parts = [part for piece in pieces for part in (_RAW_TYPE, piece)]
        fill = RBLOCK - len(pieces[-1])
        if fill:
            parts.append(bytes(fill))
        self._put_parts(b, parts, len(pieces) * BLOCK)

    def _put_parts(self, b: int, parts: list[bytes | memoryview], length: int) -> None:
        if self.parts and (
            b != self.start + self.length // BLOCK or self.length + length > RUN_BYTES
        ):
            self.flush()
        if not self.parts:
            self.start = b
        self.parts += parts
        self.length += length
        if self.length == length and length >= RUN_BYTES // 2:  # a long run goes out alone
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.dev.pwrite(data, self.start * BLOCK)
        self.written += len(data)
        if self.progress is not None:
            self.progress("fs", self.written, None)
        self.parts = []
        self.length = 0


class _SourceReader:
    """Reads source files by index, keeping the last one open."""

    def __init__(self, sources: list[_Source]) -> None:
        self.sources = sources
        self.index = -1
        self.fd = -1

    def read(self, index: int, offset: int, size: int) -> bytes:
        source = self.sources[index]
        if index != self.index:
            self.close()
            try:
                self.fd = os.open(source.path, os.O_RDONLY)
            except OSError as e:
                raise InputError(f"{source.path}: can't open: {e.strerror}") from None
            self.index = index
            if os.fstat(self.fd).st_size != source.length:
                raise InputError(f"{source.path}: changed size while the image was written")
        size = max(0, min(size, source.length - offset))
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise InputError(f"{source.path}: changed size while the image was written")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.index = -1


# -- the public entry points ----------------------------------------------------------------------


def _replay(
    size_blocks: int,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    now: int,
    default_owner: tuple[str, str],
    console: Sequence[str],
    mkfs_user: str,
    mode: str,
    sink: _RunWriter | None = None,
    dense_files: int = 0,
) -> HjfsPlan:
    if size_blocks < 1:
        raise LayoutError("hjfs: device file too short (less than one 4096-byte block)")
    model = HjfsPlan(size_blocks, now, mode, sink, dense_files)
    model.ream()
    model.writeusers()
    model.readusers()
    for line in console:
        model.console(line)
    model.mkfs(entries, user=mkfs_user, default_owner=default_owner, timestamp=timestamp)
    return model


def plan(
    size_blocks: int,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    default_owner: tuple[str, str] = DEFAULT_OWNER,
    console: Sequence[str] = MKFILE_CONSOLE,
    mkfs_user: str = MKFS_USER,
) -> HjfsPlan:
    """Replay ream, the console lines and mkfs on a device of `size_blocks` 4096-byte blocks.

    Reads every source to find its holes; nothing is written.  The result
    tells `blocks_needed` and can `write()` itself later.
    """
    return _replay(
        size_blocks,
        entries,
        timestamp=timestamp,
        now=int(time.time()) if timestamp is None else timestamp,
        default_owner=default_owner,
        console=console,
        mkfs_user=mkfs_user,
        mode=PLAN,
    )


def ream_and_populate(
    dev: BlockDevice,
    entries: Sequence[ProtoEntry],
    *,
    timestamp: int | None,
    default_owner: tuple[str, str] = DEFAULT_OWNER,
    console: Sequence[str] = MKFILE_CONSOLE,
    mkfs_user: str = MKFS_USER,
    progress: Progress | None = None,
) -> FsSummary:
    """Make the fs partition `dev` what the dist mkfile's hjfs + mkfs steps make it.

    `timestamp` pins hjfs's clock (every creation and modification time)
    and clamps source mtimes (SOURCE_DATE_EPOCH); None uses the current
    time and the sources' own mtimes.  Entries without an owner get
    `default_owner` (uid, gid); `mkfs_user` is who mkfs attaches as.
    `progress` is called as progress("fs", bytes written so far, None) (imagebuild.util.progress).

    A first replay places every file without reading it, as if it had no
    holes: it raises every error (names, owners, parents, unreadable
    sources) and, since holes only save blocks, bounds the space needed.
    If that fits, each file is read once and its data written where that
    replay put it, which is where hjfs puts it unless the file has holes.
    At the first file with a hole a second replay takes over: it places the
    files before that one again without reading them, and reads the rest
    to find their holes, writing their data as it goes.  If the first
    replay does not fit, an exact one decides, before anything is written,
    whether the holes make the tree fit.
    """
    size = dev.size // BLOCK
    now = int(time.time()) if timestamp is None else timestamp

    def replay(mode: str, sink: _RunWriter | None = None, dense_files: int = 0) -> HjfsPlan:
        return _replay(
            size,
            entries,
            timestamp=timestamp,
            now=now,
            default_owner=default_owner,
            console=console,
            mkfs_user=mkfs_user,
            mode=mode,
            sink=sink,
            dense_files=dense_files,
        )

    model = replay(DRY)
    out = _RunWriter(dev, progress)
    if not model.fits:
        model = replay(PLAN)
        model.check_fits(dev.name)
    else:
        dense = model.write_placed(out)
        if dense < len(model.placed):
            model = replay(STREAM, out, dense)
    model.write_runs(out)
    return model.summary()


__all__ = [
    "DEFAULT_OWNER",
    "MKFILE_CONSOLE",
    "MKFS_USER",
    "NAMELEN",
    "NOUID",
    "HjfsPlan",
    "Piece",
    "bio_pieces",
    "plan",
    "read_pieces",
    "ream_and_populate",
    "scan_holes",
    "to_short",
    "tokenize",
]
