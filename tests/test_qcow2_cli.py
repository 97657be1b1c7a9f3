"""`imagebuild qcow2 ...` against qemu-img's own output for the same images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from qcow2_helpers import (
    MiB,
    assert_qemu_clean,
    make_raw,
    needs_qemu_img,
    patterned,
    qemu_compare,
    qemu_img,
)

from imagebuild.cli import main
from imagebuild.container.qcow2.image import Qcow2Image

pytestmark = needs_qemu_img


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["qcow2", *args])
    return code, capsys.readouterr().out


def test_qcow2_cli_create_info_check_map(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.qcow2"
    code, _ = run(capsys, "create", str(path), "10M", "--cluster-size", "4K")
    assert code == 0
    with Qcow2Image.open(path, writable=True) as image:
        image.pwrite(patterned(100_000, 1), MiB)
    code, out = run(capsys, "info", "--output", "json", str(path))
    assert code == 0
    ours, theirs = json.loads(out), json.loads(qemu_img("info", "--output=json", path).stdout)
    # actual-size is st_blocks, which delayed allocation may change between two stats
    assert ours.pop("actual-size") > 0 and theirs.pop("actual-size") > 0
    assert ours == theirs
    code, out = run(capsys, "info", str(path))
    assert "virtual size: 10 MiB (10485760 bytes)" in out and "cluster_size: 4096" in out
    code, out = run(capsys, "check", "--output", "json", str(path))
    assert code == 0
    ours = json.loads(out)
    theirs = json.loads(qemu_img("check", "--output=json", path).stdout)
    assert ours == theirs
    code, out = run(capsys, "check", str(path))
    assert out == qemu_img("check", path).stdout
    code, out = run(capsys, "map", "--output", "json", str(path))
    assert out == qemu_img("map", "--output=json", path).stdout
    code, out = run(capsys, "map", str(path))
    assert out == qemu_img("map", path).stdout


def test_qcow2_cli_create_overlay_takes_backing_size(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    make_raw(tmp_path / "base.img", 3 * MiB, [(0, b"base")])
    overlay = tmp_path / "o.qcow2"
    code, _ = run(capsys, "create", str(overlay), "--backing", "base.img",
                  "--backing-format", "raw")
    assert code == 0
    found = json.loads(qemu_img("info", "--output=json", overlay).stdout)
    assert found["virtual-size"] == 3 * MiB
    assert found["backing-filename"] == "base.img"
    assert found["backing-filename-format"] == "raw"
    code, out = run(capsys, "map", "--output", "json", str(overlay))
    assert json.loads(out) == json.loads(qemu_img("map", "--output=json", overlay).stdout)


def test_qcow2_cli_convert_round_trip(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    raw = make_raw(tmp_path / "in.raw", 8 * MiB,
                   [(0, patterned(MiB, 1)), (5 * MiB, patterned(300_000, 2))])
    out = tmp_path / "out.qcow2"
    assert run(capsys, "convert", "-c", "-O", "qcow2", str(raw), str(out))[0] == 0
    assert_qemu_clean(out)
    qemu_compare(out, raw)
    back = tmp_path / "back.raw"
    assert run(capsys, "convert", "-O", "raw", str(out), str(back))[0] == 0
    assert back.read_bytes() == raw.read_bytes()
    assert os.stat(back).st_blocks * 512 < 3 * MiB  # sparse
    plain = tmp_path / "plain.qcow2"
    assert run(capsys, "convert", "--cluster-size", "512", str(raw), str(plain))[0] == 0
    assert json.loads(qemu_img("info", "--output=json", plain).stdout)["cluster-size"] == 512
    qemu_compare(plain, raw)


def test_qcow2_cli_check_exit_codes_and_repair(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "l.qcow2"
    with Qcow2Image.create(path, 4 * MiB) as image:
        image.pwrite(b"data", 0)
        image.refcounts.allocate(1)  # a leaked cluster
    code, out = run(capsys, "check", str(path))
    assert code == 3 == qemu_img("check", path, check=False).returncode
    assert "1 leaked clusters were found on the image." in out
    code, out = run(capsys, "check", "--repair", str(path))
    assert code == 0 and "1 leaked clusters" in out
    assert_qemu_clean(path)


def test_qcow2_cli_bad_size_is_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qcow2", "create", str(tmp_path / "x.qcow2"), "12Q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "12Q" in err
    assert main(["qcow2", "create", str(tmp_path / "y.qcow2"), "1M", "--cluster-size",
                 "1000"]) == 1
    assert "cluster size 1000" in capsys.readouterr().err
