"""FatVolume: reads back what format_fat writes, reads what mkfs.fat and mtools write,
and turns any corruption into ImageFormatError (hypothesis byte flips), never a traceback."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagebuild.disk.device import BlockDevice, BytesStorage, RawFile
from imagebuild.errors import ImageBuildError, ImageFormatError
from imagebuild.fs.fat.dirent import FORBIDDEN_CHARS, is_long_name, short_name_field
from imagebuild.fs.fat.format import FatError, FatFile, FatPathError, FatVolume, format_fat
from tests.conftest import needs

TIMESTAMP = 1700000000

needs_mtools = needs("mkfs.fat", "mcopy", "mdir", "mtype")


def partition(secs: int, start: int = 63) -> BlockDevice:
    disk = BlockDevice(BytesStorage((start + secs) * 512), name="data")
    return disk.slice(start, start + secs, "dos")


# -- round trip ---------------------------------------------------------------------------------
short_names = st.from_regex(r"[a-z0-9_$%'@!(){}^#&-]{1,8}(\.[a-z0-9]{1,3})?", fullmatch=True)
long_names = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x3FF,
                           exclude_characters=FORBIDDEN_CHARS + "~\x7f"),
    min_size=1, max_size=60,
).filter(lambda n: n not in (".", "..")
          and (is_long_name(n) or not (n.startswith(".") or n.endswith("."))))
file_sets = st.lists(
    st.tuples(st.one_of(short_names, long_names), st.integers(0, 9000)),
    max_size=12,
    unique_by=(lambda f: f[0].casefold(),
               lambda f: short_name_field(f[0]) if not is_long_name(f[0]) else f[0]),
)


def contents_by_mtools(part: BlockDevice) -> list[bytes]:
    """Every file's bytes as mcopy (not our reader) copies them out, in no order; and
    fsck.fat -n finds nothing but what docs/fat.md says of every disk/format FAT (the
    label left out of the root; on FAT32 no backup boot sector and no FSInfo trail)."""
    from tests.test_fat_format import LABEL_MESSAGE, fsck

    documented = {*LABEL_MESSAGE, "There is no backup boot sector.",
                  "  Auto-creating backup boot block.", "Created backup of boot sector in sector 1",
                  "FSINFO sector has bad magic number(s):",
                  "  Offset 508: 0x00000000 != expected 0xaa550000", "  Auto-correcting it."}
    with tempfile.TemporaryDirectory() as tmp:
        image, out = Path(tmp) / "fat.img", Path(tmp) / "out"
        image.write_bytes(part.pread(part.size, 0))
        findings = [f for f in fsck(image) if not f.startswith("Free cluster summary uninit")]
        assert set(findings) <= documented, findings
        out.mkdir()
        subprocess.run(["mcopy", "-n", "-i", str(image), "::*", str(out)], check=True,
                       capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        return sorted(f.read_bytes() for f in out.iterdir())


@needs_mtools
@needs("fsck.fat")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_sets, st.sampled_from([(3000, None), (20000, None), (70000, 1)]))
def test_fat_round_trip(files: list[tuple[str, int]], size: tuple[int, int | None]) -> None:
    secs, cluster = size
    part = partition(secs)
    fat_files = [FatFile(name, random.Random(f"{name}/{n}").randbytes(n)) for name, n in files]
    params = format_fat(part, fat_files, timestamp=TIMESTAMP, cluster_sectors=cluster)
    volume = FatVolume(part)
    assert volume.params == params
    entries = volume.listdir()
    assert len(entries) == len(fat_files)
    stamp = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    for file, entry in zip(fat_files, entries, strict=True):
        # a short name keeps no empty extension: "0." is stored, and read, as "0"
        short = file.name.upper().removesuffix(".")
        assert entry.name == (file.name if is_long_name(file.name) else short)
        assert (entry.size, entry.mtime, entry.is_dir) == (len(file.data), stamp, False)
        assert volume.read(file.name) == file.data
        if file.name.isascii():
            assert volume.read(file.name.upper()) == file.data  # case-insensitive lookup
        assert volume.read(entry.short_name) == file.data
    assert [p for p, _ in volume.walk()] == [f"/{e.name}" for e in entries]
    if fat_files:
        assert contents_by_mtools(part) == sorted(f.data for f in fat_files)


def test_fat_round_trip_fat32_high_cluster_word() -> None:
    # A file whose first cluster is above 0xFFFF: format.c writes only start[0..1];
    # we also write the high half (DIR_FstClusHI) so the file stays readable.
    part = partition(81920)
    big = FatFile("big", bytes(65600 * 512))
    small = FatFile("small", b"after the first 65536 clusters")
    params = format_fat(part, [big, small], cluster_sectors=1)
    volume = FatVolume(part)
    first = {e.name: e.first_cluster for e in volume.listdir()}
    assert params.fat_bits == 32 and first == {"BIG": 34, "SMALL": 34 + 65600}
    raw = part.pread(64, params.first_data_sector * 512)  # root is cluster 2
    assert int.from_bytes(raw[32 + 20 : 32 + 22], "little") == (34 + 65600) >> 16
    assert volume.read("small") == small.data


def test_fat_reader_path_errors() -> None:
    part = partition(3000)
    format_fat(part, [FatFile("plan9.ini", b"x")])
    volume = FatVolume(part)
    with pytest.raises(FatPathError, match="no such file"):
        volume.read("nope")
    with pytest.raises(FatPathError, match="not a directory"):
        volume.listdir("plan9.ini")
    with pytest.raises(FatPathError, match="not a directory"):
        volume.read("plan9.ini/x")
    with pytest.raises(FatPathError, match="is a directory"):
        volume.read("/")


def test_fat_reader_refuses_a_non_fat() -> None:
    part = partition(3000)
    with pytest.raises(ImageFormatError, match="bytes per sector"):
        FatVolume(part)


# -- other writers ------------------------------------------------------------------------------
def mtools(*args: str) -> None:
    subprocess.run(args, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"), check=True,
                   capture_output=True)


def mtools_image(path: Path, fat_bits: int, blocks: int) -> dict[str, bytes]:
    """A FAT made by mkfs.fat, filled by mmd/mcopy: subdirectories, long names, NT case bits."""
    subprocess.run(["mkfs.fat", "-C", "-F", str(fat_bits), *(["-s", "1"] if fat_bits == 32
                                                                else []), str(path),
                    str(blocks)], check=True, capture_output=True)
    mtools("mmd", "-i", str(path), "::/sub", "::/sub/deeper")
    content = {
        "/readme.txt": b"lower case 8.3: NT case bits\n",
        "/sub/A Long Name.bin": random.Random(1).randbytes(10000),
        "/sub/MiXed.Txt": b"mixed case: a long name\n",
        "/sub/deeper/UPPER.TXT": random.Random(2).randbytes(3000),
        "/sub/deeper/empty": b"",
    }
    for name, data in content.items():
        src = path.parent / "src"
        src.write_bytes(data)
        mtools("mcopy", "-i", str(path), str(src), f"::{name}")
    return content


@needs_mtools
@pytest.mark.parametrize(("fat_bits", "blocks"), [(12, 2048), (16, 20000), (32, 40000)])
def test_fat_reader_reads_mtools_images(tmp_path: Path, fat_bits: int, blocks: int) -> None:
    image = tmp_path / "m.img"
    content = mtools_image(image, fat_bits, blocks)
    with RawFile(image) as storage:
        volume = FatVolume(BlockDevice(storage))
        assert volume.fat_bits == fat_bits
        files = {p: volume.read(p) for p, e in volume.walk() if not e.is_dir}
        dirs = {p for p, e in volume.walk() if e.is_dir}
    assert files == content
    assert dirs == {"/sub", "/sub/deeper"}


# -- fuzzing ------------------------------------------------------------------------------------
def exercise(dev: BlockDevice) -> None:
    volume = FatVolume(dev)
    for path, entry in volume.walk():
        if not entry.is_dir:
            volume.read(path)
    volume.listdir("/")


def fuzz_base_ours() -> bytes:
    part = partition(3000, start=0)
    format_fat(part, [FatFile("plan9.ini", b"x" * 700), FatFile("a long name.txt", b"y" * 3000),
                      FatFile("9bootfat", b"z" * 5000)], xflag=True)
    return part.pread(part.size, 0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * 512 - 1), st.integers(1, 255)), min_size=1,
                max_size=8))
def test_fat_reader_fuzz_byte_flips(flips: list[tuple[int, int]]) -> None:
    image = bytearray(FUZZ_BASE)
    for offset, xor in flips:  # boot sector, FATs and root of the 3000-sector FAT12
        image[offset] ^= xor
    storage = BytesStorage(len(image))
    storage.buffer[:] = image
    with contextlib.suppress(ImageBuildError):  # anything else fails the test
        exercise(BlockDevice(storage))


@needs_mtools
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2047), st.integers(1, 255)), min_size=1, max_size=6),
       st.sampled_from(["boot", "fat", "root", "subdir"]))
def test_fat_reader_fuzz_mtools_image(flips: list[tuple[int, int]], where: str) -> None:
    base = MTOOLS_BASE.get()
    volume = FatVolume(_bytes_device(base))
    p = volume.params
    region = {
        "boot": 0,
        "fat": p.first_fat_sector * 512,
        "root": p.first_root_sector * 512,
        "subdir": p.cluster_sector(volume.listdir("/")[1].first_cluster) * 512,
    }[where]
    image = bytearray(base)
    for offset, xor in flips:
        image[region + offset % 2048] ^= xor
    with contextlib.suppress(ImageBuildError):
        exercise(_bytes_device(bytes(image)))


def _bytes_device(data: bytes) -> BlockDevice:
    storage = BytesStorage(len(data))
    storage.buffer[:] = data
    return BlockDevice(storage)


class _MtoolsBase:
    """One mkfs.fat/mtools FAT12 image for the whole session (built on first use)."""

    def __init__(self) -> None:
        self.data: bytes | None = None

    def get(self) -> bytes:
        if self.data is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "m.img"
                mtools_image(path, 12, 1024)
                self.data = path.read_bytes()
        return self.data


FUZZ_BASE = fuzz_base_ours()
MTOOLS_BASE = _MtoolsBase()


def test_fat_reader_detects_chain_loop() -> None:
    part = partition(3000, start=0)
    format_fat(part, [FatFile("a", b"x" * 2048)], xflag=True)  # clusters 2..5
    volume = FatVolume(part)
    fat = bytearray(volume.fat)
    fat[3 * 5 // 2 : 3 * 5 // 2 + 2] = bytes([fat[7] & 0x0F | 0x20, 0x00])  # 5 -> 2
    part.pwrite(fat, 512)
    volume = FatVolume(part)
    with pytest.raises(ImageFormatError, match="loops"):
        volume.chain(2, "file /a")
    assert volume.read("a") == b"x" * 2048  # the file itself needs only 4 clusters


def test_fat_writer_errors_are_fat_errors() -> None:
    assert issubclass(FatError, ImageBuildError)
    assert issubclass(FatPathError, ImageBuildError)
