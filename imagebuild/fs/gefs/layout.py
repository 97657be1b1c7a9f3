"""gefs on-disk records, each declared once: block headers, keys, values, arenas, superblock.

References (9front, sys/src/cmd/gefs): dat.h (sizes, key and block types,
message and log ops), pack.c (packdkey, packsuper, packdval, packbp,
packtree, lbl2kv, packsnap, dlist2kv, packarena, packsb), tree.c (setval,
getval, setmsg, getmsg: the node layout), blk.c (readblk, finalize: block
headers and what each checksum covers).

Every integer is big-endian (fns.h PACK16/32/64).  Every block is BLKSZ
(16 KiB).  Blocks are addressed by byte offset on the partition.  A block
pointer (Bptr) is addr[8] hash[8] gen[8]; the hash is MetroHash64 of the
whole block (hash.blkhash).  Trees are B-epsilon trees: leaves hold sorted
key/value pairs, pivots hold child pointers plus a buffer of pending
messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from imagebuild.errors import ImageFormatError

# dat.h: sizes
LGBLK = 14
BLKSZ = 1 << LGBLK
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MAXENT = 256
MAXNAME = MAXENT - 1 - 9 - 1
MAXUNAME = 64
KEYMAX = MAXENT
INLMAX = 512
PTRSZ = 24
FILLSZ = 2
OFFKSZ = 17
SNAPSZ = 9
DLKSZ = 1 + 8 + 8
TREESZ = 4 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + PTRSZ
KVMAX = KEYMAX + INLMAX
ARENASZ = 8 + 8 + 8 + 8
PIVHDSZ = 10
LEAFHDSZ = 6
LOGHDSZ = 2 + 2 + 8 + PTRSZ
BUFSPC = (BLKSZ - PIVHDSZ) // 2
PIVSPC = BLKSZ - PIVHDSZ - BUFSPC
LOGSPC = BLKSZ - LOGHDSZ
LOGSLOP = 16 + 16 + 8
LEAFSPC = BLKSZ - LEAFHDSZ
NSEC = 1_000_000_000

# dat.h: key types (the first byte of every key)
KDAT, KENT, KUP, KLABEL, KSNAP, KDLIST, KCONF = range(7)
KEY_NAMES = ("Kdat", "Kent", "Kup", "Klabel", "Ksnap", "Kdlist", "Kconf")

# dat.h: block types (the first two bytes of every metadata block)
TDAT, TPIVOT, TLEAF, TLOG, TDLIST, TARENA = range(6)
TSUPER = 0x6765  # 'ge': the superblock's magic doubles as its type

# dat.h: message ops in pivot buffers
ONOP, OINSERT, ODELETE, OCLEARB, OCLOBBER, OWSTAT, ORELINK, OREPREV, NMSGTYPE = range(9)
# dat.h: Owstat flag bits, each followed by its field in this order
OWSIZE, OWMODE, OWMTIME, OWATIME, OWUID, OWGID, OWMUID = (1 << i for i in range(7))

# dat.h: allocation log ops, or'ed into the low byte of the offset
LOGNOP, LOGALLOC1, LOGFREE1, LOGSYNC, LOGALLOC, LOGFREE = range(6)
LOG2WIDE = LOGALLOC

# dat.h: label flags
LMUT = 1 << 0
_LTSNAP = 1 << 2  # deprecated; the 2024 ream set it on adm and main

SB_MAGIC = b"gefs9.00"
NOADDR = -1  # Bptr{-1, -1, -1}: no block
U64 = 0xFFFFFFFFFFFFFFFF

# libc.h
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTTMP = 0x04
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMTMP = 0x04000000

assert (BUFSPC, PIVSPC, LOGSPC, LEAFSPC, TREESZ) == (8187, 8187, 16348, 16378, 72)


def s64(v: int) -> int:
    """Two's complement view of a 64-bit field (vlong)."""
    v &= U64
    return v - (1 << 64) if v >> 63 else v


def s32(v: int) -> int:
    """The low 32 bits of `v` read as a signed two's-complement int (-2**31 .. 2**31-1),
    as a C int32 cast does.
    """
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


class GefsFormatError(ImageFormatError):
    """A gefs structure on disk does not decode."""


# -- block pointers ----------------------------------------------------------------------------

