"""The one progress-callback convention of every writer.

A writer that reports progress takes an optional `Progress` and calls it as

    progress(step, done, total)

`step` names what is being written ("mbr", "fs (hjfs)", "format 9fat", ...),
`done` is the number of bytes written so far in that step (it never goes
down within a step), `total` the bytes the step will write when known, else
None.  A new `step` value means the previous step is finished.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """`progress(step, done, total)`: bytes written so far in `step`, of `total` if known."""

    def __call__(self, step: str, done: int, total: int | None, /) -> None: ...
