"""End to end: every target built from a generated root, checked with independent tools."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from imagebuild.recipe.load import load_recipe
from tests.conftest import tool_env
from tests.test_fat_format import LABEL_MESSAGE, fsck

MiB = 1 << 20


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True,
                          env=tool_env()).stdout


def as_raw(image: Path, tmp_path: Path) -> Path:
    """A raw copy through qemu-img (an independent qcow2 reader) or the file itself."""
    if image.suffix != ".qcow2":
        return image
    raw = tmp_path / (image.stem + ".raw")
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
    return raw


def content_digest(path: Path, block: int = 64 * 1024) -> str:
    """sha256 of a file's bytes that skips its holes: the size, then every nonzero block
    with its offset, once (equal digests: equal bytes, wherever the holes are)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        fd, size, pos, done = f.fileno(), path.stat().st_size, 0, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for offset in range(max(start - start % block, done), end, block):
                data = os.pread(fd, block, offset)
                done = offset + block
                if data.count(0) != len(data):
                    digest.update(offset.to_bytes(8, "little") + data)
            pos = end
    return digest.hexdigest()


def sfdisk_partitions(raw: Path) -> list[dict[str, object]]:
    table = json.loads(run("sfdisk", "--json", raw))["partitiontable"]
    assert table["label"] == "dos"
    parts: list[dict[str, object]] = table["partitions"]
    return parts


def extract(raw: Path, start: int, sectors: int, dest: Path) -> Path:
    """Copy a partition out of a raw image, keeping zero runs sparse."""
    with raw.open("rb") as src, dest.open("wb") as out:
        src.seek(start * 512)
        left = sectors * 512
        while left:
            chunk = src.read(min(left, 4 * MiB))
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
            left -= len(chunk)
        out.truncate(sectors * 512)
    return dest


def boot_partition(name: str, raw: Path) -> tuple[int, int]:
    """(start, sectors) of the FAT the recipe formats, found through sfdisk and the Plan 9
    table's text (`part NAME START END` lines in the PLAN9 partition's second sector)."""
    parts = sfdisk_partitions(raw)
    recipe = load_recipe(name)
    if recipe.fat_partition == "dos":
        (fat,) = [p for p in parts if p["type"] in ("b", "c", "e", "6")]
        return int(fat["start"]), int(fat["size"])  # type: ignore[call-overload]
    (plan9,) = [p for p in parts if p["type"] == "39"]
    start = int(plan9["start"])  # type: ignore[call-overload]
    with raw.open("rb") as f:
        f.seek((start + 1) * 512)
        table = [line.split() for line in f.read(512).split(b"\0", 1)[0].decode().splitlines()]
    (first, end), = [(int(t[2]), int(t[3])) for t in table if t[:2] == ["part", "9fat"]]
    return start + first, end - first


@pytest.mark.parametrize("name", ["amd64.qcow2", "arm64.qcow2"])
def test_qcow2_targets_pass_qemu_img_check(built: dict[str, Path], name: str) -> None:
    info = json.loads(run("qemu-img", "info", "--output=json", built[name]))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == load_recipe(name).mb * MiB  # disk/qcowfs -n mb*1048576
    run("qemu-img", "check", built[name])  # exit status 0: no errors, no leaks


@pytest.mark.parametrize("name", ["pi.img", "pi3.img", "zynq.img", "reform.img", "honeycomb.img"])
def test_raw_targets_have_the_dd_size(built: dict[str, Path], name: str) -> None:
    # dd -bs 1048576 -oseek $mb -count 1
    assert built[name].stat().st_size == (load_recipe(name).mb + 1) * MiB


@pytest.mark.parametrize("name", ["amd64.qcow2", "arm64.qcow2", "pi.img", "pi3.img",
                                  "zynq.img", "reform.img", "honeycomb.img"])
def test_boot_partition_is_clean_and_holds_every_file(
    built: dict[str, Path], root: Path, name: str, tmp_path: Path
) -> None:
    from imagebuild.pipeline.build import BuildOptions, plan_build

    raw = as_raw(built[name], tmp_path)
    start, sectors = boot_partition(name, raw)
    fat = extract(raw, start, sectors, tmp_path / "fat.img")
    # nothing beyond what fsck.fat says of every FAT disk/format writes (see test_fat_format)
    assert fsck(fat) == LABEL_MESSAGE
    plan = plan_build(load_recipe(name), BuildOptions(root=root))
    listing = run("mdir", "-a", "-b", "-i", fat, "::")  # -a: 9boot* is a system file
    assert len(listing.split()) == len(plan.fat_files)
    for fname, data in plan.fat_files:
        got = subprocess.run(["mtype", "-i", str(fat), f"::{fname}"], capture_output=True,
                             check=True, env=tool_env()).stdout
        assert got == data, fname


