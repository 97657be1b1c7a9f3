"""Malformed and unsupported QCOW2 images: one ImageBuildError naming file, field and value;
never a traceback (fuzzed with byte flips and truncations)."""

from __future__ import annotations

import contextlib
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qcow2_helpers import MiB, make_raw, needs_qemu_img, patterned, qemu_img

from imagebuild.cli import main
from imagebuild.container.qcow2.check import check
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.container.qcow2.tools import map_image
from imagebuild.errors import (
    ImageBuildError,
    ImageFormatError,
    OutOfRangeError,
    UnsupportedImageError,
)


def _valid(tmp_path: Path, cluster_size: int = 4096) -> Path:
    path = tmp_path / "ok.qcow2"
    with Qcow2Image.create(path, 4 * MiB, cluster_size=cluster_size) as image:
        image.pwrite(patterned(200_000, 1), 10_000)
        image.pwrite(b"end", 4 * MiB - 3)
    return path


def _patch(path: Path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _error(path: Path) -> ImageBuildError:
    with pytest.raises(ImageBuildError) as caught, Qcow2Image.open(path) as image:
        image.pread(image.size, 0)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return caught.value


def test_qcow2_truncated_header(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    path.write_bytes(path.read_bytes()[:50])
    err = _error(path)
    assert isinstance(err, ImageFormatError) and "truncated header" in str(err)


def test_qcow2_bad_magic_bytes(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    with open(path, "r+b") as f:
        f.write(b"QFI\x00")
    assert "bad magic b'QFI\\x00'" in str(_error(path))


def test_qcow2_l1_offset_past_end_of_file(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 40, ">Q", 1 << 40)
    err = _error(path)
    assert "l1_table_offset 0x10000000000" in str(err) and "outside the file" in str(err)


def test_qcow2_l1_offset_not_aligned(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 40, ">Q", 3 * 4096 + 512)
    assert "l1_table_offset 0x3200 is not aligned" in str(_error(path))


def test_qcow2_refcount_table_offset_not_aligned(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 48, ">Q", 4096 + 8)
    assert "refcount_table_offset 0x1008" in str(_error(path))


def test_qcow2_refcount_order_unsupported(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 96, ">I", 7)
    err = _error(path)
    assert isinstance(err, UnsupportedImageError) and "refcount_order 7" in str(err)


def test_qcow2_l1_size_does_not_cover_virtual_size(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 24, ">Q", 1 << 40)
    err = _error(path)
    assert "l1_size 2 does not cover the virtual size 1099511627776" in str(err)


def test_qcow2_l2_offset_in_l1_past_end(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    l1 = 3 * 4096
    _patch(path, l1, ">Q", (1 << 63) | (1 << 40))
    err = _error(path)
    assert "L1 entry 0: L2 table offset 0x10000000000" in str(err)


def test_qcow2_write_past_end_of_disk(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    with Qcow2Image.open(path, writable=True) as image:
        with pytest.raises(OutOfRangeError, match=r"write of 2 bytes at offset 4194303"):
            image.pwrite(b"ab", 4 * MiB - 1)
        with pytest.raises(OutOfRangeError):
            image.data.seek(-1)


def test_qcow2_write_to_read_only_image(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    with Qcow2Image.open(path) as image, pytest.raises(ImageBuildError, match="read-only"):
        image.pwrite(b"x", 0)


@pytest.mark.parametrize("bit,words", [(1 << 2, "external data file"),
                                       (1 << 4, "extended L2"),
                                       (1 << 9, "bit 9")])
def test_qcow2_refuses_incompatible_features(tmp_path: Path, bit: int, words: str) -> None:
    path = _valid(tmp_path)
    _patch(path, 72, ">Q", bit)
    err = _error(path)
    assert isinstance(err, UnsupportedImageError) and words in str(err)


def test_qcow2_refuses_encryption(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    _patch(path, 32, ">I", 1)
    assert "crypt_method 1" in str(_error(path))


@needs_qemu_img
def test_qcow2_refuses_qemu_extended_l2_image(tmp_path: Path) -> None:
    path = tmp_path / "e.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", path, "1M")
    assert "extended L2" in str(_error(path))


@needs_qemu_img
def test_qcow2_zstd_needs_zstandard_or_reads(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "r.raw", MiB, [(0, patterned(MiB, 2))])
    path = tmp_path / "z.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, path)
    try:
        import zstandard  # noqa: F401
    except ImportError:
        assert "zstandard" in str(_error(path))
    else:
        with Qcow2Image.open(path) as image:
            assert image.pread(MiB, 0) == raw.read_bytes()


def test_qcow2_cli_prints_one_line_and_exits_1(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _valid(tmp_path)
    _patch(path, 40, ">Q", 1 << 40)
    for verb in ("info", "check", "map"):
        assert main(["qcow2", verb, str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "l1_table_offset" in err and str(path) in err
    assert main(["qcow2", "convert", "-O", "raw", str(path), str(tmp_path / "o.raw")]) == 1
    assert not (tmp_path / "o.raw").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.raw")]


def _exercise(path: Path) -> None:
    """Everything a user could do with a damaged file; only ImageBuildError may escape."""
    try:
        with Qcow2Image.open(path) as image:
            image.pread(min(image.size, 8 * MiB), 0)
            map_image(image)
    except ImageBuildError:
        pass
    with contextlib.suppress(ImageBuildError):
        check(path)


@pytest.mark.parametrize("cluster_size", [512, 4096])
def test_qcow2_fuzzed_images_never_traceback(tmp_path: Path, cluster_size: int) -> None:
    valid = _valid(tmp_path, cluster_size).read_bytes()
    metadata_end = 8 * cluster_size  # header, tables and first L2/refcount blocks

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(flips=st.lists(st.tuples(st.integers(0, metadata_end - 1), st.integers(1, 255)),
                          max_size=6),
           far_flips=st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)),
                              max_size=3),
           cut=st.one_of(st.none(), st.integers(0, len(valid))))
    def run(flips: list[tuple[int, int]], far_flips: list[tuple[int, int]],
            cut: int | None) -> None:
        data = bytearray(valid)
        for at, mask in flips + far_flips:
            data[at] ^= mask
        if cut is not None:
            del data[cut:]
        path = tmp_path / "fuzz.qcow2"
        path.write_bytes(bytes(data))
        _exercise(path)

    run()


@needs_qemu_img
def test_qcow2_fuzzed_qemu_compressed_image_never_tracebacks(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "r.raw", 2 * MiB, [(0, patterned(2 * MiB, 5))])
    src = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", raw, src)
    valid = src.read_bytes()

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(flips=st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)),
                          min_size=1, max_size=8))
    def run(flips: list[tuple[int, int]]) -> None:
        data = bytearray(valid)
        for at, mask in flips:
            data[at] ^= mask
        path = tmp_path / "fuzz.qcow2"
        path.write_bytes(bytes(data))
        _exercise(path)

    run()
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


@needs_qemu_img
def test_qcow2_zstd_without_zstandard_is_a_clear_error(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)  # import now fails
    raw = make_raw(tmp_path / "r.raw", MiB, [(0, patterned(MiB, 2))])
    path = tmp_path / "z.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, path)
    err = _error(path)
    assert isinstance(err, UnsupportedImageError) and "zstandard" in str(err)
