"""Behaviour the docs promise, each checked so that switching it off fails a test.

Through the command line or stable public functions only, and read back with
qemu-img, mtools or tests/hjfs_helpers.py where an independent reader exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hjfs_helpers as hj
from tests.conftest import SOURCE_DATE_EPOCH, needs, tool_env
from tests.realtree import FileView

MiB = 1 << 20


def imagebuild(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    return subprocess.run([sys.executable, "-m", "imagebuild", *map(str, args)],
                          capture_output=True, text=True, env=env, check=False, timeout=300)


def one_line_error(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def tiny_recipe(tmp_path: Path, fs: str = "") -> Path:
    """zynq's layout (prep 9fat nvram fs) on a 300 MiB raw disk: quick to build and read;
    `fs` goes into its [fs] table."""
    from imagebuild.recipe.load import recipe_path

    text = recipe_path("zynq.img").read_text().replace("mb = 1885", "mb = 300", 1)
    text = text.replace("\n[fs]\n", f"\n[fs]\n{fs}", 1) if "\n[fs]\n" in text else (
        f"{text}\n[fs]\n{fs}")
    recipe = tmp_path / "tiny.img.toml"
    recipe.write_text(text)
    return recipe


def fs_partition(raw: Path) -> tuple[int, int]:
    """(byte offset, length) of the fs partition, from the MBR and the Plan 9 table's text."""
    with raw.open("rb") as f:
        mbr = f.read(512)
        start = int.from_bytes(mbr[446 + 8 : 446 + 12], "little")
        f.seek((start + 1) * 512)
        table = [t.split() for t in f.read(512).split(b"\0", 1)[0].decode().splitlines()]
    first, end = next((int(t[2]), int(t[3])) for t in table if t[1] == "fs")
    return (start + first) * 512, (end - first) * 512


# -- usage errors exit 2 ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["no-such-command"], ["build"], ["build", "--no-such-flag"],
                                  ["qcow2", "map"], ["cat", "x.img"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = imagebuild(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "usage:" in done.stderr


# -- qcow2: what the engine refuses to write, and what it clears ------------------------------


@needs("qemu-img")
@pytest.mark.parametrize("how", ["corrupt", "snapshot"])
def test_qcow2_images_marked_corrupt_or_with_snapshots_are_not_written(
    tmp_path: Path, how: str
) -> None:
    from imagebuild.container.qcow2.image import Qcow2Image
    from imagebuild.errors import ImageBuildError

    path = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    if how == "snapshot":
        subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(path)], check=True)
    else:
        with path.open("r+b") as f:  # incompatible_features bit 1: corrupt
            f.seek(72)
            f.write((2).to_bytes(8, "big"))
    before = path.read_bytes()
    with pytest.raises(ImageBuildError, match="corrupt" if how == "corrupt" else "snapshot"):
        Qcow2Image.open(path, writable=True)
    assert path.read_bytes() == before
    with Qcow2Image.open(path) as image:  # reading stays allowed
        assert image.pread(512, 0) == bytes(512)


@needs("qemu-img")
def test_writing_clears_the_autoclear_bits(tmp_path: Path) -> None:
    from imagebuild.container.qcow2.image import Qcow2Image

    path = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    with path.open("r+b") as f:  # autoclear bit 0: "bitmaps extension consistent"
        f.seek(88)
        f.write((1).to_bytes(8, "big"))
    with Qcow2Image.open(path, writable=True) as image:
        image.pwrite(b"written", 0)
    with path.open("rb") as f:
        f.seek(88)
        assert int.from_bytes(f.read(8), "big") == 0
    subprocess.run(["qemu-img", "check", str(path)], check=True, capture_output=True)
    out = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={path}",
                          f"of={tmp_path / 'r'}", "bs=512", "count=1"], check=True)
    assert out.returncode == 0 and (tmp_path / "r").read_bytes()[:7] == b"written"


@needs("qemu-img")
def test_backing_loops_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(b), "4M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
                    str(a)], check=True, cwd=tmp_path)
    subprocess.run(["qemu-img", "rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", str(b)],
                   check=True, cwd=tmp_path)
    out = tmp_path / "flat.raw"
    line = one_line_error(imagebuild("qcow2", "convert", "-O", "raw", a, out))
    assert "loop" in line, line
    assert not out.exists()