_BPTR = struct.Struct(">qQq")


class Bptr(NamedTuple):
    """pack.c packbp(): addr[8] hash[8] gen[8]; addr -1 means none."""

    addr: int
    hash: int
    gen: int

    def pack(self) -> bytes:
        return _BPTR.pack(self.addr, self.hash & U64, self.gen)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> Bptr:
        if len(buf) - off < PTRSZ:
            raise GefsFormatError("gefs: block pointer cut short")
        return cls(*_BPTR.unpack_from(buf, off))


ZB = Bptr(-1, U64, -1)  # dat.h Zb


# -- keys (pack.c) -------------------------------------------------------------------------------


def packstr(s: bytes) -> bytes:
    """pack.c packstr(): len[2] bytes NUL."""
    return struct.pack(">H", len(s)) + s + b"\0"


def dat_key(qid: int, off: int) -> bytes:
    """Kdat: qid[8] off[8] => ptr (user.c slurp, fs.c writeb)."""
    return struct.pack(">BQQ", KDAT, qid & U64, off)


def ent_key(up: int, name: bytes) -> bytes:
    """pack.c packdkey(): Kent up[8] name => dir."""
    return struct.pack(">BQ", KENT, up & U64) + packstr(name)


def up_key(qid: int) -> bytes:
    """pack.c packsuper(): Kup qid[8] => the Kent key of the directory itself."""
    return struct.pack(">BQ", KUP, qid & U64)


def label_key(name: bytes) -> bytes:
    """pack.c packlbl(): Klabel name (no terminator)."""
    return bytes((KLABEL,)) + name


def snap_key(gen: int) -> bytes:
    """pack.c packsnap(): Ksnap gen[8]."""
    return struct.pack(">BQ", KSNAP, gen & U64)


def dlist_key(gen: int, bgen: int) -> bytes:
    """pack.c dlist2kv(): Kdlist gen[8] bgen[8]."""
    return struct.pack(">BQQ", KDLIST, gen & U64, bgen & U64)


def conf_key(name: bytes) -> bytes:
    """fs.c setconf(): Kconf name (no terminator)."""
    return bytes((KCONF,)) + name


def ent_key_parts(key: bytes) -> tuple[int, bytes]:
    """(up, name) of a Kent key; raises GefsFormatError."""
    if len(key) < 12 or key[0] != KENT:
        raise GefsFormatError(f"gefs: malformed Kent key {key.hex()}")
    up = s64(int.from_bytes(key[1:9], "big"))
    n = int.from_bytes(key[9:11], "big")
    if len(key) != 12 + n or key[11 + n] != 0:
        raise GefsFormatError(f"gefs: malformed Kent key {key.hex()}")
    return up, key[11 : 11 + n]


# -- values --------------------------------------------------------------------------------------

_DVAL = struct.Struct(">QQIBIqqQiii")


@dataclass
class Xdir:
    """pack.c packdval(): the Kent value, 61 bytes.  Times are in nanoseconds."""

    flag: int
    qid: int
    vers: int
    qtype: int
    mode: int
    atime: int
    mtime: int
    length: int
    uid: int
    gid: int
    muid: int

    SIZE = _DVAL.size

    def pack(self) -> bytes:
        return _DVAL.pack(
            self.flag, self.qid & U64, self.vers & 0xFFFFFFFF, self.qtype & 0xFF,
            self.mode & 0xFFFFFFFF, self.atime, self.mtime, self.length,
            s32(self.uid), s32(self.gid), s32(self.muid),
        )

    @classmethod
    def unpack(cls, buf: bytes) -> Xdir:
        if len(buf) != _DVAL.size:
            raise GefsFormatError(f"gefs: directory entry value of {len(buf)} bytes, not 61")
        f = _DVAL.unpack(buf)
        return cls(f[0], s64(f[1]), *f[2:])


_TREE = struct.Struct(">iiiIqqqq")


