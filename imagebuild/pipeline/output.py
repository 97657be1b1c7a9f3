"""Atomic output: the one way every verb writes a file the user named.

The image is written to a temporary file beside the target
(`.NAME.PID.tmp`), fsynced when asked (as `qemu-img` does not by default),
given the target's mode and renamed over the target only when everything
succeeded; on any failure, exception or SIGTERM
the temporary file is removed and the target is left as it was.  A build
killed with SIGKILL cannot clean up; the next `atomic_output` for the same
target removes the temporaries whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from imagebuild.errors import ImageBuildError, OutputError, show_path

# errors of a write to the output that carry no file name: disk full, quota, too large
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def check_output(target: Path | str) -> None:
    """Refuse an output path that must not be replaced by an image file.

    Raises OutputError for a path naming a directory (existing, or written
    with a trailing slash) or an existing non-regular file (FIFO, device,
    socket): renaming an image over /dev/null or a FIFO destroys it.
    """
    text = os.fspath(target)
    if text.endswith("/"):
        raise OutputError(f"{show_path(text)}: output names a directory, not a file")
    try:
        st = os.stat(text)
    except FileNotFoundError:
        return
    except OSError as err:
        raise OutputError(f"{show_path(text)}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{show_path(text)}: output is a directory; name a file in it")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{show_path(text)}: output exists and is not a regular file (a device, FIFO or "
            f"socket); refusing to replace it"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove `.NAME.PID.tmp` files beside `target` whose process no longer runs.

    Returns the paths removed.  Only names of exactly that shape are touched.
    """
    removed = []
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix) : -len(".tmp")]
        if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
            continue
        if _pid_alive(int(pid)):
            continue
        path = target.parent / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


@contextmanager
def atomic_output(target: Path | str, *, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it becomes `target`.

    The caller creates and writes the temporary file.  On success it is
    fsynced (when `sync`), given the replaced file's mode or, for
    a new file, 0666 & ~umask, and renamed over `target`.  On any exception
    (and SIGTERM, turned into KeyboardInterrupt in the main thread) it is
    removed and the exception goes on.  Errors writing it are reported as
    OutputError naming `target`, never the temporary name.

    Raises OutputError (see check_output; write errors: disk full, file too
    large) and whatever the body raises.
    """
    target = Path(target)
    check_output(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{show_path(target.parent)}: {err.strerror}") from None
    remove_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            if sync:
                os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and (
            err.filename == str(tmp) or (err.filename is None and err.errno in WRITE_ERRNOS)
        ):
            raise OutputError(f"{show_path(target)}: {err.strerror or err}") from None
        if isinstance(err, ImageBuildError) and str(tmp) in str(err):
            # name the output the user gave, not our temporary file
            raise type(err)(str(err).replace(str(tmp), show_path(target))) from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
