"""hjfs on-disk layout: blocks, the superblock, reference counts, directory entries, pointers.

References (9front, sys/src/cmd/hjfs): dat.h (constants and structs),
conv.c (pack/unpack: the byte layout of every block type), fs1.c (ream,
getblk's block addressing), auth.c (the user table).

Every block is BLOCK (4096) bytes: one type byte, then RBLOCK (4095) bytes
of payload.  All integers are little-endian.  A file's bytes are stored
RBLOCK to a block, so file offset `o` lives in file block `o // 4095`.

    block 0                  superblock
    blocks 1 .. fend-1       reference counts, 3 bytes per block of the device
    blocks fend ..           root directory block, then everything else

A file or directory is a Dentry (453 bytes, 9 to a directory block) with
NDIRECT=15 direct block pointers and NINDIRECT=4 indirect ones (single,
double, triple, quadruple); an indirect block holds OFFPERBLK=341 pointers of
8 bytes (dat.h sizes them as 12 bytes, a relic of a generation number, and
leaves the tail of the block zero).  A directory's `size` counts blocks, a
file's counts bytes.  Pointer 0 means "no block": files can have holes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from imagebuild.errors import ImageFormatError
from imagebuild.fs.api import FsSummary

# dat.h: "affects on-disk structure"
BLOCK = 4096
RBLOCK = BLOCK - 1
SUPERMAGIC = 0x6E0DE51C
SUPERBLK = 0
NAMELEN = 256
NDIRECT = 15
NINDIRECT = 4
ROOTQID = 1
DUMPROOTQID = 2
NOUID = -0x8000  # (short)0x8000
USERLEN = 64

# block types (the first byte of every block)
TRAW = 0
TSUPERBLOCK = 1
TDENTRY = 2
TINDIR = 3
TREF = 4
TYPE_NAMES = {
    TRAW: "raw",
    TSUPERBLOCK: "superblock",
    TDENTRY: "dentry",
    TINDIR: "indir",
    TREF: "ref",
}

# Dentry.mode flags above the permission bits
DALLOC = 1 << 15
DGONE = 1 << 14

# Qid.type bits (libc.h); hjfs keeps a file's type byte as the top byte of its Plan 9 mode
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTTMP = 0x04

DENTRYSIZ = NAMELEN + 4 * 2 + 13 + (3 + NDIRECT + NINDIRECT) * 8
DEPERBLK = RBLOCK // DENTRYSIZ
OFFPERBLK = RBLOCK // 12
REFSIZ = 3
REFPERBLK = RBLOCK // REFSIZ
REFSENTINEL = (1 << (8 * REFSIZ)) - 1

assert (DENTRYSIZ, DEPERBLK, OFFPERBLK, REFPERBLK) == (453, 9, 341, 1365)

_SUPERBLOCK = struct.Struct("<IQQQQQ")  # magic size fstart fend root qidpath
# name uid muid gid mode | qid: path vers type | size db[15] ib[4] atime mtime
_DENTRY = struct.Struct(f"<{NAMELEN}shhhHQIBQ{NDIRECT}Q{NINDIRECT}Qqq")
_INDIR = struct.Struct(f"<{OFFPERBLK}Q")
assert _DENTRY.size == DENTRYSIZ

ZERO_BLOCK = bytes(BLOCK)


def howmany(nbytes: int) -> int:
    """dat.h HOWMANY(): blocks of RBLOCK bytes needed for nbytes."""
    return (nbytes + RBLOCK - 1) // RBLOCK


def ref_blocks(size: int) -> int:
    """ream(): reference-count blocks for a device of `size` blocks (fend - fstart)."""
    return howmany(size * REFSIZ)


def block_of(block_type: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A whole on-disk block: type byte, payload, zero fill (dev.c packs into a zeroed buffer)."""
    if len(payload) > RBLOCK:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a block")
    return bytes((block_type,)) + bytes(payload) + bytes(RBLOCK - len(payload))


def block_type(block: bytes | bytearray | memoryview) -> int:
    """The type tag of an hjfs block (TSUPERBLOCK, TDENTRY, TINDIR, TREF...): its first byte
    (hjfs dat.h enum, checked by buf.c getbuf()). IndexError on an empty block.
    """
    return block[0]


