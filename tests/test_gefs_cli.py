"""`--fs gefs` builds, and ls, cat, inspect, fsck and fsck --repair on gefs images."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.disk.device import BlockDevice, RawFile
from imagebuild.fs.gefs import ream_only
from imagebuild.readback import partitions
from tests.test_cli import assert_one_line_error, imagebuild

TARGETS = ("amd64.qcow2", "zynq.img")


@pytest.fixture(scope="module")
def gefs_images(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gefs-builds")
    images = {}
    for target in TARGETS:
        path = out / target
        proc = imagebuild("build", target, "--fs", "gefs", "--root", root, "-o", path, "-q")
        assert proc.returncode == 0, proc.stderr
        images[target] = path
    return images


@pytest.mark.parametrize("target", TARGETS)
def test_gefs_build_reads_back_and_checks_clean(
    gefs_images: dict[str, Path], root: Path, target: str
) -> None:
    img = gefs_images[target]
    if target.endswith("qcow2"):
        check = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    fsck = imagebuild("fsck", img, "fs")
    assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr
    ls = imagebuild("ls", img, "fs:/rc/bin")
    assert ls.returncode == 0 and "hello" in ls.stdout
    assert imagebuild("cat", img, "fs:/rc/bin/hello").stdout == (root / "rc/bin/hello").read_text()
    info = imagebuild("inspect", img, "--plain")
    assert "gefs" in info.stdout
    assert_one_line_error(imagebuild("cat", img, "fs:/no/such/file"), "does not exist")


def _misream(image: Path) -> None:
    """Ream the image's fs partition as gefs did before July 2024."""
    with Qcow2Image.open(image, writable=True) as q:
        parts = partitions(BlockDevice(q.data, name=image.name))
        fs = parts["fs"]
        ream_only(fs.pwrite, fs.size, legacy_backlink=True)


def test_fsck_repair_through_an_overlay_and_in_place(
    gefs_images: dict[str, Path], tmp_path: Path
) -> None:
    base = tmp_path / "old.qcow2"
    base.write_bytes(gefs_images["amd64.qcow2"].read_bytes())
    _misream(base)
    bad = imagebuild("fsck", base, "fs")
    assert bad.returncode == 1 and "Kup(0)" in bad.stdout
    assert imagebuild("fsck", base, "fs", "--repair").returncode == 2
    before = base.read_bytes()
    fixed = tmp_path / "fixed.qcow2"
    rep = imagebuild("fsck", base, "fs", "--repair", "-o", fixed)
    assert rep.returncode == 0 and "clean" in rep.stdout, rep.stdout + rep.stderr
    assert base.read_bytes() == before  # the backing file is untouched
    assert imagebuild("fsck", fixed, "fs").returncode == 0
    assert subprocess.run(["qemu-img", "check", str(fixed)], capture_output=True).returncode == 0
    rep = imagebuild("fsck", base, "fs", "--repair", "--in-place")
    assert rep.returncode == 0 and "clean" in rep.stdout, rep.stdout + rep.stderr
    again = imagebuild("fsck", base, "fs", "--repair", "--in-place")
    assert_one_line_error(again, "nothing to repair")


def test_raw_image_repairs_in_place(gefs_images: dict[str, Path], tmp_path: Path) -> None:
    img = tmp_path / "z.img"
    img.write_bytes(gefs_images["zynq.img"].read_bytes())
    with RawFile(img, writable=True) as raw:
        fs = partitions(BlockDevice(raw, name=img.name))["fs"]
        ream_only(fs.pwrite, fs.size, legacy_backlink=True)
    assert imagebuild("fsck", img, "fs").returncode == 1
    assert imagebuild("fsck", img, "fs", "--repair", "--in-place").returncode == 0
    assert imagebuild("fsck", img, "fs").returncode == 0


def test_attach_names_pick_the_dataset_as_gefs_fsattach_does(
    gefs_images: dict[str, Path],
) -> None:
    """fs.c fsattach(): "" attaches main, `adm`/`%adm` the adm dataset that holds /users."""
    img = gefs_images["zynq.img"]
    users = imagebuild("cat", img, "fs:adm:/users")
    assert users.returncode == 0, users.stderr
    assert users.stdout.startswith("-1:adm:adm:glenda\n0:none::\n")
    assert imagebuild("cat", img, "fs:%adm:/users").stdout == users.stdout
    main = imagebuild("ls", img, "fs:main:/")
    assert main.returncode == 0 and main.stdout == imagebuild("ls", img, "fs:/").stdout
    assert "tmp/" in imagebuild("ls", img, "fs:other:/usr/glenda").stdout
    # main's /adm is the installer's directory: no users file there, as on 9front
    assert_one_line_error(imagebuild("cat", img, "fs:/adm/users"), "fs:adm:/users")
    assert_one_line_error(imagebuild("ls", img, "fs:nope:/"), "labels: adm, empty, main, other")
    assert_one_line_error(imagebuild("cat", img, "fs:dump:/x"), "not supported")
