"""Putting hjfs blocks on the device: long runs of whole blocks, each with one pwrite.

RunWriter gathers blocks at consecutive numbers in one buffer and writes up
to RUN_BYTES at once; emit_file_blocks turns a piece of a source file into
TRAW blocks (a type byte, then 4095 bytes of data) copied straight into that
buffer, leaving all-zero blocks unwritten because a fresh partition already
reads as zeros.  RunWriter.read_dense reads a piece of a source into the
buffer as blocks without that copy (one preadv), and tells whether mkfs
copies all of it (no hole, no all-zero block); commit then places it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import InputError
from imagebuild.fs.api import SourceFile
from imagebuild.fs.hjfs.layout import BLOCK, RBLOCK, TRAW, ZERO_BLOCK
from imagebuild.fs.hjfs.pieces import PIECE, Piece
from imagebuild.fs.mkfs import BUFLEN, open_source, read_exact, size_changed, zero_pieces
from imagebuild.util.progress import Progress

RUN_BYTES = 4 << 20  # write in runs of up to this many bytes (a read piece's blocks fit)
MAX_GAP = 32  # blocks of zeros a run may bridge to reach the next block
# An all-zero 4088-byte write piece spans two blocks at most, so one of them holds at least
# HOLE_RUN of its zeros in a row (an all-zero block holds RBLOCK); such a run holds two bytes
# in a row of the ones every HOLE_RUN // 2 bytes.
HOLE_RUN = (BUFLEN + 1) // 2
SMALL_MOVE = 16 * BLOCK  # blocks read_dense read that commit copies rather than writes at once
_ZEROS = memoryview(bytes(MAX_GAP * BLOCK))
_TYPES = bytes([TRAW]) * (RUN_BYTES // BLOCK)
_MARKS = b"\xff" * (RUN_BYTES // BLOCK)  # type bytes while a read is looked at: not zero
assert -(-PIECE // RBLOCK) * BLOCK <= RUN_BYTES


def emit_file_blocks(out: RunWriter, numbers: Sequence[int], piece: Piece) -> None:
    """Write the blocks `piece` touches, placed at device blocks `numbers`.

    Runs of consecutive device blocks holding consecutive file blocks go
    out at once; all-zero blocks are left unwritten (a raw block's type byte
    is 0 too).
    """
    touched, offset = piece.touched, piece.offset
    if not touched:
        return
    view = memoryview(piece.data)
    zero_blocks = piece.zero_blocks
    if not zero_blocks and zero_blocks is not None and _counts_up(numbers) and _counts_up(touched):
        out.put_data(numbers[0], view, touched[0] * RBLOCK - offset, len(touched))
        return  # the common case: one run without zero blocks
    if zero_blocks is None:
        first = offset // RBLOCK  # the piece starts on a block boundary
        zero_blocks = {first + k for k in zero_pieces(piece.data, RBLOCK)}
    for i, n in _runs(numbers, touched):
        start = touched[i] * RBLOCK - offset
        if not zero_blocks:
            out.put_data(numbers[i], view, start, n)
            continue
        written = 0
        for k in [*(k for k in range(n) if touched[i + k] in zero_blocks), n]:
            if written < k:
                out.put_data(numbers[i + written], view, start + written * RBLOCK, k - written)
            written = k + 1


def _runs(numbers: Sequence[int], touched: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first index, length) of each run where both `numbers` and `touched` count up by one.

    None for empty lists: a read piece that is all zero touches no block.
    """
    count = len(numbers)
    if not count:
        return
    if _counts_up(numbers) and _counts_up(touched):
        yield 0, count  # the common case: one run
        return
    breaks = [
        k
        for k in range(1, count)
        if numbers[k] != numbers[k - 1] + 1 or touched[k] != touched[k - 1] + 1
    ]
    for first, end in zip([0, *breaks], [*breaks, count], strict=True):
        yield first, end - first


def _counts_up(seq: Sequence[int]) -> bool:
    """Whether `seq` (not empty) is first, first+1, first+2, ..."""
    if isinstance(seq, range):
        return seq.step == 1
    return seq[-1] - seq[0] == len(seq) - 1 and seq == list(range(seq[0], seq[-1] + 1))


