"""`gefs -r USER`: the arenas, their logs and headers, the three trees and the superblocks.

reamfs() lays the partition out as

    block 0                       superblock (sb0)
    then narena arenas, each:     h0, h1 (arena header, twice), its first log block,
                                  free space (asz - 2 blocks), 2 unused blocks
    last block                    backup superblock (sb1), a copy of sb0

with narena = clamp(ceil(size / 4 TiB), 8, 32) and every arena the same size.
It then allocates four blocks: the leaf of the main tree (the root
directory) and of the adm tree (the root directory and /adm/users, whose
single data block is the fourth), and the leaf of the snapshot tree that
names them: labels adm, empty and main, and snapshots 0 (empty), 1 (adm)
and 2 (main), empty and main sharing the one root leaf.

`Ream.build()` reproduces those bytes; `legacy_backlink` rebuilds what gefs
did before 9front commit 108f94b25 (July 2024): the adm root's Kup backlink
stored under qid 0 instead of 1, and the deprecated Ltsnap flag on the adm
and main labels.

References: ream.c reamfs(), initarena(), initroot(), initadm(), initsnap(),
fillxdir(); load.c loadarena(), blk.c loadlog() (which reream's log replay
follows, truncating at the LogSync barrier), blk.c newblk()/newdblk().
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagebuild.errors import LayoutError
from imagebuild.fs.gefs.alloc import Allocator, ArenaModel
from imagebuild.fs.gefs.hash import blkhash
from imagebuild.fs.gefs.layout import (
    _LTSNAP,
    BLKSZ,
    BUFSPC,
    DMDIR,
    LMUT,
    LOGALLOC,
    LOGFREE,
    LOGSYNC,
    QTDIR,
    TLEAF,
    TLOG,
    U64,
    ZB,
    ArenaHdr,
    Bptr,
    GiB,
    MiB,
    Superblock,
    TreeRec,
    Xdir,
    dat_key,
    ent_key,
    label_key,
    label_value,
    log_entry,
    pack_log,
    pack_node,
    snap_key,
    up_key,
)

QMAINROOT, QADMROOT, QADMUSER, NREAMQID = 0, 1, 2, 3
MIN_SIZE = 128 * MiB + BLKSZ  # reamfs(): "disk too small"


def ream_users(user: str) -> bytes:
    """reamfs()'s user table for `gefs -r user`."""
    return f"-1:adm::{user}\n0:none::\n1:{user}:{user}:\n".encode()


def fillxdir(qid: int, qtype: int, mode: int, length: int = 0) -> Xdir:
    """ream.c fillxdir(): times 0, owner and group -1 (adm), muid 0 (none)."""
    return Xdir(0, qid, 0, qtype, mode, 0, 0, length, -1, -1, 0)


@dataclass
class Geometry:
    """reamfs()'s arithmetic for a partition of `devsize` bytes."""

    devsize: int
    sz: int
    narena: int
    asz: int
    sb1: int
    arena_addrs: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, devsize: int) -> Geometry:
        if devsize < MIN_SIZE:
            raise LayoutError(
                f"gefs: ream: disk too small ({devsize} bytes; gefs needs at least {MIN_SIZE})"
            )
        sz = devsize - devsize % BLKSZ - 2 * BLKSZ
        narena = (sz + 4096 * GiB - 1) // (4096 * GiB)
        narena = min(max(narena, 8), 32)
        asz = sz // narena
        asz = asz - asz % BLKSZ - 2 * BLKSZ
        addrs = [BLKSZ + i * (asz + 2 * BLKSZ) for i in range(narena)]
        return cls(devsize, sz, narena, asz, sz + BLKSZ, addrs)


