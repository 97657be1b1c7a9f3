"""Reading the user's input files safely: regular files only, of bounded size.

A FIFO given as an input would block a read forever and /dev/zero would fill
memory; `read_input` opens without blocking, refuses anything but a regular
file and never reads more than `limit` bytes.
"""

from __future__ import annotations

import os
import stat

from imagebuild.errors import InputError, show_path


def read_input(path: str | os.PathLike[str], limit: int, what: str = "input") -> bytes:
    """The bytes of the regular file `path`, at most `limit` bytes long.

    Raises InputError naming the file when it is not a regular file (FIFO,
    device, directory, socket) or longer than `limit` bytes; OSError (with
    the file name) when it cannot be opened or read.
    """
    name = show_path(os.fspath(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise InputError(f"{name}: {what} is {kind}")
        if st.st_size > limit:
            raise InputError(f"{name}: {what} is {st.st_size} bytes, more than {limit}")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 24, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InputError(f"{name}: {what} grew past {limit} bytes while read")
        return b"".join(chunks)
    finally:
        os.close(fd)