class RunWriter:
    """Collects whole blocks in a buffer and writes them in runs of up to RUN_BYTES, each with
    one pwrite.

    File data is copied once, from the bytes read into the buffer.  A short
    gap (up to MAX_GAP blocks) before the next block is filled with zeros
    when nothing at or past it was written yet: the blocks there (directory,
    indirect blocks) are written later anyway, and whole zero clusters cost
    nothing in a container that skips them.  Blocks are written in the order
    they are put, so the device sees its first write to every region in the
    same order whatever the runs' lengths.
    """

    def __init__(self, dev: BlockDevice, progress: Progress | None = None) -> None:
        self.dev = dev
        self.progress = progress
        self.buf = bytearray(RUN_BYTES)
        self.view = memoryview(self.buf)
        self.beyond = memoryview(bytearray(1))  # where a read asks for one byte too many
        self.length = 0  # bytes of the run in buf
        self.start = 0  # the block the run starts at
        self.high = 0  # one past the highest block put so far
        self.written = 0

    def _room(self, b: int) -> int:
        """Make block `b` the next one of the run (flushing, or bridging a short gap with
        zeros, first); how many blocks fit from there."""
        length = self.length
        if length:
            end = self.start + length // BLOCK
            gap = b - end
            if gap == 0 and length < RUN_BYTES:
                return (RUN_BYTES - length) // BLOCK
            if 0 < gap <= MAX_GAP and end == self.high and length + (gap + 1) * BLOCK <= RUN_BYTES:
                self.buf[length : length + gap * BLOCK] = _ZEROS[: gap * BLOCK]
                self.length = length = length + gap * BLOCK
                return (RUN_BYTES - length) // BLOCK
            self.flush()
        self.start = b
        return RUN_BYTES // BLOCK

    def put(self, b: int, block: bytes) -> None:
        """Block `b` holding `block` (BLOCK bytes); an all-zero one is left unwritten."""
        if block == ZERO_BLOCK:  # a fresh partition already reads as zeros
            return
        self._room(b)
        self.buf[self.length : self.length + BLOCK] = block
        self.length += BLOCK
        self.high = max(self.high, b + 1)

    def put_data(self, b: int, data: memoryview, start: int, count: int) -> None:
        """TRAW blocks b, b+1, ... b+count-1 holding data[start:], RBLOCK bytes each (the last
        may be short: its tail is zero)."""
        buf = self.buf
        end = len(data)
        while count > 0:
            fit = min(count, self._room(b))
            pos = self.length
            full = min(fit, (end - start) // RBLOCK)  # blocks with RBLOCK bytes of data
            blocks = range(pos, pos + full * BLOCK, BLOCK)
            for dst, src in zip(blocks, range(start, start + full * RBLOCK, RBLOCK), strict=True):
                buf[dst] = TRAW
                buf[dst + 1 : dst + BLOCK] = data[src : src + RBLOCK]
            pos += full * BLOCK
            if full < fit:  # the last block of the file
                src = start + full * RBLOCK
                tail = end - src
                buf[pos] = TRAW
                buf[pos + 1 : pos + 1 + tail] = data[src:end]
                buf[pos + 1 + tail : pos + BLOCK] = _ZEROS[: RBLOCK - tail]
                pos += BLOCK
            self.length = pos
            b += fit
            self.high = max(self.high, b)
            start += fit * RBLOCK
            count -= fit

    def read_dense(self, fd: int, source: SourceFile, offset: int, size: int, *,
                   last: bool) -> int:
        """Read `size` bytes (1 .. PIECE) of `source`, open as `fd`, from byte `offset` (a
        block boundary) into the free end of the buffer as TRAW blocks, flushing the run
        first if they do not fit; `commit` then puts them at their device blocks.

        Returns how many blocks they fill when mkfs copies them whole: no all-zero 4088-byte
        piece (a hole) and no all-zero block, sure when no block holds HOLE_RUN zero bytes
        in a row and the last byte is not zero (a short last piece or block); 0 when there
        may be some (the caller reads them again to look closer).  Raises InputError if the
        source ends early or, when `last`, goes on past offset + size.  At most PIECE bytes.
        """
        count = -(-size // RBLOCK)
        if self.length + count * BLOCK > RUN_BYTES:
            self.flush()
        buf, view, pos = self.buf, self.view, self.length
        end = pos + count * BLOCK
        data_end = end - count * RBLOCK + size  # past the last byte read
        buf[pos:end:BLOCK] = _MARKS[:count]  # so no zero run goes on into the next block
        parts = [view[at + 1 : at + BLOCK] for at in range(pos, end - BLOCK, BLOCK)]
        parts.append(view[end - BLOCK + 1 : data_end])
        if last:
            parts.append(self.beyond)
        try:
            got = os.preadv(fd, parts, offset)
        except OSError as e:
            raise InputError(
                f"{source.where}: can't read {source.source_path}: {e.strerror}") from None
        if got != size:
            raise size_changed(source)
        if buf[data_end - 1] == 0 or b"\0\0" in buf[pos:data_end:HOLE_RUN // 2]:
            return 0
        buf[pos:end:BLOCK] = _TYPES[:count]
        buf[data_end:end] = _ZEROS[: end - data_end]
        return count

    def commit(self, numbers: Sequence[int]) -> None:
        """Put the blocks the last read_dense filled at device blocks `numbers` (one each, in
        order): in place when they go on the run; else a few are copied where they belong
        (as put_blocks would), more are written at once, a pwrite per run of `numbers`,
        after the run so far."""
        count = len(numbers)
        pos, first = self.length, numbers[0]
        consecutive = _counts_up(numbers)
        if consecutive and (pos == 0 or first == self.start + pos // BLOCK):
            if pos == 0:
                self.start = first
            self.length = pos + count * BLOCK
            self.high = max(self.high, first + count)
            return
        read = self.view[pos : pos + count * BLOCK]
        if count * BLOCK <= SMALL_MOVE:
            blocks = memoryview(bytes(read))  # _room may bridge a gap over where they are
            for i, n in _runs(numbers, range(count)):
                self.put_blocks(numbers[i], blocks[i * BLOCK : (i + n) * BLOCK])
            return
        self.flush()
        for i, n in _runs(numbers, range(count)):
            self._write(read[i * BLOCK : (i + n) * BLOCK], numbers[i])
        self.high = max(self.high, max(numbers) + 1)

    def put_blocks(self, b: int, blocks: memoryview) -> None:
        """Blocks b, b+1, ... holding `blocks` (whole blocks, BLOCK bytes each)."""
        at = 0
        while at < len(blocks):
            fit = min(len(blocks) - at, self._room(b) * BLOCK)
            pos = self.length
            self.buf[pos : pos + fit] = blocks[at : at + fit]
            self.length = pos + fit
            at += fit
            b += fit // BLOCK
            self.high = max(self.high, b)

    def flush(self) -> None:
        if not self.length:
            return
        self._write(self.view[: self.length], self.start)
        self.length = 0

    def _write(self, blocks: memoryview, b: int) -> None:
        """Whole blocks from block `b` on, with one pwrite."""
        self.dev.pwrite(blocks, b * BLOCK)
        self.written += len(blocks)
        if self.progress is not None:
            self.progress("fs", self.written, None)


class SourceReader:
    """Reads source files by index, keeping the last one open."""

    def __init__(self, sources: list[SourceFile]) -> None:
        self.sources = sources
        self.index = -1
        self.fd = -1

    def read(self, index: int, offset: int, size: int) -> bytes:
        """Up to `size` bytes of source `index` at byte `offset` (fewer at its end)."""
        source = self.sources[index]
        if index != self.index:
            self.close()
            self.fd = open_source(source)
            self.index = index
        return read_exact(self.fd, source, max(0, min(size, source.length - offset)), offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.index = -1


__all__ = ["MAX_GAP", "RUN_BYTES", "Progress", "RunWriter", "SourceReader", "emit_file_blocks"]