class Ream:
    """The state gefs leaves after `gefs -r`: arenas, blocks written, generation counters."""

    def __init__(self, devsize: int, user: str, *, legacy_backlink: bool = False) -> None:
        self.geo = Geometry.of(devsize)
        self.user = user
        self.legacy = legacy_backlink
        self.blocks: dict[int, bytes] = {}  # metadata and data blocks to write
        self.arenas: list[ArenaModel] = []
        self.alloc = Allocator(self.arenas)
        self.nextqid = NREAMQID
        self.nextgen = 0
        self.qgen = 0
        self.snap_root = ZB
        self.snap_ht = 1
        self.main_leaf = ZB
        self.adm_leaf = ZB
        self.adm_users = ZB
        self.users_text = ream_users(user)

    # -- ream.c initarena ----------------------------------------------------------------
    def _initarena(self, index: int, hdaddr: int) -> None:
        asz = self.geo.asz
        addr = hdaddr + 2 * BLKSZ
        body = (
            log_entry(LOGFREE, addr, asz - 2 * BLKSZ)
            + log_entry(LOGALLOC, addr, BLKSZ)
            + log_entry(LOGSYNC, 0)
        )
        first = pack_log(TLOG, body, ZB)
        a = ArenaModel(index, hdaddr, asz, loghd_hash=blkhash(first))
        # loadarena() + loadlog(): used starts at size; the replay stops at the barrier
        a.used = asz
        a.release(addr, asz - 2 * BLKSZ)
        a.grab(addr, BLKSZ)
        a.logs.append((addr, bytearray(body[:32])))
        a.residue[addr] = body  # the barrier stays in the buffer past logsz
        self.arenas.append(a)

    def _leaf(self, kvs: list[tuple[bytes, bytes]], gen: int) -> Bptr:
        addr = self.alloc.alloc(False)
        blk = pack_node(TLEAF, kvs)
        self.blocks[addr] = blk
        return Bptr(addr, blkhash(blk), gen)

    def build(self) -> Ream:
        for i, hd in enumerate(self.geo.arena_addrs):
            self._initarena(i, hd)
        root = fillxdir(QMAINROOT, QTDIR, DMDIR | 0o775)
        self.main_leaf = self._leaf(
            [(ent_key(-1, b""), root.pack()), (up_key(QMAINROOT), ent_key(-1, b""))], 0
        )
        # the adm leaf is allocated before the users block, but written after it
        adm_addr = self.alloc.alloc(False)
        users_addr = self.alloc.alloc(True, 0, True)
        ublk = self.users_text + bytes(BLKSZ - len(self.users_text))
        self.blocks[users_addr] = ublk
        self.adm_users = Bptr(users_addr, blkhash(ublk), 0)
        users = fillxdir(QADMUSER, 0, 0o664, len(self.users_text))
        admroot = fillxdir(QADMROOT, QTDIR, DMDIR | 0o775)
        backlink = up_key(QMAINROOT if self.legacy else QADMROOT)
        ablk = pack_node(
            TLEAF,
            [
                (dat_key(QADMUSER, 0), self.adm_users.pack()),
                (ent_key(QADMROOT, b"users"), users.pack()),
                (ent_key(-1, b""), admroot.pack()),
                (backlink, ent_key(-1, b"")),
            ],
        )
        self.blocks[adm_addr] = ablk
        self.adm_leaf = Bptr(adm_addr, blkhash(ablk), 0)
        flag = LMUT | (_LTSNAP if self.legacy else 0)
        empty = TreeRec(2, 1, 1, 0, 0, 0, 2, 0, self.main_leaf)
        adm = TreeRec(0, 1, 1, 0, 1, 0, -1, 0, self.adm_leaf)
        main = TreeRec(0, 1, 1, 0, 2, 0, -1, 0, self.main_leaf)
        self.nextgen = 3
        self.snap_root = self._leaf(
            [
                (label_key(b"adm"), label_value(1, flag)),
                (label_key(b"empty"), label_value(0, 0)),
                (label_key(b"main"), label_value(2, flag)),
                (snap_key(0), empty.pack()),
                (snap_key(1), adm.pack()),
                (snap_key(2), main.pack()),
            ],
            0,
        )
        return self

    # -- the closing writes (reamfs's last loop, packsb) ----------------------------------
    def arena_headers(self) -> list[tuple[int, bytes]]:
        out = []
        for a in self.arenas:
            hdr = ArenaHdr(a.logs[0][0], a.loghd_hash, a.size, a.used).block()
            out += [(a.hdaddr, hdr), (a.hdaddr + BLKSZ, hdr)]
        return out

    def superblock(self) -> bytes:
        sb = Superblock(
            BLKSZ, BUFSPC, self.snap_ht, self.snap_root, (-1, U64), (-1, U64), 0,
            self.nextqid, self.nextgen, self.qgen,
            [(a.hdaddr, blkhash(ArenaHdr(a.logs[0][0], a.loghd_hash, a.size, a.used).block()))
             for a in self.arenas],
        )
        return sb.pack()

    def final_blocks(self) -> dict[int, bytes]:
        """Every block this state writes: the data and tree blocks, logs, headers, superblocks."""
        out = dict(self.blocks)
        for a in self.arenas:
            out.update(a.log_blocks())
        out.update(self.arena_headers())
        sb = self.superblock()
        out[0] = sb
        out[self.geo.sb1] = sb
        return out