def boot_file(built: dict[str, Path], name: str, fname: str, tmp_path: Path) -> bytes:
    """A file of the boot partition read twice: by `cat` and by qemu-img + sfdisk + mtype
    (none of our code); both must agree."""
    from imagebuild.readback import cat

    ours = cat(built[name], f"{load_recipe(name).fat_partition}:{fname}")
    raw = as_raw(built[name], tmp_path)
    fat = extract(raw, *boot_partition(name, raw), tmp_path / f"{name}.fat")
    theirs = subprocess.run(["mtype", "-i", str(fat), f"::{fname}"], capture_output=True,
                            check=True, env=tool_env()).stdout
    assert ours == theirs, (name, fname)
    return ours


def test_plan9_ini_has_the_mkfile_content(built: dict[str, Path], tmp_path: Path) -> None:
    assert boot_file(built, "amd64.qcow2", "plan9.ini", tmp_path) == b"bootfile=9pc64\nconsole=0\n"
    assert boot_file(built, "arm64.qcow2", "plan9.ini", tmp_path) == b"console=0\nvgasize=text\n"
    assert boot_file(built, "zynq.img", "plan9.ini", tmp_path) == b"bootfile=9zynq\n"


def test_pi_config_txt_has_the_mkfile_sections(built: dict[str, Path], tmp_path: Path) -> None:
    text = boot_file(built, "pi.img", "config.txt", tmp_path).decode()
    assert [line for line in text.splitlines() if line.startswith("[")] == [
        "[pi0]", "[pi1]", "[pi2]", "[pi3]", "[all]"]
    assert boot_file(built, "pi3.img", "cmdline.txt", tmp_path) == b"console=0\n"


def test_reform_flash_bin_is_at_byte_33792(built: dict[str, Path], root: Path) -> None:
    flash = (root / "sys/src/boot/reform/flash.bin").read_bytes()
    with built["reform.img"].open("rb") as f:
        f.seek(33792)
        assert f.read(len(flash)) == flash


def test_amd64_mbr_boot_code_is_386_mbr(built: dict[str, Path], root: Path, tmp_path: Path) -> None:
    raw = as_raw(built["amd64.qcow2"], tmp_path)
    mbr = (root / "386/mbr").read_bytes()
    with raw.open("rb") as f:
        sector0 = f.read(512)
    assert sector0[:len(mbr)] == mbr[:446]
    assert sector0[510:] == b"\x55\xaa"
    (p,) = sfdisk_partitions(raw)
    assert p["type"] == "39" and p.get("bootable") is True


def test_same_layout_on_a_raw_file_and_a_qcow2_view(root: Path, tmp_path: Path) -> None:
    from imagebuild.container.qcow2.image import Qcow2Image
    from imagebuild.disk.device import RawFile
    from imagebuild.pipeline.build import BuildOptions, plan_build, write_image

    plan = plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=root, timestamp=1))
    qcow = tmp_path / "a.qcow2"
    with Qcow2Image.create(qcow, plan.size) as image:
        write_image(plan, image.data)
    raw = tmp_path / "a.raw"
    with RawFile.create(raw, plan.size) as f:
        write_image(plan, f)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", qcow, raw)


def test_same_inputs_same_sha256(root: Path, tmp_path: Path, sde: int) -> None:
    import time

    from imagebuild.pipeline.build import BuildOptions, build

    for name in ("amd64.qcow2", "pi.img"):
        digests = set()
        for i in range(2):
            if i:
                time.sleep(1.1)  # the second build in another second: no clock may leak in
            out = tmp_path / f"{i}-{name}"
            build(load_recipe(name), BuildOptions(root=root, output=out))
            digests.add(content_digest(out))
        assert len(digests) == 1, name
    # and the digest does see a difference: a build with another clock
    other = build(load_recipe("pi.img"), BuildOptions(root=root, output=tmp_path / "x",
                                                      timestamp=sde + 86400)).output
    assert content_digest(other) not in digests


@pytest.mark.parametrize("with_fs", [False, True])
def test_qcow2_of_amd64_is_no_bigger_than_what_was_written_plus_1mib(
    root: Path, tmp_path: Path, with_fs: bool
) -> None:
    import random
    import shutil

    from imagebuild.container.qcow2.image import Qcow2Image
    from imagebuild.pipeline.build import BuildOptions, plan_build, write_image

    r = tmp_path / "root"
    shutil.copytree(root, r)
    (r / "amd64/9pc64").write_bytes(random.Random(3).randbytes(3_000_000))  # a 3 MB kernel
    plan = plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=r, timestamp=1, fs=with_fs))
    counts: dict[str, int] = {}  # bytes handed to the image: the last count of each step
    out = tmp_path / "a.qcow2"
    with Qcow2Image.create(out, plan.size) as image:
        write_image(plan, image.data, lambda step, n, total: counts.__setitem__(step, n))
    assert counts["format 9fat"] >= 3_000_000
    assert out.stat().st_size <= sum(counts.values()) + MiB


