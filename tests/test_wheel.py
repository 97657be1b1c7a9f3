"""The package as a user installs it: a wheel in a fresh venv, run outside the checkout."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["386.iso", "amd64.iso", "amd64.qcow2", "arm64.qcow2", "honeycomb.img", "pi.img",
           "pi3.img", "reform.img", "zynq.img"]


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _requirements(name: str, seen: set[str]) -> None:
    """`name` and everything it requires (markers without extras), recursively."""
    from packaging.requirements import Requirement

    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _requirements(req.name, seen)


def _copy_dependencies(site: Path) -> None:
    """The runtime dependencies, copied from this venv (the test runs offline)."""
    names: set[str] = set()
    for text in metadata.requires("imagebuild") or []:
        from packaging.requirements import Requirement

        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _requirements(req.name, names)
    here = Path(sysconfig.get_paths()["purelib"])
    for name in names:
        for file in metadata.distribution(name).files or []:
            src = Path(str(file.locate()))
            if not src.is_file() or not src.resolve().is_relative_to(here.resolve()):
                continue
            dest = site / src.resolve().relative_to(here.resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


@pytest.mark.slow
def test_wheel_lists_and_builds_every_target_outside_the_checkout(tmp_path: Path) -> None:
    # build the wheel from a copy of the sources (no build/ or egg-info in the checkout)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "imagebuild", src / "imagebuild",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", dist, src, cwd=tmp_path)
    (wheel,) = dist.glob("imagebuild-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).strip())
    _copy_dependencies(site)
    _run(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IMAGEBUILD_ROOT")}
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    imagebuild = venv / "bin" / "imagebuild"
    listed = _run(imagebuild, "list", cwd=elsewhere, env=env)
    assert [line.split()[0] for line in listed.splitlines()] == TARGETS
    where = _run(python, "-c", "import imagebuild; print(imagebuild.__file__)", cwd=elsewhere,
                 env=env)
    assert Path(where.strip()).is_relative_to(venv), where  # not the checkout
    # compiled at install time (pip's default), so PYTHONDONTWRITEBYTECODE costs nothing
    package = Path(where.strip()).parent
    assert list((package / "pipeline" / "__pycache__").glob("build.*.pyc"))

    _run(imagebuild, "demo-root", "root", cwd=elsewhere, env=env)
    _run(imagebuild, "build", "amd64.qcow2", "--root", "root", "-o", "a.qcow2", "--plain",
         cwd=elsewhere, env=env)
    # the same bytes as the checkout's build
    _run(sys.executable, "-m", "imagebuild", "build", "amd64.qcow2", "--root",
         elsewhere / "root", "-o", tmp_path / "b.qcow2", "-q", cwd=REPO,
         env=dict(env, PYTHONPATH=str(REPO)))
    digests = {hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (elsewhere / "a.qcow2", tmp_path / "b.qcow2")}
    assert len(digests) == 1
