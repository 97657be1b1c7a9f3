"""atomic_output's promises one at a time, in process: the output refusals, the stale
temporaries it may remove and those it must leave, the mode it gives, the signal handler it
restores, and the errors it renames (docs: README "Output", pipeline/output.py)."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imagebuild.errors import ImageBuildError, InputError, OutputError
from imagebuild.pipeline import output
from imagebuild.pipeline.output import atomic_output, check_output, remove_stale_temporaries


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


# -- check_output --------------------------------------------------------------------------------
def test_a_trailing_slash_names_a_directory_even_when_nothing_exists(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"new/: output names a directory, not a file$"):
        check_output(f"{tmp_path}/new/")
    assert not (tmp_path / "new").exists()


def test_an_existing_directory_and_special_files_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as err:
        check_output(tmp_path)
    assert str(err.value) == f"{tmp_path}: output is a directory; name a file in it"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError) as err2:
        check_output(fifo)
    assert str(err2.value) == (f"{fifo}: output exists and is not a regular file (a device, "
                               f"FIFO or socket); refusing to replace it")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output("/dev/null")


def test_a_new_name_and_an_existing_regular_file_are_accepted(tmp_path: Path) -> None:
    check_output(tmp_path / "new.img")
    check_output(tmp_path / "missing-dir" / "new.img")
    (tmp_path / "old.img").write_bytes(b"x")
    check_output(tmp_path / "old.img")


def test_a_path_through_a_file_is_an_output_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"file/x\.img: Not a directory$"):
        check_output(tmp_path / "file" / "x.img")


# -- stale temporaries -----------------------------------------------------------------------------
def test_only_dead_processes_temporaries_of_this_target_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    target = tmp_path / "x.img"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    names = {
        "stale": f".x.img.{dead}.tmp",
        "live": f".x.img.{live.pid}.tmp",
        "ours": f".x.img.{os.getpid()}.tmp",
        "other target": f".x.img2.{dead}.tmp",
        "prefix of the name": f".x.{dead}.tmp",
        "not a pid": f".x.img.{dead}x.tmp",
        "not ascii digits": ".x.img.\u0661\u0662\u0663.tmp",
        "no .tmp": f".x.img.{dead}.tmp~",
        "no dot": f"x.img.{dead}.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    try:
        removed = remove_stale_temporaries(target)
        with pytest.raises(subprocess.TimeoutExpired):  # asked whether it runs, not signalled
            live.wait(timeout=1)
    finally:
        live.kill()
        live.wait()
    assert removed == [tmp_path / names["stale"]]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(v for k, v in names.items() if k != "stale")


def test_every_skipped_name_is_passed_over_not_the_end_of_the_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever order the directory lists its names in, each kind of name the scan passes
    over (another shape, our own pid, a live process) is followed by a stale temporary that
    must still go: a scan that stopped at the first skipped name would leave them."""
    target = tmp_path / "x.img"
    dead = [_dead_pid() for _ in range(4)]
    stale = [f".x.img.{pid}.tmp" for pid in dead]
    skipped = ["x.img", f".x.img.{dead[0]}x.tmp", f".x.img.{os.getpid()}.tmp", ".x.img.1.tmp"]
    order = [name for pair in zip(skipped, stale, strict=True) for name in pair]
    for name in order:
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(output.os, "listdir", lambda _: list(order))
    removed = remove_stale_temporaries(target)
    monkeypatch.undo()  # os.listdir is the module's: list the directory for real again
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(skipped)


