"""Bad inputs and hostile outputs: each one line on stderr naming file or key, exit 1
(2 for usage), no hang, no traceback, nothing written or replaced that was not asked for."""

from __future__ import annotations

import os
import resource
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error, copy_root

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def imagebuild(*args: str | bytes | Path, timeout: float = 120, env: dict[str, str] | None = None,
               **kw: object) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "imagebuild", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


# -- 9.2, 9.22: where the image goes ---------------------------------------------------------


def test_output_fifo_is_refused_and_left_alone(tmp_path: Path, root: Path) -> None:  # 9.2
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_line_error(imagebuild("build", "zynq.img", "--root", root, "-o", fifo),
                          str(fifo), "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_socket_is_refused(tmp_path: Path, root: Path) -> None:  # 9.2
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert_one_line_error(imagebuild("customize", "x.qcow2", "-o", path), str(path))
        assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_output_with_a_slash_is_a_usage_error(tmp_path: Path, root: Path) -> None:  # 9.22
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", f"{tmp_path}/newdir/")
    assert proc.returncode == 2 and "directory" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_directory_is_refused_before_building(tmp_path: Path, root: Path) -> None:
    # 9.22: refused at once; a 250 MiB file in the tree would take seconds to write
    r = copy_root(root, tmp_path / "root")
    (r / "rc/bin/big").write_bytes(b"\1" * (64 * MiB))
    target = tmp_path / "dir"
    target.mkdir()
    steps: list[str] = []
    from imagebuild.errors import OutputError
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.recipe.load import load_recipe

    with pytest.raises(OutputError, match="is a directory"):
        build(load_recipe("zynq.img"), BuildOptions(root=r, output=target),
              lambda step, done, total: steps.append(step))
    assert steps == [] and list(target.iterdir()) == []


def test_missing_template_dir_is_an_error(tmp_path: Path, root: Path) -> None:  # 9.22
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", tmp_path / "x.img",
                      "--template-dir", tmp_path / "nosuch")
    assert_one_line_error(proc, "--template-dir", "nosuch")


# -- 9.19, 9.20: modes and stale temporaries -------------------------------------------------