@pytest.mark.parametrize("name", ["amd64.qcow2", "pi.img"])
def test_fs_partition_holds_the_proto_tree(
    built: dict[str, Path], root: Path, name: str, tmp_path: Path
) -> None:
    from imagebuild.readback import cat, check_fs, listing

    image = built[name]
    assert check_fs(image, "fs") == []
    top = {e["name"]: e for e in listing(image, "fs:/")}
    # hjfs -r + the mkfile's console `create /dist`, `create /usr`, then the protos
    assert {"adm", "dist", "usr", "lib", "rc", "386", "cfg", "mail"} <= set(top)
    assert (top["mail"]["uid"], top["mail"]["gid"]) == ("upas", "upas")
    objtype = load_recipe(name).objtype
    assert f"{objtype}" in top
    assert cat(image, "fs:/lib/words") == (root / "lib/words").read_bytes()
    # `bind ndb /n/src9/lib/ndb`: /lib/ndb/local comes from sys/lib/dist/ndb
    assert cat(image, "fs:/lib/ndb/local") == (root / "sys/lib/dist/ndb/local").read_bytes()
    assert cat(image, f"fs:/{objtype}/bin/rc") == (root / f"{objtype}/bin/rc").read_bytes()
    users = cat(image, "fs:/adm/users").decode().splitlines()
    # newuser glenda; newuser adm +glenda; newuser sys +glenda; newuser upas +glenda
    assert "-1:adm:adm:glenda" in users and "10000:sys::glenda" in users
    assert "10003:upas:upas:glenda" in users and "2:glenda:glenda:" in users

    # the same through the independent reader (sfdisk, the Plan 9 table's text and
    # tests/hjfs_helpers.py): every file the protos name, byte for byte
    from imagebuild.pipeline.build import fs_tree
    from tests import hjfs_helpers as hj
    from tests.realtree import FileView

    raw = as_raw(image, tmp_path)
    (plan9,) = [p for p in sfdisk_partitions(raw) if p["type"] == "39"]
    start = int(str(plan9["start"]))
    with raw.open("rb") as f:
        f.seek((start + 1) * 512)
        table = f.read(512).split(b"\0", 1)[0].decode().splitlines()
        first, end = next(map(int, t.split()[2:]) for t in table if t.split()[1] == "fs")
        volume = FileView(f.fileno(), (start + first) * 512, (end - first) * 512)
        tree = hj.walk_tree(volume)  # type: ignore[arg-type]
        assert hj.read_file(volume, tree["/adm/users"]).decode().splitlines() == users  # type: ignore[arg-type]
        for e in fs_tree(load_recipe(name), root):
            got = tree[e.path]
            assert bool(got.type & hj.QTDIR) == e.is_dir, e.path
            if not e.is_dir:
                assert hj.read_file(volume, got) == e.source.read_bytes(), e.path  # type: ignore[arg-type]


def test_no_fs_leaves_the_fs_partition_unformatted(root: Path, tmp_path: Path) -> None:
    from imagebuild.pipeline.build import BuildOptions, build
    from imagebuild.readback import inspect_image

    out = build(load_recipe("zynq.img"), BuildOptions(root=root, output=tmp_path / "z.img",
                                                      fs=False)).output
    info = inspect_image(out)
    assert info.get("fs") is None and [p["name"] for p in info["plan9"]] == ["9fat", "nvram", "fs"]


@pytest.mark.parametrize("name", ["amd64.qcow2", "pi.img", "reform.img", "zynq.img"])
def test_libparted_reads_every_mbr_as_we_wrote_it(built: dict[str, Path], name: str) -> None:
    """The libparted cross-check the build no longer runs (it costs start-up) runs here."""
    from imagebuild.readback import inspect_image

    info = inspect_image(built[name], verify=True)
    assert info["mbr"] and all(p["sectors"] > 0 for p in info["mbr"])


def test_bad_pbs_is_found_before_the_first_byte_is_written(root: Path, tmp_path: Path) -> None:
    """A pbs that cannot be installed stops the build before any step writes (the fs
    partition, written before the FAT, used to be written whole first)."""
    import shutil

    from imagebuild.errors import LayoutError
    from imagebuild.pipeline.build import BuildOptions, build

    r = tmp_path / "root"
    shutil.copytree(root, r)
    (r / "386/pbs").write_bytes(b"\xeb\x58\x90" + bytes(600))  # longer than a sector
    steps: list[str] = []
    out = tmp_path / "x.qcow2"
    with pytest.raises(LayoutError, match=r"amd64\.qcow2\.toml: \[fat\]: .*386/pbs.*too large"):
        build(load_recipe("amd64.qcow2"), BuildOptions(root=r, output=out),
              lambda step, done, total: steps.append(step))
    assert steps == []
    assert list(tmp_path.glob("*.qcow2")) == [] and list(tmp_path.glob(".*")) == []
