"""The ISO targets end to end: plan9.ini, bootfile=, the hybrid tail, readers, booting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.pipeline.demo import (
    DEMO_9BOOTHYB_MESSAGE,
    DEMO_9BOOTISO_MESSAGE,
    DEMO_PBS_MESSAGE,
)
from tests.conftest import SOURCE_DATE_EPOCH, tool_env
from tests.qemu_vga import boot_until, needs_qemu
from tests.test_fat_format import LABEL_MESSAGE, fsck


def _build(root: Path, out: Path, *sets: str, target: str = "amd64.iso") -> Path:
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.recipe.load import load_recipe

    return build(load_recipe(target), BuildOptions(root=root, output=out, sets=sets,
                                                   timestamp=SOURCE_DATE_EPOCH)).output


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuild", *args],
                          capture_output=True, text=True)


def test_plan9ini_is_the_trees_with_bootfile_and_sets(root: Path, tmp_path: Path) -> None:
    out = _build(root, tmp_path / "a.iso", "plan9.console=0", "plan9.cdboot=no")
    text = _cli("cat", str(out), "iso:/cfg/plan9.ini").stdout
    tree = (root / "sys/lib/dist/cfg/plan9.ini").read_text()
    assert "bootfile=9pc64" in tree and "bootfile=9pc64" not in text
    assert text.splitlines()[-3:] == ["bootfile=/amd64/9pc64", "console=0", "cdboot=no"]
    kernel = subprocess.run([sys.executable, "-m", "imagebuild", "cat", str(out),
                             "iso:/amd64/9pc64"], capture_output=True, check=True).stdout
    assert kernel == (root / "amd64/9pc64").read_bytes()


def test_bootfile_not_on_the_image_is_refused(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.iso"
    result = _cli("build", "amd64.iso", "--root", str(root), "-o", str(out),
                  "--set", "plan9.bootfile=/amd64/9pcnope", "-q")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not a file on the image" in (
        result.stderr)
    assert not out.exists()


def test_missing_9bootiso_is_one_line_and_no_output(root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "root"
    shutil.copytree(root, broken, symlinks=True)
    (broken / "386/9bootiso").unlink()
    out = tmp_path / "c.iso"
    result = _cli("build", "amd64.iso", "--root", str(broken), "-o", str(out), "-q")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "9bootiso" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".c.iso*"))


def test_hybrid_tail_reads_with_sfdisk_fsck_fat_and_mtools(root: Path, tmp_path: Path) -> None:
    out = _build(root, tmp_path / "h.iso")
    dump = subprocess.run(["sfdisk", "-d", str(out)], capture_output=True, text=True,
                          check=True).stdout
    line = next(ln for ln in dump.splitlines() if ln.startswith(str(out) + "1"))
    assert "type=ef" in line and "bootable" in line
    start = int(line.split("start=")[1].split(",")[0])
    size = int(line.split("size=")[1].split(",")[0])
    esp = tmp_path / "esp.img"
    with open(out, "rb") as f:
        f.seek(start * 512)
        esp.write_bytes(f.read(size * 512))
    assert fsck(esp) == LABEL_MESSAGE  # what fsck.fat says of every FAT disk/format writes
    listing = subprocess.run(["mdir", "-i", str(esp), "::/efi/boot"], capture_output=True,
                             text=True, check=True, env=tool_env()).stdout
    assert "BOOTX64  EFI" in listing and "BOOTIA32 EFI" in listing
    assert (root / "386/9boothyb").read_bytes() == subprocess.run(
        ["mtype", "-i", str(esp), "::/9bootfat"], capture_output=True, check=True,
        env=tool_env()).stdout
    result = _cli("ls", str(out), "esp:/efi/boot")
    assert "bootx64.efi" in result.stdout.lower()
    inspect = _cli("inspect", str(out), "--plain").stdout
    assert "/386/9bootiso" in inspect and "/386/efiboot.fat" in inspect and "ESP" in inspect


def test_iso_without_9boothyb_has_no_tail(root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "root"
    shutil.copytree(root, plain, symlinks=True)
    (plain / "386/9boothyb").unlink()
    proto = plain / "sys/lib/sysconfig/proto/9bootproto"
    proto.write_text(proto.read_text().replace("\t9boothyb\t664\n", ""))
    out = _build(plain, tmp_path / "p.iso")
    assert out.read_bytes()[510:512] != b"\x55\xaa"


@needs_qemu
def test_iso_boots_as_a_cd_through_el_torito(root: Path, tmp_path: Path) -> None:
    out = _build(root, tmp_path / "cd.iso")
    text = boot_until(out, "cdrom", DEMO_9BOOTISO_MESSAGE, tmp_path / "vga.bin")
    assert DEMO_9BOOTISO_MESSAGE in text, text


@needs_qemu
def test_iso_boots_as_a_disk_through_mbr_pbs_and_the_esps_9bootfat(
        root: Path, tmp_path: Path) -> None:
    out = _build(root, tmp_path / "usb.iso")
    text = boot_until(out, "raw", DEMO_9BOOTHYB_MESSAGE, tmp_path / "vga.bin")
    assert DEMO_PBS_MESSAGE in text and DEMO_9BOOTHYB_MESSAGE in text, text


@pytest.mark.parametrize("target", ["386.iso"])
def test_386_iso_names_its_kernel(root: Path, tmp_path: Path, target: str) -> None:
    out = _build(root, tmp_path / "x.iso", target=target)
    assert "bootfile=/386/9pc\n" in _cli("cat", str(out), "iso:/cfg/plan9.ini").stdout


def _copy_with(root: Path, tmp_path: Path, name: str, size: int = 5) -> Path:
    tree = tmp_path / "root"
    shutil.copytree(root, tree, symlinks=True)
    with open(tree / "rc/lib" / name, "wb") as f:  # distproto's `rc +` copies it
        f.truncate(size)
    return tree


@pytest.mark.parametrize("name, size, message", [
    ("tab\there", 5, "control characters"),
    ("x" * 220, 5, "at most 255"),
    ("huge", (1 << 32) + 1, "32 bits"),
])
def test_a_tree_mk9660_cannot_store_is_one_line_and_no_output(
        root: Path, tmp_path: Path, name: str, size: int, message: str) -> None:
    tree = _copy_with(root, tmp_path, name, size)
    out = tmp_path / "bad.iso"
    result = _cli("build", "amd64.iso", "--root", str(tree), "-o", str(out), "-q")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".bad.iso*"))


@pytest.mark.parametrize("target", ["386.iso", "amd64.iso"])
def test_build_without_q_prints_the_iso_layout(root: Path, tmp_path: Path, target: str) -> None:
    """Without -q a build reads its image back and prints it: for an ISO target too, whose
    plan has no fs partition to read."""
    out = tmp_path / target
    result = _cli("build", target, "--root", str(root), "-o", str(out), "--plain")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "ISO 9660 volume descriptors:" in result.stdout
    assert "El Torito boot catalog" in result.stdout