# -- the fs partition --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, image): the tiny recipe built from a demo root."""
    from imagebuild.pipeline.demo import make_demo_root

    work = tmp_path_factory.mktemp("promises")
    root = make_demo_root(work / "root")
    image = work / "tiny.img"
    done = imagebuild("build", tiny_recipe(work), "--root", root, "-o", image, "-q", "--plain")
    assert done.returncode == 0, done.stderr
    return root, image


def test_fsck_reports_a_reference_count_mismatch(tiny_image: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    _, image = tiny_image
    bad = tmp_path / "bad.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(bad)], check=True)
    offset, length = fs_partition(bad)
    with bad.open("r+b") as f:
        view = FileView(f.fileno(), offset, length)
        sb = hj.superblock(view)  # type: ignore[arg-type]
        users = hj.walk_tree(view)["/adm/users"]  # type: ignore[arg-type]
        block = users.db[0]  # its count goes from 1 to 2
        ref = sb["fstart"] + block // hj.COUNTS_PER_BLOCK
        at = offset + ref * hj.BLOCK + 1 + 3 * (block % hj.COUNTS_PER_BLOCK)
        f.seek(at)
        assert int.from_bytes(f.read(3), "little") == 1
        f.seek(at)
        f.write((2).to_bytes(3, "little"))
    assert imagebuild("fsck", image).returncode == 0
    done = imagebuild("fsck", bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert str(block) in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_fs_type_none_leaves_the_fs_partition_alone_and_reads_no_protos(tmp_path: Path) -> None:
    from imagebuild.pipeline.demo import make_demo_root

    root = make_demo_root(tmp_path / "root")
    shutil.rmtree(root / "sys/lib/sysconfig/proto")  # nothing may need them
    image = tmp_path / "none.img"
    recipe = tiny_recipe(tmp_path, 'type = "none"\n')
    done = imagebuild("build", recipe, "--root", root, "-o", image, "-q", "--plain")
    assert done.returncode == 0, done.stderr
    offset, _ = fs_partition(image)
    with image.open("rb") as f:  # not reamed: all zeros, as the raw file was made
        f.seek(offset)
        assert not any(f.read(hj.BLOCK * 4))
    assert imagebuild("fsck", image).returncode == 1


def test_git_bind_puts_the_checkouts_git_at_dist_plan9front(tmp_path: Path) -> None:
    from imagebuild.pipeline.demo import make_demo_root

    root = make_demo_root(tmp_path / "root")
    (root / ".git/refs/heads").mkdir(parents=True)
    (root / ".git/HEAD").write_text("ref: refs/heads/front\n")
    proto = root / "sys/lib/sysconfig/proto/distproto"
    lines = "dist\td775\n\tplan9front\td775\n\t\t.git\td775\n\t\t\t+\n"
    proto.write_text(proto.read_text() + lines)
    image = tmp_path / "git.img"
    done = imagebuild("build", tiny_recipe(tmp_path), "--root", root, "-o", image, "-q",
                      "--plain")
    assert done.returncode == 0, done.stderr
    offset, length = fs_partition(image)
    with image.open("rb") as f:
        view = FileView(f.fileno(), offset, length)
        tree = hj.walk_tree(view)  # type: ignore[arg-type]
        head = hj.read_file(view, tree["/dist/plan9front/.git/HEAD"])  # type: ignore[arg-type]
    assert head == b"ref: refs/heads/front\n"
    assert "/dist/plan9front/.git/refs/heads" in tree


# -- the boot partition ------------------------------------------------------------------------


@needs("mdir", "mtype")
def test_file_replaces_a_boot_file_in_place(tiny_image: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    root, image = tiny_image
    mine = tmp_path / "plan9.ini"
    mine.write_bytes(b"bootfile=9zynq\nmine=1\n")
    out = tmp_path / "file.img"
    done = imagebuild("build", tiny_recipe(tmp_path), "--root", root, "-o", out, "-q",
                      "--plain", "--file", f"plan9.ini={mine}")
    assert done.returncode == 0, done.stderr

    def fat(path: Path) -> Path:
        with path.open("rb") as f:
            start = int.from_bytes(f.read(512)[446 + 8 : 446 + 12], "little")
            f.seek((start + 1) * 512)
            table = [t.split() for t in f.read(512).split(b"\0", 1)[0].decode().splitlines()]
            first, end = next((int(t[2]), int(t[3])) for t in table if t[1] == "9fat")
            f.seek((start + first) * 512)
            data = f.read((end - first) * 512)
        dest = tmp_path / f"{path.stem}.fat"
        dest.write_bytes(data)
        return dest

    def names(fat_image: Path) -> list[str]:
        listing = subprocess.run(["mdir", "-b", "-a", "-i", str(fat_image), "::"],
                                 capture_output=True, text=True, check=True, env=tool_env())
        return [line.rsplit("/", 1)[-1].upper() for line in listing.stdout.split()]

    plain, replaced = fat(image), fat(out)
    assert names(replaced) == names(plain)  # same files, same directory slots, no second copy
    got = subprocess.run(["mtype", "-i", str(replaced), "::plan9.ini"], capture_output=True,
                         check=True, env=tool_env()).stdout
    assert got == mine.read_bytes()


# -- partition editors' limits (recipes cannot reach them: mb stops below 2 TiB, and prep
# names only its automatic partitions, so through the editors' public functions) -----------


def test_fdisk_refuses_a_partition_past_the_32_bit_lba_fields() -> None:
    """A 3 TiB disk: `fdisk -baw` would want a Plan 9 partition of more than 2^32 sectors."""
    from imagebuild.disk.device import BlockDevice, PartFS
    from imagebuild.errors import ImageBuildError
    from imagebuild.partition import fdisk, mbr
    from tests.mbr_helpers import SparseStorage

    parts = PartFS(BlockDevice(SparseStorage(3 << 40)))
    mbr.install_bootcode(parts["data"])
    with pytest.raises(ImageBuildError, match="32-bit"):
        fdisk.fdisk_auto(parts)
    assert parts["data"].pread(512, 0)[446:510] == bytes(64)  # nothing written


def test_prep_refuses_more_partitions_than_edit_h_maxpart() -> None:
    """prep's editor holds at most 32 partitions (edit.h Maxpart); the 33rd is an error."""
    from imagebuild.disk.device import BlockDevice, PartFS
    from imagebuild.errors import ImageBuildError
    from imagebuild.partition import fdisk, mbr, prep
    from tests.mbr_helpers import SparseStorage

    parts = PartFS(BlockDevice(SparseStorage(300 * MiB)))
    mbr.install_bootcode(parts["data"])
    fdisk.fdisk_auto(parts)
    script = "".join(f"a p{i} {2 + 2 * i} {3 + 2 * i}\n" for i in range(32))
    assert len(prep.prep_script(parts, script + "w\n")) == 32
    with pytest.raises(ImageBuildError, match="too many partitions"):
        prep.prep_script(parts, script + "a p32 100 101\nw\n", source="many.prep")


# -- doit: a changed recipe or template rebuilds the targets that use it ----------------------


def test_doit_rebuilds_a_target_when_its_recipe_or_one_of_its_templates_changes(
        root: Path, tmp_path: Path) -> None:
    """On a copy of the package, so that the recipes and templates edited are the copy's."""
    repo = Path(__file__).resolve().parent.parent
    copy = tmp_path / "src"
    shutil.copytree(repo / "imagebuild", copy / "imagebuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "dodo.py", copy / "dodo.py")
    env = dict(os.environ, IMAGEBUILD_OUT=str(tmp_path / "out"), IMAGEBUILD_ROOT=str(root),
               SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
               PYTHONPATH=os.pathsep.join([str(copy), os.environ.get("PYTHONPATH", "")]))
    targets = ["zynq.img", "pi.img"]  # zynq renders plan9.ini, pi config.txt and cmdline.txt

    def doit() -> tuple[set[str], set[str]]:
        done = subprocess.run([sys.executable, "-m", "doit", "-f", str(copy / "dodo.py"),
                               *targets], capture_output=True, text=True, env=env, cwd=copy,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        return ({t.split()[1] for t in lines if t.startswith(".  ")},
                {t.split()[1] for t in lines if t.startswith("-- ")})

    def touch(path: Path, extra: str) -> None:
        path.write_text(path.read_text() + extra)

    assert doit() == (set(targets), set())
    assert doit() == (set(), set(targets))
    touch(copy / "imagebuild/recipes/zynq.img.toml", "# changed\n")
    assert doit() == ({"zynq.img"}, {"pi.img"})
    touch(copy / "imagebuild/templates/config.txt", "{# changed #}\n")
    assert doit() == ({"pi.img"}, {"zynq.img"})
    touch(copy / "imagebuild/templates/plan9.ini", "{# changed #}\n")
    assert doit() == ({"zynq.img"}, {"pi.img"})


# -- customize: the boot FAT's directory times come from SOURCE_DATE_EPOCH ---------------------


def root_directory_times(fat: bytes) -> dict[str, tuple[int, int]]:
    """{8.3 name: (write time, write date)} of the root directory's short entries, read
    straight from the BPB and the directory (FAT12/16 fixed root, or FAT32's first root
    cluster), independently of imagebuild's reader."""
    sector = int.from_bytes(fat[11:13], "little")
    per_cluster = fat[13]
    reserved = int.from_bytes(fat[14:16], "little")
    fats = fat[16]
    root_entries = int.from_bytes(fat[17:19], "little")
    fat_size = int.from_bytes(fat[22:24], "little") or int.from_bytes(fat[36:40], "little")
    root_start = (reserved + fats * fat_size) * sector
    if root_entries:
        directory = fat[root_start : root_start + root_entries * 32]
    else:
        cluster = int.from_bytes(fat[44:48], "little")
        start = root_start + (cluster - 2) * per_cluster * sector
        directory = fat[start : start + per_cluster * sector]
    times = {}
    for at in range(0, len(directory), 32):
        entry = directory[at : at + 32]
        if entry[0] == 0:
            break
        if entry[0] == 0xE5 or entry[11] & 0x0F == 0x0F or entry[11] & 0x18:
            continue  # deleted, long-name slot, volume label or directory
        base, ext = entry[:8].decode().rstrip(), entry[8:11].decode().rstrip()
        times[f"{base}.{ext}" if ext else base] = (int.from_bytes(entry[22:24], "little"),
                                                   int.from_bytes(entry[24:26], "little"))
    return times


def dos_time(unix: int) -> tuple[int, int]:
    import datetime as dt

    t = dt.datetime.fromtimestamp(unix, dt.UTC)
    return ((t.hour << 11) | (t.minute << 5) | (t.second // 2),
            ((t.year - 1980) << 9) | (t.month << 5) | t.day)


@needs("qemu-img")
def test_customize_dates_the_files_it_writes_from_source_date_epoch(
        tiny_image: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = tiny_image
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(base)],
                   check=True, capture_output=True)
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"hello\n")
    later = SOURCE_DATE_EPOCH + 86400 * 400 + 3600 * 5 + 60 * 7 + 42  # another day and time
    out = tmp_path / "custom.qcow2"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(later))
    done = subprocess.run([sys.executable, "-m", "imagebuild", "customize", str(base),
                           "-o", str(out), "--set", "plan9.console=1", "--file",
                           f"extra.txt={extra}"], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    flat = tmp_path / "flat.img"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(flat)], check=True,
                   capture_output=True)

    def boot_fat(path: Path) -> bytes:
        with path.open("rb") as f:
            start = int.from_bytes(f.read(512)[446 + 8 : 446 + 12], "little")
            f.seek((start + 1) * 512)
            table = [t.split() for t in f.read(512).split(b"\0", 1)[0].decode().splitlines()]
            first, end = next((int(t[2]), int(t[3])) for t in table if t[1] == "9fat")
            f.seek((start + first) * 512)
            return f.read((end - first) * 512)

    before, after = root_directory_times(boot_fat(image)), root_directory_times(boot_fat(flat))
    assert before["PLAN9.INI"] == dos_time(SOURCE_DATE_EPOCH)
    assert after["PLAN9.INI"] == dos_time(later)  # changed
    assert after["EXTRA.TXT"] == dos_time(later)  # added
    unchanged = set(before) - {"PLAN9.INI"}
    assert unchanged and {n: after[n] for n in unchanged} == {n: before[n] for n in unchanged}