@dataclass
class TreeRec:
    """pack.c packtree(): the Ksnap value (72 bytes)."""

    nref: int
    nlbl: int
    ht: int
    flag: int
    gen: int
    pred: int
    succ: int
    base: int
    bp: Bptr

    def pack(self) -> bytes:
        return _TREE.pack(
            self.nref, self.nlbl, self.ht, self.flag, self.gen, self.pred, self.succ, self.base
        ) + self.bp.pack()

    @classmethod
    def unpack(cls, buf: bytes) -> TreeRec:
        if len(buf) < TREESZ:
            raise GefsFormatError(f"gefs: snapshot record of {len(buf)} bytes, not {TREESZ}")
        nref, nlbl, ht, flag, gen, pred, succ, base = _TREE.unpack_from(buf, 0)
        return cls(nref, nlbl, ht, flag, gen, pred, succ, base, Bptr.unpack(buf, _TREE.size))


def label_value(gen: int, flag: int) -> bytes:
    """pack.c lbl2kv(): Ksnap gen[8] flag[4]."""
    return struct.pack(">BqI", KSNAP, gen, flag)


def label_value_parts(v: bytes) -> tuple[int, int]:
    """Inverse of label_value (pack.c kv2lbl()): `(gen, flag)` from a 13-byte Ksnap value.

    Raises GefsFormatError when `v` is not 13 bytes starting with Ksnap.
    """
    if len(v) != 13 or v[0] != KSNAP:
        raise GefsFormatError(f"gefs: malformed label value {v.hex()}")
    gen, flag = struct.unpack_from(">qI", v, 1)
    return gen, flag


def dlist_value(hd: Bptr, tl: Bptr) -> bytes:
    """pack.c dlist2kv() value: head then tail Bptr of a deadlist, 2 * Ptrsz bytes."""
    return hd.pack() + tl.pack()


# -- arena headers and superblock ----------------------------------------------------------------

_ARENA = struct.Struct(">qQqq")


@dataclass
class ArenaHdr:
    """pack.c packarena(): loghd addr, loghd hash, size, used; after the 2-byte Tarena type."""

    loghd: int
    loghash: int
    size: int
    used: int

    def block(self) -> bytes:
        """The whole Tarena block (h0 and h1 are identical)."""
        body = struct.pack(">H", TARENA) + _ARENA.pack(
            self.loghd, self.loghash & U64, self.size, self.used
        )
        return body + bytes(BLKSZ - len(body))

    @classmethod
    def from_block(cls, blk: bytes) -> ArenaHdr:
        if int.from_bytes(blk[0:2], "big") != TARENA:
            raise GefsFormatError("gefs: arena header block has the wrong type")
        return cls(*_ARENA.unpack_from(blk, 2))


_SB = struct.Struct(">8sIIIIqQqQqQQQQQ")


@dataclass
class Superblock:
    """pack.c packsb(): identical at block 0 and in the last block of the partition."""

    blksz: int
    bufspc: int
    snap_ht: int
    snap_bp: Bptr  # gen is not stored
    snapdl_hd: tuple[int, int]
    snapdl_tl: tuple[int, int]
    flag: int
    nextqid: int
    nextgen: int
    qgen: int
    arenas: list[tuple[int, int]]  # (addr, hash) of each arena's first header

    def pack(self) -> bytes:
        from imagebuild.fs.gefs.hash import bufhash

        head = _SB.pack(
            SB_MAGIC, self.blksz, self.bufspc, len(self.arenas), self.snap_ht,
            self.snap_bp.addr, self.snap_bp.hash & U64,
            self.snapdl_hd[0], self.snapdl_hd[1] & U64,
            self.snapdl_tl[0], self.snapdl_tl[1] & U64,
            self.flag, self.nextqid, self.nextgen, self.qgen,
        )
        body = head + b"".join(struct.pack(">qQ", a, h & U64) for a, h in self.arenas)
        body += struct.pack(">Q", bufhash(body))
        return body + bytes(BLKSZ - len(body))

    @classmethod
    def unpack(cls, blk: bytes) -> Superblock:
        from imagebuild.fs.gefs.hash import bufhash

        if blk[:8] != SB_MAGIC:
            raise GefsFormatError(f"gefs: no superblock (magic {blk[:8]!r}, not {SB_MAGIC!r})")
        f = _SB.unpack_from(blk, 0)
        narena = f[3]
        if not 0 < narena < 256:
            raise GefsFormatError(f"gefs: superblock names {narena} arenas")
        off = _SB.size
        arenas = [struct.unpack_from(">qQ", blk, off + 16 * i) for i in range(narena)]
        end = off + 16 * narena
        (stored,) = struct.unpack_from(">Q", blk, end)
        if stored != bufhash(blk[:end]):
            raise GefsFormatError("gefs: superblock checksum does not match")
        return cls(
            f[1], f[2], f[4], Bptr(f[5], f[6], -1), (f[7], f[8]), (f[9], f[10]),
            f[11], f[12], f[13], f[14], [(a, h) for a, h in arenas],
        )


