"""`qcow2 convert` writes the same bytes whatever path moves the data.

Every input here is generated from a fixed seed, and the sha256 of each output
was taken from the converter before it copied raw sources in the kernel
(`copy_file_range`) and deflated clusters in batches: those digests pin the
layout (allocation order, L2 tables between data runs, compressed clusters
sharing host clusters).  The copy path is also checked against the buffered
path on the same input, and outputs against qemu-img check and compare.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from qcow2_helpers import MiB, assert_qemu_clean, needs_qemu_img, qemu_compare

from imagebuild.cli import main
from imagebuild.container.qcow2 import convert as convert_module
from imagebuild.container.qcow2.convert import convert
from imagebuild.container.qcow2.image import Qcow2Image

KiB = 1024
NIBBLES = bytes(range(16)) * 16  # bytes -> 0..15: deflate shrinks them to about half


def _sparse_raw(path: Path, size: int, seed: int, pieces: int, longest: int) -> None:
    """Unaligned extents of random and half-compressible bytes, some all zero, in holes."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(pieces):
            n = rng.randrange(1, longest)
            at = rng.randrange(size - n)
            kind = rng.random()
            data = bytes(n) if kind < 0.15 else rng.randbytes(n)
            f.seek(at)
            f.write(data.translate(NIBBLES) if kind > 0.6 else data)


def mixed(path: Path) -> None:
    """24 MiB, 40 unaligned extents up to 300 KB."""
    _sparse_raw(path, 24 * MiB, 7, 40, 300_000)


def wide(path: Path) -> None:
    """40 MiB + 4 KiB with long extents: runs cross the 8 MiB copy pieces and L2 ranges."""
    _sparse_raw(path, 40 * MiB + 4 * KiB, 11, 12, 6 * MiB)


def all_zero(path: Path) -> None:
    """3 MiB + 700 bytes of written (allocated) zeros: nothing to allocate."""
    path.write_bytes(bytes(3 * MiB + 700))


def all_data(path: Path) -> None:
    """5 MiB + 1234 bytes of data: a size neither cluster nor sector aligned."""
    rng = random.Random(3)
    path.write_bytes(rng.randbytes(5 * MiB + 1234).translate(NIBBLES))


def zero_heads(path: Path) -> None:
    """Clusters whose first bytes are zero and whose data comes later, or never."""
    rng = random.Random(5)
    buf = bytearray(6 * MiB)
    for at in range(0, len(buf), 64 * KiB):
        where = rng.choice((0, 16, 4095, 65535, -1))
        if where >= 0:
            buf[at + where] = rng.randrange(1, 256)
    path.write_bytes(bytes(buf))


def chain(path: Path) -> None:
    """A qcow2 overlay (4 KiB clusters) over a qcow2 base over a raw file."""
    rng = random.Random(13)
    base_raw = path.with_name("chain-base.raw")
    _sparse_raw(base_raw, 12 * MiB, 17, 20, 400_000)
    base = path.with_name("chain-base.qcow2")
    with Qcow2Image.create(base, backing_file=base_raw.name, backing_format="raw",
                           cluster_size=4096) as image:
        for _ in range(10):
            at = rng.randrange(12 * MiB - 200_000)
            image.pwrite(rng.randbytes(rng.randrange(1, 200_000)), at)
    with Qcow2Image.create(path, backing_file=base.name, cluster_size=4096) as image:
        for _ in range(10):
            at = rng.randrange(12 * MiB - 100_000)
            n = rng.randrange(1, 100_000)
            image.pwrite(bytes(n) if rng.random() < 0.3 else rng.randbytes(n), at)


INPUTS: dict[str, Callable[[Path], None]] = {
    "mixed": mixed, "wide": wide, "all_zero": all_zero, "all_data": all_data,
    "zero_heads": zero_heads, "chain": chain,
}

