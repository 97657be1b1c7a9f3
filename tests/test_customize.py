"""Overlays: a changed plan9.ini costs a few clusters over the shared base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.errors import InputError
from imagebuild.pipeline.customize import (
    edit_files,
    set_cmdline_key,
    set_config_key,
    set_ini_key,
)

KiB = 1024


def test_set_ini_key_replaces_or_appends() -> None:
    text = "bootfile=9pc64\nconsole=0\n"
    assert set_ini_key(text, "console", "1") == "bootfile=9pc64\nconsole=1\n"
    assert set_ini_key("bootfile=9pc64\n", "*acpi", "1") == "bootfile=9pc64\n*acpi=1\n"


def test_set_config_key_in_its_section() -> None:
    text = "[pi3]\nkernel=9pi2\n[all]\ngpu_mem=16\n"
    assert set_config_key(text, "pi3", "core_freq", "400") == (
        "[pi3]\nkernel=9pi2\ncore_freq=400\n[all]\ngpu_mem=16\n")
    assert set_config_key(text, "all", "gpu_mem", "64") == "[pi3]\nkernel=9pi2\n[all]\ngpu_mem=64\n"
    assert set_config_key(text, "pi4", "kernel", "9pi4").endswith("[pi4]\nkernel=9pi4\n")


def test_set_cmdline_key() -> None:
    assert set_cmdline_key("console=0\n", "console", "1") == "console=1\n"
    assert set_cmdline_key("console=0\n", "user", "glenda") == "console=0 user=glenda\n"


def test_edit_files_rejects_what_the_partition_lacks() -> None:
    files = [("plan9.ini", b"bootfile=9pc64\n")]
    with pytest.raises(InputError, match=r"no config\.txt"):
        edit_files(files, ["config.all.gpu_mem=1"], [])
    with pytest.raises(InputError, match=r"expected plan9\.KEY"):
        edit_files(files, ["grub.x=1"], [])


def mtype_9fat(image: Path, name: str, tmp_path: Path) -> bytes:
    """A file of amd64's 9fat as qemu-img convert, sfdisk, the Plan 9 table and mtype see it."""
    from tests.conftest import tool_env
    from tests.test_build import as_raw, boot_partition, extract

    raw = as_raw(image, tmp_path)
    fat = extract(raw, *boot_partition("amd64.qcow2", raw), tmp_path / f"{image.stem}.fat")
    return subprocess.run(["mtype", "-i", str(fat), f"::{name}"], capture_output=True,
                          check=True, env=tool_env()).stdout


def test_customize_overlay_is_small_and_reads_through(
    built: dict[str, Path], tmp_path: Path, sde: int
) -> None:
    from imagebuild.pipeline.customize import customize
    from imagebuild.readback import cat

    base = built["amd64.qcow2"]
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"hello\n")
    overlay = tmp_path / "custom.qcow2"
    customize(base, overlay, sets=["plan9.console=1", "plan9.*acpi=1"], files=[])
    assert cat(overlay, "9fat:plan9.ini") == b"bootfile=9pc64\nconsole=1\n*acpi=1\n"
    assert cat(overlay, "9fat:9pc64") == cat(base, "9fat:9pc64")
    # and as qemu-img (through the backing file) and mtools read it
    assert mtype_9fat(overlay, "plan9.ini", tmp_path) == b"bootfile=9pc64\nconsole=1\n*acpi=1\n"
    assert mtype_9fat(overlay, "9pc64", tmp_path) == mtype_9fat(base, "9pc64", tmp_path)
    # header, refcount table and block, L1, one L2, and the few data clusters that change
    assert overlay.stat().st_size < 512 * KiB

    with_file = tmp_path / "with-file.qcow2"
    customize(base, with_file, sets=[], files=[f"extra.txt={extra}"])
    assert cat(with_file, "9fat:extra.txt") == b"hello\n"
    assert mtype_9fat(with_file, "extra.txt", tmp_path) == b"hello\n"
    assert cat(with_file, "9fat:plan9.ini") == cat(base, "9fat:plan9.ini")
    chain = json.loads(subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(overlay)],
        check=True, capture_output=True, text=True).stdout)
    assert [Path(i["filename"]).name for i in chain] == [overlay.name, base.name]
    subprocess.run(["qemu-img", "check", str(overlay)], check=True, capture_output=True)
    # flattening through qemu-img and through us gives the same disk
    flat = tmp_path / "flat.qcow2"
    subprocess.run([sys.executable, "-m", "imagebuild", "qcow2", "convert", str(overlay),
                    str(flat)], check=True, cwd=Path(__file__).resolve().parent.parent)
    subprocess.run(["qemu-img", "compare", str(overlay), str(flat)], check=True,
                   capture_output=True)