# -- superblock --------------------------------------------------------------------------------


@dataclass
class Superblock:
    """Block 0: device size in blocks, where the reference counts are, the root, next qid."""

    size: int
    fstart: int
    fend: int
    root: int
    qidpath: int
    magic: int = SUPERMAGIC

    def pack(self) -> bytes:
        return block_of(
            TSUPERBLOCK,
            _SUPERBLOCK.pack(
                self.magic, self.size, self.fstart, self.fend, self.root, self.qidpath
            ),
        )

    @classmethod
    def unpack(cls, block: bytes) -> Superblock:
        if block[0] != TSUPERBLOCK:
            raise ImageFormatError(
                f"hjfs superblock: block 0 has type {block[0]} ({TYPE_NAMES.get(block[0], '?')}), "
                f"not {TSUPERBLOCK}"
            )
        magic, size, fstart, fend, root, qidpath = _SUPERBLOCK.unpack_from(block, 1)
        if magic != SUPERMAGIC:
            raise ImageFormatError(f"hjfs superblock: magic {magic:#x}, not {SUPERMAGIC:#x}")
        return cls(size, fstart, fend, root, qidpath, magic)


# -- reference counts ---------------------------------------------------------------------------


def pack_refs(refs: Sequence[int] | bytes | bytearray, *, sentinel_fill: bool = False) -> bytes:
    """A TREF block: REFPERBLK counts of REFSIZ bytes each, little-endian.

    Fewer counts are followed by zeros, or with `sentinel_fill` by
    REFSENTINEL (fs1.c ream() marks the slots past the device's end so).
    A bytes/bytearray `refs` holds counts below 256, one per byte.
    """
    if len(refs) > REFPERBLK:
        raise ValueError("too many reference counts for one block")
    payload = bytearray(REFSIZ * REFPERBLK)
    if isinstance(refs, bytes | bytearray):  # counts below 256: the low byte only
        payload[0 : REFSIZ * len(refs) : REFSIZ] = refs
    else:
        for i, r in enumerate(refs):
            payload[REFSIZ * i : REFSIZ * i + REFSIZ] = r.to_bytes(REFSIZ, "little")
    if sentinel_fill and len(refs) < REFPERBLK:
        payload[REFSIZ * len(refs) :] = REFSENTINEL.to_bytes(REFSIZ, "little") * (
            REFPERBLK - len(refs)
        )
    return block_of(TREF, payload)


def unpack_refs(block: bytes) -> list[int]:
    """The REFPERBLK reference counts of a TREF block, REFSIZ little-endian bytes each
    (hjfs dat.h REFSIZ, fs1.c chref()); a short block gives fewer counts.
    """
    data = block[1 : 1 + REFSIZ * REFPERBLK]
    return [int.from_bytes(data[i : i + REFSIZ], "little") for i in range(0, len(data), REFSIZ)]


# -- directory entries --------------------------------------------------------------------------


