"""Booting: SeaBIOS -> the MBR boot code -> the active partition's first sector (the pbs).

With the demo root's stand-ins, /386/mbr chain-loads the active partition
like 9front's mbr and /386/pbs prints a message: seeing it proves that the MBR
entry (active flag, LBA), the boot signatures and the 9fat boot sector at the
start of the plan9 partition are where a BIOS and an MBR look for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.pipeline.demo import DEMO_PBS_MESSAGE
from tests.qemu_vga import boot_until, needs_qemu


@needs_qemu
@pytest.mark.parametrize("container", ["qcow2", "raw"])
def test_amd64_image_boots_through_mbr_to_pbs(root: Path, tmp_path: Path, container: str) -> None:
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.recipe.load import load_recipe

    out = build(load_recipe("amd64.qcow2"),
                BuildOptions(root=root, output=tmp_path / f"a.{container}", container=container,
                             fs=False)).output
    text = boot_until(out, container, DEMO_PBS_MESSAGE, tmp_path / "vga.bin")
    assert DEMO_PBS_MESSAGE in text, text
    assert "no active partition" not in text


@needs_qemu
def test_without_an_active_partition_the_mbr_says_so(root: Path, tmp_path: Path) -> None:
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.recipe.load import load_recipe

    out = build(load_recipe("amd64.qcow2"),
                BuildOptions(root=root, output=tmp_path / "a.img", container="raw",
                             fs=False)).output
    with out.open("r+b") as f:  # clear the active flag of entry 1
        f.seek(446)
        f.write(b"\0")
    text = boot_until(out, "raw", "no active partition", tmp_path / "vga.bin")
    assert "no active partition" in text and DEMO_PBS_MESSAGE not in text