def test_new_output_follows_umask_and_replaced_keeps_mode(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "x.img"
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q",
                      preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    out.chmod(0o604)
    assert imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o604
    overlay = tmp_path / "o.qcow2"
    base = tmp_path / "b.qcow2"
    assert imagebuild("build", "amd64.qcow2", "--root", root, "-o", base, "-q",
                      "--no-fs").returncode == 0
    proc = imagebuild("customize", base, "-o", overlay, "-q", "--set", "plan9.console=1",
                      preexec_fn=lambda: os.umask(0o002))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o664


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_builds_are_removed(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "x.img"
    stale = tmp_path / f".x.img.{_dead_pid()}.tmp"
    stale.write_bytes(b"left by SIGKILL")
    live = tmp_path / f".x.img.{os.getpid()}.tmp"  # a build still running: not ours to remove
    live.write_bytes(b"busy")
    other = tmp_path / ".y.img.1.tmp"
    other.write_bytes(b"another target's")
    assert imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q").returncode == 0
    assert not stale.exists() and live.exists() and other.exists()


def test_sigkill_then_rebuild_leaves_no_temporary(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "x.img"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "imagebuild", "build", "zynq.img", "--root",
                             str(root), "-o", str(out), "-q"], env=env)
    for _ in range(400):  # until the temporary exists
        if list(tmp_path.glob(".x.img.*.tmp")):
            break
        try:
            proc.wait(0.01)
            break
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q").returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["x.img"]


# -- 9.21: messages name the file the user gave ----------------------------------------------


def test_file_too_large_names_the_output_not_the_temporary(tmp_path: Path, root: Path) -> None:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    out = tmp_path / "x.img"
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q", preexec_fn=limit)
    assert_one_line_error(proc, str(out), "File too large")
    assert ".tmp" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_newline_in_a_file_name_stays_on_one_line(tmp_path: Path, root: Path) -> None:
    proc = imagebuild("build", "zynq.img", "--root", tmp_path / "a\nb", "-o", tmp_path / "x")
    assert_one_line_error(proc, "a\\nb")


def test_prep_problem_names_recipe_and_key(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "zynq.img"\n[layout]\nprep = ["9fat", "9fat"]\n')
    assert_one_line_error(imagebuild("build", recipe, "--root", root, "-o", tmp_path / "x"),
                          str(recipe), "layout.prep")


def test_fat_problem_names_recipe_and_key(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "zynq.img"\n[fat]\npartition = "nvram"\n')
    assert_one_line_error(imagebuild("build", recipe, "--root", root, "-o", tmp_path / "x"),
                          str(recipe), "[fat]")


# -- 9.12, 9.13: inputs -------------------------------------------------------------------------


def test_fifo_as_file_or_kernel_is_refused_without_blocking(tmp_path: Path, root: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", tmp_path / "x",
                      "--file", f"k={fifo}", timeout=60)
    assert_one_line_error(proc, str(fifo), "not a regular file")
    r = copy_root(root, tmp_path / "root")
    (r / "arm/9zynq").unlink()
    os.mkfifo(r / "arm/9zynq")
    proc = imagebuild("build", "zynq.img", "--root", r, "-o", tmp_path / "x", timeout=60)
    assert_one_line_error(proc, "9zynq", "not a regular file")


def test_dev_zero_as_file_is_refused(tmp_path: Path, root: Path) -> None:
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", tmp_path / "x",
                      "--file", "z=/dev/zero", timeout=60)
    assert_one_line_error(proc, "/dev/zero")


def test_non_utf8_set_value_and_file_name(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "x"
    proc = imagebuild(b"build", b"zynq.img", b"--root", bytes(root), b"-o", bytes(out),
                      b"--set", b"plan9.x=\xff")
    assert_one_line_error(proc, "--set", "UTF-8")
    (tmp_path / "f").write_text("x")
    proc = imagebuild(b"build", b"zynq.img", b"--root", bytes(root), b"-o", bytes(out),
                      b"--file", b"\xff=" + bytes(tmp_path / "f"))
    assert_one_line_error(proc, "--file", "UTF-8")
    assert not out.exists()


@pytest.mark.parametrize("value", ["²", "١٢٣", "12a", "-1"])
def test_source_date_epoch_only_ascii_digits(tmp_path: Path, root: Path, value: str) -> None:
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", tmp_path / "x",
                      env={"SOURCE_DATE_EPOCH": value})
    assert_one_line_error(proc, "SOURCE_DATE_EPOCH")


def test_huge_mb_with_raw_is_a_recipe_error(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "zynq.img"\nmb = 9223372036854775807\n')
    proc = imagebuild("build", recipe, "--root", root, "-o", tmp_path / "x", "--format", "raw")
    assert_one_line_error(proc, str(recipe), "'mb'")


def test_deep_fdisk_expression_is_one_line(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "mine.toml"
    expr = "(" * 3000 + "100M" + ")" * 3000
    recipe.write_text(f'extends = "reform.img"\n[layout]\nfdisk = ["a p1 4M {expr}", "w"]\n')
    proc = imagebuild("build", recipe, "--root", root, "-o", tmp_path / "x")
    assert_one_line_error(proc, str(recipe), "layout.fdisk")


# -- 9.15: a closed pipe ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["ls", "{out}", "fs:/"], ["inspect", "--json", "{out}"],
                                  ["cat", "{out}", "fs:/amd64/bin/big"]])
def test_closed_pipe_ends_output_quietly(built: dict[str, Path], args: list[str]) -> None:
    out = built["amd64.qcow2"]
    cmd = [sys.executable, "-m", "imagebuild", *(a.format(out=out) for a in args)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as `| head` can be
    try:
        proc = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")