# (input, output format, compress, cluster size) -> sha256 of the output file
GOLDEN: dict[tuple[str, str, bool, int], str] = {
    ('mixed', 'qcow2', False, 65536):
        "36035b78ebb7ce6031ae4f81f24a7cb4b681253f53dea6c97fdb38577a171280",
    ('mixed', 'qcow2', False, 4096):
        "3bee5a5801b7f0978c5f6e84909eeac6d67d0de83089e801947dfa848d7c7d1a",
    ('mixed', 'qcow2', True, 65536):
        "011cd2543959840ce9b4dc628ec6810fce72ab78d0f37e25f0d55b17ea705fc9",
    ('mixed', 'qcow2', True, 4096):
        "6bba175d16afbe91830652bdb9cc706b09ac8d5ce92a7c0ccfc52f237216b9ca",
    ('mixed', 'raw', False, 65536):
        "27596253ccafc8693f189d706c2d59e73a4d8b5349972be3923a6c695491cf32",
    ('wide', 'qcow2', False, 65536):
        "a4db619c0b660e9d30f5a2ae47d835e5d5076528d03d825113d585309db0bebc",
    ('wide', 'qcow2', False, 4096):
        "ca7ffe3022d39dc751c86c09f8e25fe5864cc49cc9d39fd4abd7593a86e1aec4",
    ('wide', 'qcow2', True, 65536):
        "5e928bef4a2593991c3d7b4be9edcb41d21cf961e9610f9219ede4a0bc7244f3",
    ('wide', 'qcow2', True, 4096):
        "9486ebac345b8e3f484e8727621d032eb876277eb623e3d379f836c04777af8a",
    ('wide', 'raw', False, 65536):
        "119851cb896f8f1d176bed64a623afbbdd4b42c5acfed24fd2829bc02d1daa9f",
    ('all_zero', 'qcow2', False, 65536):
        "69f6f33612671e1ad0922de5f0b089e2cdb69dc454e3f587948282ee964f6f6d",
    ('all_zero', 'qcow2', False, 4096):
        "851aed30fb184f86914b8a3c644138e60a4508a6b6ad7d6b2ddb57157db86c24",
    ('all_zero', 'qcow2', True, 65536):
        "69f6f33612671e1ad0922de5f0b089e2cdb69dc454e3f587948282ee964f6f6d",
    ('all_zero', 'qcow2', True, 4096):
        "851aed30fb184f86914b8a3c644138e60a4508a6b6ad7d6b2ddb57157db86c24",
    ('all_zero', 'raw', False, 65536):
        "d25acb47943bce8d0f85b1727edf54484a0429e9f55fcf165503afac8d2f937c",
    ('all_data', 'qcow2', False, 65536):
        "45691aae2822513c2b5c3fb82dec880cd18f8869cddbc06f59c860ef39918685",
    ('all_data', 'qcow2', False, 4096):
        "a8cd57fd677c647dab8a09ddc10d9a0850b054895c876a5cb286d1c38b7bc553",
    ('all_data', 'qcow2', True, 65536):
        "3f05fca85a1afedc3d8b182fb1fb9ae18247b59c85d142565a593c744c4436e5",
    ('all_data', 'qcow2', True, 4096):
        "258877c46ed8f5f1b8177c9c4fefc63aa854ccd32e700e2b1788eca28b4090c0",
    ('all_data', 'raw', False, 65536):
        "181bf89a026f4a959bd37b169db687bdf3930d1688979ce0a6d6c5b714d8592f",
    ('zero_heads', 'qcow2', False, 65536):
        "99eb62cc557d8da4ca46d9bd2521e97bfdd5399591124911eea245279005638d",
    ('zero_heads', 'qcow2', False, 4096):
        "a854e3af51e1890f164ec77554eee9cfb0e095cb77bb91417c6915cc07f54f80",
    ('zero_heads', 'qcow2', True, 65536):
        "ad090bf29b8335a68b7e790e96c9d1fdf7368c76d7f728074e81d12091881d90",
    ('zero_heads', 'qcow2', True, 4096):
        "92b4b6542869c46cb4dcd32850f91f007a92f15811ed76e44300eefff69c645b",
    ('zero_heads', 'raw', False, 65536):
        "48cdf7b98a8fe5911d2542171f114a7a4d39d67abeb9399fd519290b483286bf",
    ('chain', 'qcow2', False, 65536):
        "d1e743fe251bdbad7e3b6524290957f4ff86f905f069ad111a6a05e1fcfbe2bf",
    ('chain', 'qcow2', False, 4096):
        "8b8d4d937806e70d6b4110f602a3aed7bac7d6a10526ea62e0a815ed190ad691",
    ('chain', 'qcow2', True, 65536):
        "1deec17152938f6ba771e2e96092e50437972f4477706e0d0f9c14640a2bdfc8",
    ('chain', 'qcow2', True, 4096):
        "feb3849bbd67a91514de7c230e3c25c3d5cca4d2422caf64a0fd5bd135eb9fd7",
    ('chain', 'raw', False, 65536):
        "874b166db5c7376188fb4bd1b454824d0e56cee8d1891a54f91e02b3e470ee21",
}

