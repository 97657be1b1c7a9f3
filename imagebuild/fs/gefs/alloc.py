"""gefs arenas: free ranges, block allocation and the allocation log, as blk.c keeps them.

The partition is cut into arenas (ream.c reamfs()).  Each arena starts with
two identical header blocks (h0, h1) and keeps its free space as a set of
ranges, persisted as an append-only log of Alloc/Free entries (blk.c
logappend(), loadlog()).  Blocks are handed out by blkalloc(): metadata
blocks round-robin over the arenas from the top of the highest free range,
file data from the bottom of the lowest range of an arena picked by the
file's qid (pickarena()).

References: blk.c pickarena(), blkalloc(), blkalloc_lk(), blkdealloc_lk(),
logappend(), loadlog(), grabrange(), freerange(); load.c loadfs() (the
allocation reserve).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagebuild.errors import LayoutError
from imagebuild.fs.gefs.layout import (
    BLKSZ,
    LOGALLOC,
    LOGALLOC1,
    LOGFREE,
    LOGFREE1,
    LOGSLOP,
    LOGSPC,
    TLOG,
    U64,
    ZB,
    Bptr,
    MiB,
    log_entry,
    pack_log,
)


def reserve_of(size: int) -> int:
    """load.c loadfs(): the blocks an arena keeps back once the file system is running."""
    return min(max(size // 1024, 512 * 1024), 8 * MiB)


def grab_range(free: list[list[int]], off: int, length: int) -> bool:
    """blk.c grabrange(): cut [off, off+length) out of the one free range holding it.

    `free` is the arena's sorted [offset, length] list (bytes), changed in place.
    Returns False, changing nothing, when no single free range holds the span.
    """
    for i, (o, n) in enumerate(free):
        if o <= off and off + length <= o + n:
            rest = []
            if off > o:
                rest.append([o, off - o])
            if off + length < o + n:
                rest.append([off + length, o + n - off - length])
            free[i : i + 1] = rest
            return True
    return False


@dataclass
class ArenaModel:
    """One arena: its header address, size, free ranges, used bytes and log blocks."""

    index: int
    hdaddr: int
    size: int
    used: int = 0
    reserve: int = 0
    free: list[list[int]] = field(default_factory=list)  # sorted [off, len]
    loghd_hash: int = U64  # the hash packed into the arena header (stale after ream)
    logs: list[tuple[int, bytearray]] = field(default_factory=list)  # (addr, body), head first
    residue: dict[int, bytes] = field(default_factory=dict)  # log buffer bytes past the body

    # -- free ranges (grabrange/freerange) -------------------------------------------------
    def grab(self, off: int, length: int) -> None:
        if not grab_range(self.free, off, length):
            raise LayoutError(f"gefs: arena {self.index}: allocating {off:#x}, which is not free")
        self.used += length

    def release(self, off: int, length: int) -> None:
        for o, n in self.free:
            if o < off + length and off < o + n:
                raise LayoutError(f"gefs: arena {self.index}: double free of {off:#x}")
        self.free.append([off, length])
        self.free.sort()
        merged: list[list[int]] = []
        for o, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1][1] += n
            else:
                merged.append([o, n])
        self.free = merged
        self.used -= length

    def take(self, seq: bool) -> int | None:
        """blkalloc_lk(): a block from the bottom (seq) or the top of the free space."""
        if self.size - self.used <= self.reserve or not self.free:
            return None
        if seq:
            r = self.free[0]
            b = r[0]
            r[0] += BLKSZ
            r[1] -= BLKSZ
            if r[1] == 0:
                self.free.pop(0)
        else:
            r = self.free[-1]
            r[1] -= BLKSZ
            b = r[0] + r[1]
            if r[1] == 0:
                self.free.pop()
        self.used += BLKSZ
        return b

    # -- the log (logappend) --------------------------------------------------------------
    def append(self, op: int, off: int, length: int = BLKSZ) -> None:
        """logappend(): chain a new log block when the tail is nearly full."""
        tail = self.logs[-1][1]
        if len(tail) >= LOGSPC - LOGSLOP:
            o = self.take(False)
            if o is None:
                raise LayoutError(f"gefs: arena {self.index} is full (no room for its log)")
            tail += log_entry(LOGALLOC1, o)
            self.logs.append((o, bytearray()))
            tail = self.logs[-1][1]
        if length == BLKSZ:
            op = {LOGALLOC: LOGALLOC1, LOGFREE: LOGFREE1}.get(op, op)
        tail += log_entry(op, off, length)

    def log_blocks(self) -> list[tuple[int, bytes]]:
        """Every log block of the chain, packed (finalize() of a Tlog)."""
        out = []
        for i, (addr, body) in enumerate(self.logs):
            nxt = Bptr(self.logs[i + 1][0], U64, -1) if i + 1 < len(self.logs) else ZB
            out.append((addr, pack_log(TLOG, bytes(body), nxt, self.residue.get(addr, b""))))
        return out


class Allocator:
    """blkalloc() over all arenas: pickarena()'s round robin, then blkalloc_lk() and logappend()."""

    def __init__(self, arenas: list[ArenaModel]) -> None:
        self.arenas = arenas
        self.roundrobin = 0

    def alloc(self, data: bool, hint: int = 0, seq: bool = False) -> int:
        """One block: `data` picks the data arenas by `hint` (a qid), metadata goes round robin."""
        narena = len(self.arenas)
        tries = 0
        while tries < 2 * narena:
            self.roundrobin += 1
            r = self.roundrobin // 2048
            n = (hint % (narena - 1) + r + 1) if data else r
            a = self.arenas[(n + tries) % narena]
            tries += 1
            b = a.take(seq)
            if b is not None:
                a.append(LOGALLOC, b)
                return b
        raise LayoutError("gefs: file system full")

    def free(self, addr: int) -> None:
        """blkdealloc_lk(): log the free and give the block back."""
        a = self.arena_of(addr)
        a.append(LOGFREE, addr)
        a.release(addr, BLKSZ)

    def arena_of(self, addr: int) -> ArenaModel:
        for a in self.arenas:
            if a.hdaddr <= addr < a.hdaddr + a.size + 2 * BLKSZ:
                return a
        raise LayoutError(f"gefs: block {addr:#x} is in no arena")