# -- tree nodes (tree.c setval/getval/setmsg/getmsg) ---------------------------------------------


def kv_size(key: bytes, val: bytes) -> int:
    """tree.c valsz(): offset slot + klen + key + vlen + value."""
    return 2 + 2 + len(key) + 2 + len(val)


def pack_node(btype: int, kvs: list[tuple[bytes, bytes]]) -> bytes:
    """A Tleaf or a Tpivot (with an empty buffer) holding `kvs` in order, as setval() lays it out.

    Values grow down from the end of the value space; the offset table grows
    up from the start of the data area.  Raises ValueError when they do not fit.
    """
    spc = LEAFSPC if btype == TLEAF else PIVSPC
    hdsz = LEAFHDSZ if btype == TLEAF else PIVHDSZ
    buf = bytearray(BLKSZ)
    valsz = 0
    data = hdsz
    for i, (k, v) in enumerate(kvs):
        valsz += 2 + len(k) + 2 + len(v)
        off = spc - valsz
        if 2 * (i + 1) > off:
            raise ValueError("node overfull")
        struct.pack_into(">H", buf, data + 2 * i, off)
        p = data + off
        buf[p : p + 2] = len(k).to_bytes(2, "big")
        buf[p + 2 : p + 2 + len(k)] = k
        q = p + 2 + len(k)
        buf[q : q + 2] = len(v).to_bytes(2, "big")
        buf[q + 2 : q + 2 + len(v)] = v
    if btype == TLEAF:
        struct.pack_into(">HHH", buf, 0, TLEAF, len(kvs), valsz)
    else:
        struct.pack_into(">HHHHH", buf, 0, TPIVOT, len(kvs), valsz, 0, 0)
    return bytes(buf)


def node_fill(btype: int, kvs: list[tuple[bytes, bytes]]) -> int:
    """blk.c blkfill() of a node built by pack_node (pivot buffers empty)."""
    return sum(kv_size(k, v) for k, v in kvs)


class Msg(NamedTuple):
    """A tree message (gefs dat.h struct Msg): `op` (Oinsert, Odelete, ...) applied to key `key`
    with value `val`, both raw bytes as packed in a pivot buffer (pack.c packmsg()).
    """

    op: int
    key: bytes
    val: bytes


@dataclass
class Node:
    """A decoded Tleaf or Tpivot: its values and, for pivots, its buffered messages."""

    btype: int
    vals: list[tuple[bytes, bytes]]
    msgs: list[Msg]
    valsz: int
    bufsz: int

    @property
    def fill(self) -> int:
        """blk.c blkfill()."""
        return 2 * len(self.vals) + self.valsz + 2 * len(self.msgs) + self.bufsz


