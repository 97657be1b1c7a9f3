"""hjfs block allocation: reference counts and the free list (fs1.c getfree(), putfree()).

A block is free when its reference count is 0.  The counts live in the
TREF blocks after the superblock; the writer packs them from `refs`.
"""

from __future__ import annotations

from imagebuild.fs.hjfs.layout import REFPERBLK

FREELISTLEN = 256  # dat.h: the free-block channel's capacity


class Allocator:
    """Reference counts and hjfs's free list.

    getfree() first takes blocks queued on the free list (a channel of 256
    block numbers), then scans the reference counts from the start for the
    first free block, allocates it, and queues the following free blocks of
    the same reference block while the channel has room.  putfree() queues a
    block it frees if there is room.  During ream the channel does not exist
    yet (initfs creates it afterwards), so nothing is queued.
    """

    def __init__(self, size: int, used_below: int) -> None:
        """`size` blocks, of which blocks 0 .. used_below-1 (superblock, counts) are in use."""
        self.size = size
        self.refs = bytearray(size)
        self.refs[:used_below] = b"\x01" * used_below
        self.freelist: list[int] | None = None  # queued blocks, the next first
        self.low = used_below  # every block below this one is in use
        self.overflow = 0  # blocks handed out past the end while planning

    def getfree(self) -> int:
        """A block for a new use (its count set to 1).  When the device is full, numbers past
        its end are handed out and counted in `overflow`, so a plan can tell how much it lacks."""
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
        """Drop one reference to `b`; a block whose count reaches 0 is queued if there is room."""
        if b >= self.size:
            return
        self.refs[b] -= 1
        if self.refs[b] == 0:
            self.low = min(self.low, b)
            if self.freelist is not None and len(self.freelist) < FREELISTLEN:
                self.freelist.append(b)


__all__ = ["FREELISTLEN", "Allocator"]
