"""doit: up-to-date skip, selective rebuild, parallel builds, clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["amd64.qcow2", "zynq.img", "pi.img"]


@pytest.fixture
def env(root: Path, tmp_path: Path) -> dict[str, str]:
    my_root = tmp_path / "root"
    shutil.copytree(root, my_root)
    return dict(os.environ, IMAGEBUILD_OUT=str(tmp_path / "out"), IMAGEBUILD_ROOT=str(my_root),
                SOURCE_DATE_EPOCH="1700000000")


def doit(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ran(output: str) -> set[str]:
    """doit prints '.  TASK' for a task it runs and '-- TASK' for one up to date."""
    return {line.split()[1] for line in output.splitlines() if line.startswith(".  ")}


def skipped(output: str) -> set[str]:
    return {line.split()[1] for line in output.splitlines() if line.startswith("-- ")}


def test_list_shows_each_target_with_a_doc(env: dict[str, str]) -> None:
    out = doit(env, "list")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"386.iso", "amd64.iso", "amd64.qcow2", "arm64.qcow2",
                          "honeycomb.img", "pi.img", "pi3.img", "reform.img", "zynq.img"}
    assert "9front.amd64.qcow2" in lines["amd64.qcow2"]


def test_second_run_does_nothing_and_changes_rebuild_only_affected(env: dict[str, str]) -> None:
    out = Path(env["IMAGEBUILD_OUT"])
    assert ran(doit(env, *TARGETS)) == set(TARGETS)
    mtimes = {t: (out / f"9front.{t}").stat().st_mtime_ns for t in TARGETS}
    assert skipped(doit(env, *TARGETS)) == set(TARGETS)
    assert {t: (out / f"9front.{t}").stat().st_mtime_ns for t in TARGETS} == mtimes

    kernel = Path(env["IMAGEBUILD_ROOT"]) / "amd64/9pc64"
    kernel.write_bytes(kernel.read_bytes() + b"new")
    second = doit(env, *TARGETS)
    assert ran(second) == {"amd64.qcow2"} and skipped(second) == {"zynq.img", "pi.img"}

    # a plan9.ini variable touches the targets that render plan9.ini, not the Pi
    third = doit(env, "set=plan9.console=1", *TARGETS)
    assert ran(third) == {"amd64.qcow2", "zynq.img"} and skipped(third) == {"pi.img"}

    # a file of the fs tree: every image carries it; an amd64 binary: only amd64's fs
    (Path(env["IMAGEBUILD_ROOT"]) / "lib/words").write_text("changed\n")
    assert ran(doit(env, "set=plan9.console=1", *TARGETS)) == set(TARGETS)
    (Path(env["IMAGEBUILD_ROOT"]) / "amd64/bin/cat").write_bytes(b"new cat")
    assert ran(doit(env, "set=plan9.console=1", *TARGETS)) == {"amd64.qcow2"}


def test_parallel_build_and_clean(env: dict[str, str]) -> None:
    out = Path(env["IMAGEBUILD_OUT"])
    assert ran(doit(env, "-n", "2", *TARGETS)) == set(TARGETS)
    for t in TARGETS:
        assert (out / f"9front.{t}").exists()
    doit(env, "clean", "zynq.img")
    assert not (out / "9front.zynq.img").exists()
    assert (out / "9front.amd64.qcow2").exists()
    assert ran(doit(env, *TARGETS)) == {"zynq.img"}


def doit_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_a_tree_without_one_targets_binaries_only_fails_that_target(env: dict[str, str]) -> None:
    # 9.10: the protos of targets not asked for are never read
    shutil.rmtree(Path(env["IMAGEBUILD_ROOT"]) / "arm64/bin")
    assert "arm64.qcow2" in doit(env, "list")
    assert ran(doit(env, "amd64.qcow2")) == {"amd64.qcow2"}
    doit(env, "clean")
    # the missing binaries are left out with a warning, as disk/mkfs does (--strict refuses)
    built = doit_status(env, "arm64.qcow2")
    assert built.returncode == 0 and "Traceback" not in built.stdout + built.stderr
    assert "arm64/bin" in built.stderr + built.stdout and "warning:" in built.stderr


def test_a_root_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    env = dict(env, IMAGEBUILD_ROOT=str(tmp_path / "nonexistent"))
    assert "amd64.qcow2" in doit(env, "list")
    doit(env, "clean")
    failed = doit_status(env, "zynq.img")
    assert failed.returncode != 0 and "Traceback" not in failed.stdout + failed.stderr
    assert "not a directory" in failed.stderr + failed.stdout
