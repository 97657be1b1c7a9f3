"""Atomic output: a failed or interrupted build leaves no target and no temp file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.pipeline.output import atomic_output


def test_failure_removes_the_temp_file_and_keeps_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "image.img"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.img"]


def test_success_renames_over_the_target(tmp_path: Path) -> None:
    target = tmp_path / "image.img"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.img"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_during_write_leaves_nothing(tmp_path: Path, signal_name: str) -> None:
    target = tmp_path / "image.img"
    script = f"""
import os, signal, sys
from pathlib import Path
from imagebuild.pipeline.output import atomic_output
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIG_IGN
try:
    with atomic_output(Path({str(target)!r})) as tmp:
        tmp.write_bytes(b"partial")
        os.kill(os.getpid(), signal.{signal_name})
        signal.pause()
except KeyboardInterrupt:
    sys.exit(130)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_target_not_the_temporary(tmp_path: Path) -> None:
    import errno

    from imagebuild.errors import ImageBuildError, OutputError

    target = tmp_path / "image.img"
    with pytest.raises(OutputError, match=r"image\.img: No space left") as err, \
            atomic_output(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert ".tmp" not in str(err.value)
    with pytest.raises(ImageBuildError) as err2, atomic_output(target) as tmp:
        raise ImageBuildError(f"{tmp}: write runs past the end")
    assert str(err2.value) == f"{target}: write runs past the end"
    assert list(tmp_path.iterdir()) == []


def test_refuses_directories_and_special_files(tmp_path: Path) -> None:
    import os

    from imagebuild.errors import OutputError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (tmp_path, fifo, Path("/dev/null")):
        with pytest.raises(OutputError), atomic_output(target):
            raise AssertionError("the body must not run")
