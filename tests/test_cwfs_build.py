"""Every disk target built with --fs cwfs: qemu-img check, fsck, and every proto entry read back
through the separately written reader (tests/cwfs_helpers.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cwfs_helpers as h
import pytest

from imagebuild.disk.device import BlockDevice
from imagebuild.errors import RecipeError
from imagebuild.pipeline.build import BuildOptions, build, fs_tree
from imagebuild.readback import check_fs, listing, open_image, partitions
from imagebuild.recipe.load import Recipe, list_recipes, load_recipe, with_fs
from tests.conftest import SOURCE_DATE_EPOCH

TARGETS = [n for n in list_recipes() if load_recipe(n).iso is None]  # the disk targets
INSTALLER_MADE = {"/adm", "/adm/users", "/dist", "/usr", "/usr/glenda"}
EXPECTED_DISK = {"amd64.qcow2": "sdC0", "arm64.qcow2": "sdF0", "honeycomb.img": "sdN0",
                 "pi.img": "sdM0", "pi3.img": "sdM0", "reform.img": "sdM0", "zynq.img": "sdM0"}


@contextmanager
def _cwfs_image(image: Path) -> Iterator[h.Image]:
    with open_image(image) as opened:
        parts = partitions(BlockDevice(opened.storage))
        c, w = parts["fscache"], parts["fsworm"]
        yield h.Image(lambda off, n: c.pread(n, off), lambda off, n: w.pread(n, off))


@pytest.mark.parametrize("target", TARGETS)
def test_target_builds_with_cwfs_and_reads_back(target: str, root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(target)
    out = tmp_path / f"{target}.cwfs"
    plan = build(recipe, BuildOptions(root=root, output=out, timestamp=SOURCE_DATE_EPOCH,
                                      fs_type="cwfs"))  # fmt: skip
    assert plan.recipe.prep[-3:] == ("fscache", "fsworm", "other")
    if plan.container == "qcow2":
        subprocess.run(["qemu-img", "check", str(out)], check=True, capture_output=True)
    assert check_fs(out, "fs") == []
    disk = EXPECTED_DISK.get(target, "sdC0")
    with _cwfs_image(out) as img:
        assert f"filsys main c(/dev/{disk}/fscache)(/dev/{disk}/fsworm)\n" in img.config
        _check_entries(img, plan.recipe, root)
    names = {row["name"] for row in listing(out, "fs:/")}
    assert {"adm", "dist", "usr"} <= names


def _check_entries(img: h.Image, recipe: Recipe, root: Path) -> None:
    tree, users = img.tree(), img.users()
    for e in fs_tree(recipe, root):
        got = tree[e.path]
        if e.path in INSTALLER_MADE and got.mtime >= min(e.mtime, SOURCE_DATE_EPOCH):
            continue  # mkfs's uptodate(): what the installer's console made is left alone
        assert got.mode & 0o777 == e.mode & 0o777, e.path
        assert (users[got.uid], users[got.gid]) == (e.uid or "sys", e.gid or "sys"), e.path
        if not e.is_dir:
            assert got.mtime == min(e.mtime, SOURCE_DATE_EPOCH), e.path
            assert img.data(got) == e.source.read_bytes(), e.path


def test_set_fs_disk_names_the_disk_in_the_config(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.qcow2"
    build(load_recipe("amd64.qcow2"), BuildOptions(
        root=root, output=out, timestamp=SOURCE_DATE_EPOCH, fs_type="cwfs",
        sets=["fs.disk=sdF0", "plan9.console=0"]))  # fmt: skip
    with _cwfs_image(out) as img:
        assert "c(/dev/sdF0/fscache)(/dev/sdF0/fsworm)" in img.config


def test_with_fs_rejects_bad_names() -> None:
    recipe = load_recipe("amd64.qcow2")
    with pytest.raises(RecipeError, match="sd"):
        with_fs(recipe, "cwfs", "sdC0)(x")
    with pytest.raises(RecipeError, match="--fs"):
        with_fs(recipe, "zfs")
    assert with_fs(with_fs(recipe, "cwfs"), "hjfs").prep == recipe.prep


def test_attach_names_pick_main_other_and_dump(root: Path, tmp_path: Path) -> None:
    """9p2.c attach: fsstr(aname) names a filsys of the config; "" is main."""
    from tests.test_cli import assert_one_line_error, imagebuild

    out = tmp_path / "z.img"
    proc = imagebuild("build", "zynq.img", "--fs", "cwfs", "--root", root, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert listing(out, "fs:main:/") == listing(out, "fs:/")
    assert [r["name"] for r in listing(out, "fs:other:/usr/glenda")] == ["tmp"]
    assert listing(out, "fs:dump:/") == []  # ream dumps, but only cfsdump() adds /yyyy/mmdd
    assert imagebuild("cat", out, "fs:main:/adm/users").stdout.startswith("-1:adm:adm:glenda")
    assert_one_line_error(imagebuild("ls", out, "fs:adm:/"), "file systems: main, dump, other")