CASES = [(name, fmt, compress, cluster) for name in INPUTS
         for fmt, compress, cluster in (("qcow2", False, 65536), ("qcow2", False, 4096),
                                        ("qcow2", True, 65536), ("qcow2", True, 4096),
                                        ("raw", False, 65536))]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source(tmp_path: Path, name: str) -> Path:
    src = tmp_path / (f"{name}.qcow2" if name == "chain" else f"{name}.raw")
    INPUTS[name](src)
    return src


@pytest.mark.parametrize(("name", "fmt", "compress", "cluster"), CASES)
def test_qcow2_convert_output_bytes_are_pinned(tmp_path: Path, name: str, fmt: str,
                                               compress: bool, cluster: int) -> None:
    src = _source(tmp_path, name)
    out = tmp_path / f"out.{fmt}"
    convert(src, out, output_format=fmt, compress=compress, cluster_size=cluster)
    assert digest(out) == GOLDEN[(name, fmt, compress, cluster)]


@needs_qemu_img
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_qcow2_convert_paths_agree_and_qemu_reads_them(tmp_path: Path, name: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel copy and the buffered copy write one file; qemu-img finds it clean."""
    src = _source(tmp_path, name)
    flat = tmp_path / "flat.raw"
    convert(src, flat, output_format="raw")
    for cluster in (16384, 65536, 2 * MiB):
        fast, slow = tmp_path / f"fast{cluster}.qcow2", tmp_path / f"slow{cluster}.qcow2"
        convert(src, fast, cluster_size=cluster)
        with monkeypatch.context() as patch:
            patch.setattr(convert_module, "KERNEL_COPY", False)
            convert(src, slow, cluster_size=cluster)
        assert fast.read_bytes() == slow.read_bytes()
        assert_qemu_clean(fast)
        qemu_compare(fast, flat)
    packed = tmp_path / "packed.qcow2"
    convert(src, packed, compress=True, workers=3)
    assert_qemu_clean(packed)
    qemu_compare(packed, flat)


def test_qcow2_convert_copies_in_user_space_where_the_kernel_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXDEV (another file system, an old kernel): pread/pwrite from then on, same bytes."""
    src = _source(tmp_path, "mixed")
    calls: list[int] = []

    def refuse(*args: int) -> int:
        calls.append(args[2])
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    for fmt in ("qcow2", "raw"):
        calls.clear()
        out = tmp_path / f"out.{fmt}"
        convert(src, out, output_format=fmt)
        assert digest(out) == GOLDEN[("mixed", fmt, False, 65536)]
        assert len(calls) == 1


def test_qcow2_convert_short_kernel_copies(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """copy_file_range may move fewer bytes than asked, or none at the source's end."""
    src = _source(tmp_path, "wide")
    real = os.copy_file_range
    rng = random.Random(19)

    def short(src_fd: int, dst_fd: int, count: int, offset_src: int, offset_dst: int) -> int:
        if rng.random() < 0.1:
            return 0
        return real(src_fd, dst_fd, min(count, rng.randrange(1, 300_000)), offset_src,
                    offset_dst)

    monkeypatch.setattr(os, "copy_file_range", short)
    out = tmp_path / "out.qcow2"
    convert(src, out)
    assert digest(out) == GOLDEN[("wide", "qcow2", False, 65536)]


def test_qcow2_convert_disk_full_during_a_kernel_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC is no reason to fall back: one line naming the output, the old file kept."""
    src = _source(tmp_path, "mixed")
    out = tmp_path / "out.qcow2"
    out.write_bytes(b"previous")

    def full(*args: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    assert main(["qcow2", "convert", "-O", "qcow2", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "No space left" in err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.raw", "out.qcow2"]