@dataclass(slots=True)
class Dentry:
    """A file or directory (dat.h struct Dentry, conv.c order)."""

    name: bytes = b""
    uid: int = 0
    muid: int = 0
    gid: int = 0
    mode: int = 0
    path: int = 0  # Qid.path
    vers: int = 0  # Qid.vers
    type: int = 0  # Qid.type
    size: int = 0  # bytes for files, blocks for directories
    db: list[int] = field(default_factory=lambda: [0] * NDIRECT)
    ib: list[int] = field(default_factory=lambda: [0] * NINDIRECT)
    atime: int = 0
    mtime: int = 0

    @property
    def allocated(self) -> bool:
        return bool(self.mode & DALLOC)

    @property
    def is_dir(self) -> bool:
        return bool(self.type & QTDIR)

    @property
    def blocks(self) -> int:
        """How many blocks the entry spans (checkfile(): HOWMANY(size) or size)."""
        return self.size if self.is_dir else howmany(self.size)

    @property
    def plan9_mode(self) -> int:
        """The mode stat reports (statbuf()): permissions and the type byte on top."""
        return (self.mode & 0o777) | (self.type << 24)

    def pack(self) -> bytes:
        return _DENTRY.pack(
            self.name,
            self.uid,
            self.muid,
            self.gid,
            self.mode,
            self.path,
            self.vers & 0xFFFFFFFF,
            self.type,
            self.size,
            *self.db,
            *self.ib,
            self.atime,
            self.mtime,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> Dentry:
        f = _DENTRY.unpack_from(data, offset)
        return cls(
            name=bytes(f[0]).split(b"\0", 1)[0],
            uid=f[1],
            muid=f[2],
            gid=f[3],
            mode=f[4],
            path=f[5],
            vers=f[6],
            type=f[7],
            size=f[8],
            db=list(f[9 : 9 + NDIRECT]),
            ib=list(f[9 + NDIRECT : 9 + NDIRECT + NINDIRECT]),
            atime=f[9 + NDIRECT + NINDIRECT],
            mtime=f[10 + NDIRECT + NINDIRECT],
        )

    def pointers(self) -> Iterator[int]:
        yield from (b for b in self.db if b)
        yield from (b for b in self.ib if b)


_EMPTY_DENTRY = bytes(DENTRYSIZ)


def pack_dentries(entries: Sequence[Dentry | None]) -> bytes:
    """A TDENTRY block: DEPERBLK entries, None for a free (all-zero) slot."""
    if len(entries) > DEPERBLK:
        raise ValueError("too many entries for one block")
    return block_of(TDENTRY, b"".join(_EMPTY_DENTRY if d is None else d.pack() for d in entries))


def unpack_dentries(block: bytes) -> list[Dentry]:
    """The DEPERBLK Dentry slots of a TDENTRY block, empty ones included (hjfs dat.h struct Dentry).

    Raises what Dentry.unpack raises on a block shorter than RBLOCK.
    """
    return [Dentry.unpack(block, 1 + i * DENTRYSIZ) for i in range(DEPERBLK)]


# -- indirect blocks ----------------------------------------------------------------------------


def pack_indir(offsets: Sequence[int]) -> bytes:
    """A TINDIR block of exactly OFFPERBLK little-endian uvlong block numbers (hjfs dat.h).

    struct.error unless `offsets` has OFFPERBLK entries.
    """
    return block_of(TINDIR, _INDIR.pack(*offsets))


def unpack_indir(block: bytes) -> list[int]:
    """The OFFPERBLK block numbers (uvlong, little-endian) of a TINDIR block (hjfs fs1.c getblk()).

    struct.error on a block shorter than 1 + 8 * OFFPERBLK bytes.
    """
    return list(_INDIR.unpack_from(block, 1))


def indirect_path(blk: int) -> tuple[int, list[int]] | None:
    """getblk(): where file block `blk` hangs below the indirect pointers.

    Returns (level, indexes): the data pointer is `ib[level]`, then offset
    indexes[0] in that indirect block, indexes[1] in the next, ...
    (level+1 indexes).  None for a direct block.  Raises ValueError past the
    largest file hjfs can address.
    """
    if blk < NDIRECT:
        return None
    blk -= NDIRECT
    span = OFFPERBLK
    level = 0
    while blk >= span:
        blk -= span
        level += 1
        if level == NINDIRECT:
            raise ValueError("block offset too large")
        span *= OFFPERBLK
    indexes = []
    for _ in range(level + 1):
        span //= OFFPERBLK
        indexes.append(blk // span)
        blk %= span
    return level, indexes


def indirect_blocks_for(nblocks: int) -> int:
    """Indirect blocks a file of `nblocks` blocks without holes needs (getblk's tree)."""
    count = 0
    nblocks -= NDIRECT
    span = OFFPERBLK
    level = 0
    while nblocks > 0 and level < NINDIRECT:
        here = min(nblocks, span)
        per = OFFPERBLK
        for _ in range(level + 1):  # each layer of the level's tree, bottom up
            count += -(-here // per)
            per *= OFFPERBLK
        nblocks -= here
        span *= OFFPERBLK
        level += 1
    return count


# -- names --------------------------------------------------------------------------------------


_CONTROL_CHARACTER = re.compile(rb"[\x00-\x1f]")


def name_problem(name: bytes) -> str | None:
    """fs2.c namevalid(): why hjfs would refuse this name, or None."""
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"{name.decode()!r} is not a file name"
    if _CONTROL_CHARACTER.search(name):
        return "control character in name"
    if b"/" in name:
        return "'/' in name"
    if len(name) >= NAMELEN:
        return f"name is {len(name)} bytes, hjfs keeps at most {NAMELEN - 1}"
    return None


def user_problem(name: str) -> str | None:
    """auth.c validuser(): why hjfs would refuse this user name, or None."""
    if not name:
        return "empty user name"
    for c in name:
        if ord(c) < 0x20 or c in "?=+-/:":
            return f"character {c!r} not allowed in a user name"
    if len(name.encode()) >= USERLEN:
        return f"user name longer than {USERLEN - 1} bytes"
    return None


# -- the user table (auth.c) ----------------------------------------------------------------------


@dataclass
class User:
    """A line of /adm/users: `uid:name:leader:member,member...`; leader NOUID for none."""

    uid: int
    name: str
    lead: int = NOUID
    members: list[int] = field(default_factory=list)


def default_users() -> list[User]:
    """auth.c udef[]: the table hjfs uses (and ream writes) when /adm/users is absent."""
    return [
        User(-1, "adm", -1),
        User(0, "none", -1),
        User(1, "tor", 1),
        User(2, "glenda", 2),
        User(10000, "sys"),
        User(10001, "map", 10001),
        User(10002, "doc"),
        User(10003, "upas", 10003),
        User(10004, "font"),
    ]


def to_short(value: int) -> int:
    """C's conversion of an int to `short`."""
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


class UserTable:
    """hjfs's user database, kept sorted by uid as usersload() and newuser leave it."""

    def __init__(self, users: list[User]) -> None:
        self.users = users

    def lookup_uid(self, uid: int) -> User | None:
        for u in self.users:
            if u.uid == uid:
                return u
        return None

    def uid2name(self, uid: int) -> str:
        u = self.lookup_uid(uid)
        return u.name if u is not None else str(uid)

    def name2uid(self, name: str) -> int | None:
        """auth.c name2uid(): a decimal number is taken as a uid as it stands."""
        if name == "" or _is_c_decimal(name):
            return to_short(int(name)) if name.strip() else 0
        for u in self.users:
            if u.name == name:
                return u.uid
        return None

    def serialize(self) -> bytes:
        """userssave(): one `uid:name:leader:members` line per user, in table order."""
        lines = []
        for u in self.users:
            lead = "" if u.lead == NOUID else self.uid2name(u.lead)
            text = f"{u.uid}:{u.name}:{lead}:"
            for i, m in enumerate(u.members):
                if m == NOUID:
                    continue
                text += ("" if i < 1 else ",") + self.uid2name(m)
            lines.append(text + "\n")
        return "".join(lines).encode()

    @classmethod
    def parse(cls, data: bytes) -> UserTable:
        """usersload(): read /adm/users, skipping malformed lines as hjfs does."""
        parsed: list[tuple[int, str, str, list[str]]] = []
        for line in data.decode("utf-8", "replace").split("\n"):
            if not line or line.startswith("#"):
                continue
            fields = line.split(":", 4)
            if len(fields) < 4:
                continue
            try:
                uid = int(fields[0], 10)
            except ValueError:
                continue
            name, lead, members = fields[1], fields[2], fields[3]
            if user_problem(name) or (lead and user_problem(lead)):
                continue
            memb = members.split(",") if members else []
            if any(user_problem(m) for m in memb):
                continue
            parsed.append((to_short(uid), name, lead, memb))
        names: dict[str, int] = {}
        for uid, name, _, _ in parsed:
            names.setdefault(name, uid)
        users = [
            User(uid, name, names.get(lead, NOUID), sorted(names.get(m, NOUID) for m in memb))
            for uid, name, lead, memb in parsed
        ]
        users.sort(key=lambda u: u.uid)
        return cls(users)


def _is_c_decimal(text: str) -> bool:
    """Whether strtol(text, &r, 10) consumes all of text."""
    body = text.lstrip(" \t\n\r\v\f")
    if body[:1] in "+-":
        body = body[1:]
    return body.isascii() and body.isdigit()


# -- summaries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HjfsSummary(FsSummary):
    """api.FsSummary for hjfs: blocks of BLOCK bytes, printed as `hjfs: ...`."""

    fs_type: ClassVar[str] = "hjfs"

    block_size: int = BLOCK