def unpack_node(blk: bytes) -> Node:
    """tree.c getval()/getmsg() over a whole Tleaf or Tpivot block; raises GefsFormatError."""
    btype = int.from_bytes(blk[0:2], "big")
    if btype == TLEAF:
        nval, valsz = struct.unpack_from(">HH", blk, 2)
        nbuf = bufsz = 0
        data, spc = LEAFHDSZ, LEAFSPC
    elif btype == TPIVOT:
        nval, valsz, nbuf, bufsz = struct.unpack_from(">HHHH", blk, 2)
        data, spc = PIVHDSZ, PIVSPC
    else:
        raise GefsFormatError(f"gefs: block type {btype} is not a tree node")
    if 2 * nval > spc or valsz > spc:
        raise GefsFormatError(f"gefs: node claims {nval} values of {valsz} bytes")
    vals = []
    for i in range(nval):
        (o,) = struct.unpack_from(">H", blk, data + 2 * i)
        p = data + o
        if o + 4 > spc:
            raise GefsFormatError("gefs: node value offset out of range")
        nk = int.from_bytes(blk[p : p + 2], "big")
        k = blk[p + 2 : p + 2 + nk]
        q = p + 2 + nk
        nv = int.from_bytes(blk[q : q + 2], "big")
        v = blk[q + 2 : q + 2 + nv]
        if q + 2 + nv > data + spc:
            raise GefsFormatError("gefs: node value runs past its space")
        vals.append((bytes(k), bytes(v)))
    msgs = []
    if btype == TPIVOT:
        if 2 * nbuf > BUFSPC or bufsz > BUFSPC:
            raise GefsFormatError(f"gefs: pivot claims {nbuf} messages of {bufsz} bytes")
        base = data + PIVSPC
        for i in range(nbuf):
            (o,) = struct.unpack_from(">H", blk, base + 2 * i)
            p = base + o
            if o + 5 > BUFSPC:
                raise GefsFormatError("gefs: message offset out of range")
            op = blk[p]
            nk = int.from_bytes(blk[p + 1 : p + 3], "big")
            k = blk[p + 3 : p + 3 + nk]
            q = p + 3 + nk
            nv = int.from_bytes(blk[q : q + 2], "big")
            v = blk[q + 2 : q + 2 + nv]
            if q + 2 + nv > base + BUFSPC:
                raise GefsFormatError("gefs: message runs past the buffer")
            msgs.append(Msg(op, bytes(k), bytes(v)))
    return Node(btype, vals, msgs, valsz, bufsz)


def pivot_value(bp: Bptr, fill: int) -> bytes:
    """tree.c setptr(): a child pointer and the child's fill."""
    return bp.pack() + struct.pack(">H", fill)


# -- allocation log blocks (blk.c logappend/loadlog, finalize) -----------------------------------


def log_entry(op: int, off: int, length: int = BLKSZ) -> bytes:
    """One log entry: (off|op)[8], and len[8] for the two-wide ops."""
    e = struct.pack(">Q", (off | op) & U64)
    if op >= LOG2WIDE:
        e += struct.pack(">Q", length)
    return e


def decode_log(body: bytes) -> list[tuple[int, int, int]]:
    """(op, off, len) for each entry of a log body; LogSync yields (op, gen, 0)."""
    out = []
    i = 0
    while i < len(body):
        if i + 8 > len(body):
            raise GefsFormatError("gefs: log entry cut short")
        ent = int.from_bytes(body[i : i + 8], "big")
        op = ent & 0xFF
        if op == LOGSYNC:
            out.append((op, ent >> 8, 0))
            i += 8
            continue
        if op not in (LOGALLOC1, LOGFREE1, LOGALLOC, LOGFREE):
            raise GefsFormatError(f"gefs: unknown log op {op}")
        if op >= LOG2WIDE:
            if i + 16 > len(body):
                raise GefsFormatError("gefs: log entry cut short")
            length = int.from_bytes(body[i + 8 : i + 16], "big")
            i += 16
        else:
            length = BLKSZ
            i += 8
        out.append((op, ent & ~0xFF, length))
    return out


def pack_log(btype: int, body: bytes, chain: Bptr, residue: bytes = b"") -> bytes:
    """A Tlog/Tdlist block: type[2] logsz[2] logh[8] chain[24], then the body.

    `residue` is what the block's buffer held past the body: gefs rewrites a
    log block from its in-memory buffer, so entries cut off by loadlog()'s
    barrier stay on disk after `logsz` (covered by no hash).
    """
    from imagebuild.fs.gefs.hash import bufhash

    head = struct.pack(">HHQ", btype, len(body), bufhash(body)) + chain.pack()
    tail = residue[len(body) :]
    return head + body + tail + bytes(BLKSZ - LOGHDSZ - len(body) - len(tail))


def unpack_log(blk: bytes) -> tuple[int, bytes, int, Bptr]:
    """(type, body, stored logh, chain) of a Tlog/Tdlist block."""
    btype, logsz, logh = struct.unpack_from(">HHQ", blk, 0)
    if btype not in (TLOG, TDLIST):
        raise GefsFormatError(f"gefs: block type {btype} is not a log")
    if logsz > LOGSPC:
        raise GefsFormatError(f"gefs: log claims {logsz} bytes")
    return btype, blk[LOGHDSZ : LOGHDSZ + logsz], logh, Bptr.unpack(blk, 12)
