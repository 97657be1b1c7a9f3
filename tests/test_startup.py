"""Start-up: `imagebuild build --no-fs` imports only what it needs (timed in bench/, not here)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# jinja2: our own templates render without it; parted: the libparted cross-check is
# `inspect --verify` and the tests'; rich: only on a terminal; doit: only dodo.py;
# dataclasses (and inspect, ast, dis it imports): records are Record or __slots__ classes;
# the ISO and fs readers: only for images that hold them; the cp437 codec: only for a FAT
# name that is not ASCII.
DENY = ("jinja2", "parted", "_ped", "rich", "doit", "hashlib", "tempfile", "importlib.resources",
        "dataclasses", "inspect", "ast", "dis", "imagebuild.fs.iso9660", "imagebuild.fs.proto",
        "imagebuild.container.qcow2.references", "imagebuild.container.qcow2.metadata",
        "encodings.cp437")


def imported(*args: str | Path) -> set[str]:
    """The modules a command imports (python -X importtime), the command's status checked."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "imagebuild", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def denied(modules: set[str]) -> set[str]:
    return {m for m in modules for d in DENY if m == d or m.startswith(d + ".")}


@pytest.mark.parametrize("target", ["amd64.qcow2", "pi.img"])
def test_build_no_fs_imports_nothing_heavy(root: Path, tmp_path: Path, target: str) -> None:
    modules = imported("build", target, "--root", root, "-o", tmp_path / "x", "--no-fs")
    assert "imagebuild.pipeline.write" in modules  # it did run
    assert denied(modules) == set()


def test_the_build_path_defines_no_named_tuple(root: Path, tmp_path: Path) -> None:
    # typing.NamedTuple compiles each class's code at import: a quarter of a millisecond a
    # record, so the records on this path are imagebuild.util.record.Record classes
    modules = imported("build", "amd64.qcow2", "--root", root, "-o", tmp_path / "x", "--no-fs")
    named_tuples = []
    for name in sorted(m for m in modules if m.startswith("imagebuild")):
        module = importlib.import_module(name)
        named_tuples += [f"{name}.{key}" for key, value in vars(module).items()
                         if isinstance(value, type) and issubclass(value, tuple)
                         and hasattr(value, "_fields") and value.__module__ == name]
    assert named_tuples == []


def test_quiet_build_reads_nothing_back(root: Path, tmp_path: Path) -> None:
    modules = imported("build", "amd64.qcow2", "--root", root, "-o", tmp_path / "x", "--no-fs",
                       "-q")
    assert "imagebuild.pipeline.write" in modules
    assert denied(modules) == set()
    assert "imagebuild.readback" not in modules  # the layout is read back only to print it


def test_list_and_help_stay_light() -> None:
    assert denied(imported("list")) == set()
    assert not {m for m in imported("--help") if m.startswith("imagebuild.pipeline")}


def test_a_template_with_jinja2_features_still_renders(root: Path, tmp_path: Path) -> None:
    templates = tmp_path / "t"
    templates.mkdir()
    (templates / "plan9.ini").write_text("{% for k in plan9 %}{{ k }}\n{% endfor %}")
    modules = imported("build", "amd64.qcow2", "--root", root, "-o", tmp_path / "x", "--no-fs",
                       "--template-dir", templates, "-q")
    assert "jinja2" in modules
