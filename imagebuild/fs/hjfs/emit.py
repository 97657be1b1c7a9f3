"""Putting hjfs blocks on the device: long runs of whole blocks, each with one pwrite.

RunWriter gathers blocks at consecutive numbers and writes up to RUN_BYTES
at once; emit_file_blocks turns a piece of a source file into TRAW blocks
(a type byte, then 4095 bytes of data), leaving all-zero blocks unwritten
because a fresh partition already reads as zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from imagebuild.disk.device import BlockDevice
from imagebuild.fs.api import SourceFile
from imagebuild.fs.hjfs.layout import BLOCK, RBLOCK, TRAW, ZERO_BLOCK
from imagebuild.fs.hjfs.pieces import Piece
from imagebuild.fs.mkfs import open_source, read_exact, zero_pieces
from imagebuild.util.progress import Progress

RUN_BYTES = 2 << 20  # write in runs of up to this many bytes
MAX_GAP = 32  # blocks of zeros a run may bridge to reach the next block
_RAW_TYPE = bytes((TRAW,))



def emit_file_blocks(out: RunWriter, numbers: Sequence[int], piece: Piece) -> None:
    """Write the blocks `piece` touches, placed at device blocks `numbers`.

    Runs of consecutive device blocks holding consecutive file blocks go
    out at once; all-zero blocks are left unwritten (a raw block's type byte
    is 0 too).
    """
    touched, offset = piece.touched, piece.offset
    view = memoryview(piece.data)
    first = offset // RBLOCK  # the piece starts on a block boundary
    zero_blocks = {first + k for k in zero_pieces(piece.data, RBLOCK)}
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
    """(first index, length) of each run where both `numbers` and `touched` count up by one.

    None for empty lists: a read piece that is all zero touches no block.
    """
    if not numbers:
        return
    breaks = [
        k
        for k in range(1, len(numbers))
        if numbers[k] != numbers[k - 1] + 1 or touched[k] != touched[k - 1] + 1
    ]
    for first, end in zip([0, *breaks], [*breaks, len(numbers)], strict=True):
        yield first, end - first


class RunWriter:
    """Collects whole blocks and writes them in runs of up to RUN_BYTES, each with one pwrite.

    A run is kept as the list of its parts and joined when written, so file
    data is copied once between the read and the write.  A short gap (up to
    MAX_GAP blocks) before the next block is filled with zeros when nothing
    at or past it was written yet: the blocks there (directory, indirect
    blocks) are written later anyway, and whole zero clusters cost nothing
    in a container that skips them.
    """

    def __init__(self, dev: BlockDevice, progress: Progress | None = None) -> None:
        self.dev = dev
        self.progress = progress
        self.parts: list[bytes | memoryview] = []
        self.length = 0  # bytes in parts
        self.start = 0  # the block the run starts at
        self.high = 0  # one past the highest block put so far
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
        if self.parts:
            end = self.start + self.length // BLOCK
            gap = b - end
            if 0 < gap <= MAX_GAP and end == self.high and self.length + length <= RUN_BYTES:
                self.parts.append(bytes(gap * BLOCK))  # never written: zeros for now
                self.length += gap * BLOCK
            elif b != end or self.length + length > RUN_BYTES:
                self.flush()
        self.high = max(self.high, b + length // BLOCK)
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