def test_a_temporary_another_scan_removed_first_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds of one target may scan at once: a stale temporary listed but gone by the
    time it is removed is no error, and is not counted as removed by this scan."""
    target = tmp_path / "x.img"
    gone, there = (f".x.img.{_dead_pid()}.tmp" for _ in range(2))
    (tmp_path / there).write_bytes(b"x")
    monkeypatch.setattr(output.os, "listdir", lambda _: [gone, there])
    removed = remove_stale_temporaries(target)
    monkeypatch.undo()
    assert removed == [tmp_path / there] and list(tmp_path.iterdir()) == []


def test_a_missing_directory_has_no_stale_temporaries(tmp_path: Path) -> None:
    assert remove_stale_temporaries(tmp_path / "missing" / "x.img") == []


def test_a_process_we_may_not_signal_is_alive(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    assert output._pid_alive(12345)
    (tmp_path / ".x.img.12345.tmp").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "x.img") == []
    assert (tmp_path / ".x.img.12345.tmp").exists()


def test_atomic_output_removes_stale_temporaries_first(tmp_path: Path) -> None:
    stale = tmp_path / f".x.img.{_dead_pid()}.tmp"
    stale.write_bytes(b"left by SIGKILL")
    with atomic_output(tmp_path / "x.img") as tmp:
        assert not stale.exists()
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.img"]


# -- the temporary, the mode, fsync, the signal handler ------------------------------------------
def test_the_temporary_is_dot_name_pid_tmp_beside_the_target(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "sub" / "x.img") as tmp:
        assert tmp == tmp_path / "sub" / f".x.img.{os.getpid()}.tmp"
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub" / "x.img").read_bytes() == b"x"


def test_every_missing_parent_of_the_target_is_made(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "x.img"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.img"]


def test_an_uncreatable_parent_is_an_output_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    target = tmp_path / "dangling" / "x.img"
    with pytest.raises(OutputError, match=r"/dangling: File exists$"), atomic_output(target):
        raise AssertionError("the body must not run")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_a_new_file_gets_0666_less_the_umask_and_the_umask_is_kept(tmp_path: Path,
                                                                  umask: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "x.img") as tmp:
            tmp.write_bytes(b"x")
            tmp.chmod(0o600)  # whatever the writer left, the rename gives the promised mode
        assert os.umask(umask) == umask
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.img") == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o604, 0o640, 0o755, 0o400])
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "x.img"
    target.write_bytes(b"old")
    target.chmod(mode)
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert _mode(target) == mode and target.read_bytes() == b"new"


@pytest.mark.parametrize("sync", [False, True])
def test_fsync_only_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                               sync: bool) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    with atomic_output(tmp_path / "x.img", sync=sync) as tmp:
        tmp.write_bytes(b"x")
    assert len(synced) == int(sync)


def test_the_previous_sigterm_handler_is_restored(tmp_path: Path) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with atomic_output(tmp_path / "x.img") as tmp:
            assert signal.getsignal(signal.SIGTERM) is not mine
            tmp.write_bytes(b"x")
        assert signal.getsignal(signal.SIGTERM) is mine
        with pytest.raises(RuntimeError), atomic_output(tmp_path / "y.img"):
            raise RuntimeError
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_the_handler_is_left_alone(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    failures: list[BaseException] = []

    def body() -> None:
        try:
            with atomic_output(tmp_path / "x.img") as tmp:
                tmp.write_bytes(b"x")
        except BaseException as err:  # handed to the main thread
            failures.append(err)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert failures == [] and (tmp_path / "x.img").read_bytes() == b"x"
    assert signal.getsignal(signal.SIGTERM) is before


# -- errors: renamed to the target, or passed on as they are -----------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                                  errno.EIO])
def test_nameless_write_errors_become_output_errors_naming_the_target(tmp_path: Path,
                                                                     code: int) -> None:
    target = tmp_path / "x.img"
    with pytest.raises(OutputError) as err, atomic_output(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(code, os.strerror(code))
    assert str(err.value) == f"{target}: {os.strerror(code)}"
    assert list(tmp_path.iterdir()) == []


def test_an_error_naming_the_temporary_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "x.img"
    with pytest.raises(OutputError) as err, atomic_output(target) as tmp:
        raise OSError(errno.EPERM, "Operation not permitted", str(tmp))
    assert str(err.value) == f"{target}: Operation not permitted"


def test_other_os_errors_pass_unchanged(tmp_path: Path) -> None:
    other = tmp_path / "input.bin"
    with pytest.raises(OSError) as err, atomic_output(tmp_path / "x.img"):
        raise OSError(errno.ENOSPC, "No space left on device", str(other))
    assert type(err.value) is OSError and err.value.filename == str(other)
    with pytest.raises(OSError) as err2, atomic_output(tmp_path / "x.img"):
        raise OSError(errno.EACCES, "Permission denied")
    assert not isinstance(err2.value, ImageBuildError) and err2.value.errno == errno.EACCES
    assert list(tmp_path.iterdir()) == []


def test_project_errors_keep_their_type_and_name_the_target(tmp_path: Path) -> None:
    target = tmp_path / "x.img"
    with pytest.raises(InputError) as err, atomic_output(target) as tmp:
        raise InputError(f"{tmp}: bad")
    assert type(err.value) is InputError and str(err.value) == f"{target}: bad"
    with pytest.raises(ImageBuildError) as err2, atomic_output(target):
        raise InputError("root: bad")
    assert type(err2.value) is InputError and str(err2.value) == "root: bad"


def test_a_newline_in_the_target_is_quoted_in_messages(tmp_path: Path) -> None:
    target = tmp_path / "a\nb.img"
    with pytest.raises(OutputError) as err, atomic_output(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(err.value) and repr(str(target)) in str(err.value)


def test_no_file_descriptor_is_left_open(tmp_path: Path) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for sync in (False, True):
        with atomic_output(tmp_path / "x.img", sync=sync) as tmp:
            tmp.write_bytes(b"x")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_temporary_that_cannot_be_removed_does_not_hide_the_error(tmp_path: Path) -> None:
    # unlink(2) refuses a directory (EISDIR): the body's own exception is the one raised
    with pytest.raises(RuntimeError, match=r"^the body's$"), \
            atomic_output(tmp_path / "x.img") as tmp:
        tmp.mkdir()
        raise RuntimeError("the body's")
    assert not (tmp_path / "x.img").exists()


def test_other_exceptions_naming_the_temporary_pass_unchanged(tmp_path: Path) -> None:
    # only the project's errors are renamed: anything else is a bug, kept as raised
    raised = []
    with pytest.raises(ValueError) as err, atomic_output(tmp_path / "x.img") as tmp:
        raised.append(ValueError(f"{tmp}: bad"))
        raise raised[0]
    assert err.value is raised[0] and str(err.value).startswith(str(tmp))
