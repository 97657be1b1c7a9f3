"""Shared helpers for the qcow2 tests: qemu-img as the independent reference."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import needs

needs_qemu_img = needs("qemu-img")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def qemu_img(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True,
                          check=check)


def qemu_check(path: Path) -> tuple[int, dict[str, Any], str]:
    """(exit code, JSON report, human report) of `qemu-img check`."""
    js = qemu_img("check", "--output=json", path, check=False)
    human = qemu_img("check", path, check=False)
    report = json.loads(js.stdout) if js.stdout.strip() else {}
    return js.returncode, report, human.stdout + human.stderr


def assert_qemu_clean(path: Path) -> None:
    rc, report, text = qemu_check(path)
    assert rc == 0, text
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, text


def qemu_raw(path: Path, scratch: Path, fmt: str = "qcow2") -> bytes:
    """The guest data of an image as qemu-img convert -O raw reads it."""
    out = scratch / (path.name + ".qemu.raw")
    qemu_img("convert", "-f", fmt, "-O", "raw", path, out)
    return out.read_bytes()


def qemu_compare(a: Path, b: Path, fmt_a: str = "qcow2", fmt_b: str = "raw") -> None:
    result = qemu_img("compare", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def qemu_map(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(qemu_img("map", "--output=json", path).stdout)
    return found


def patterned(size: int, seed: int) -> bytes:
    """Deterministic non-zero-ish bytes (compressible, so -c makes compressed clusters)."""
    unit = bytes((seed + i * 7) % 251 + 1 for i in range(4096))
    return (unit * (size // len(unit) + 1))[:size]


def make_raw(path: Path, size: int, chunks: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks:
            f.seek(offset)
            f.write(data)
    return path
