"""QCOW2 against the real qemu-img: images we write pass `qemu-img check` and compare equal
to a raw shadow; images qemu-img writes read back exactly as `qemu-img convert -O raw`."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qcow2_helpers import (
    GiB,
    KiB,
    MiB,
    assert_qemu_clean,
    make_raw,
    needs_qemu_img,
    patterned,
    qemu_check,
    qemu_compare,
    qemu_img,
    qemu_map,
    qemu_raw,
)

from imagebuild.container.qcow2.check import check
from imagebuild.container.qcow2.convert import convert
from imagebuild.container.qcow2.image import Qcow2Image, open_image
from imagebuild.container.qcow2.info import info
from imagebuild.container.qcow2.tools import map_image

pytestmark = needs_qemu_img

# (cluster size, virtual size): sizes chosen so writes can cross L2-table boundaries
# (an L2 table maps cluster_size/8 clusters: 32 KiB of guest data at 512 B, 2 MiB at
# 4 KiB, 512 MiB at 64 KiB) and, at 512 B, refcount-block and refcount-table growth.
GEOMETRIES = [(512, 3 * MiB + 512), (4 * KiB, 9 * MiB + 4096 + 512), (64 * KiB, 1 * GiB + 1536),
              (2 * MiB, 40 * MiB)]


def _write_op(size: int, cluster: int) -> st.SearchStrategy[tuple[int, int, str]]:
    l2_span = cluster * cluster // 8
    anchors = [0, cluster, l2_span, size // 2, size]
    anchored = st.tuples(st.sampled_from(anchors), st.integers(-3 * cluster, 3 * cluster))
    offset = st.one_of(anchored.map(lambda t: t[0] + t[1]), st.integers(0, size - 1))
    length = st.one_of(st.integers(1, 2 * cluster + 3), st.integers(1, 8 * cluster))
    kind = st.sampled_from(["random", "random", "zero", "pattern"])
    return st.tuples(offset, length, kind).map(
        lambda t: (min(max(t[0], 0), size - 1), t[1], t[2]))


@pytest.mark.parametrize("cluster,size", GEOMETRIES, ids=lambda v: str(v))
def test_qcow2_random_writes_pass_qemu_check_and_compare(tmp_path: Path, cluster: int,
                                                        size: int) -> None:
    @settings(max_examples=6, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=st.lists(_write_op(size, cluster), min_size=1, max_size=25),
           flush_every=st.integers(1, 10))
    def run(ops: list[tuple[int, int, str]], flush_every: int) -> None:
        image_path = tmp_path / "t.qcow2"
        shadow_path = tmp_path / "t.raw"
        rng = random.Random(len(ops))
        with Qcow2Image.create(image_path, size, cluster_size=cluster, sync=False) as image, \
                open(shadow_path, "w+b") as shadow:
            shadow.truncate(size)
            for n, (offset, length, kind) in enumerate(ops):
                length = min(length, size - offset)
                data = (rng.randbytes(length) if kind == "random" else bytes(length)
                        if kind == "zero" else patterned(length, n))
                image.data.seek(offset)
                image.data.write(data)
                shadow.seek(offset)
                shadow.write(data)
                if n % flush_every == 0:
                    image.flush()
            offset, length, _ = ops[0]
            shadow.flush()
            length = min(length, size - offset)
            assert image.pread(length, offset) == os.pread(shadow.fileno(), length, offset)
        assert_qemu_clean(image_path)
        qemu_compare(image_path, shadow_path)
        assert check(image_path).clean

    run()


@pytest.fixture(scope="module")
def qemu_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images written by qemu-img itself, covering the formats we must read."""
    d = tmp_path_factory.mktemp("qemu")
    size = 6 * MiB + 4096
    rng = random.Random(7)
    chunks = [(0, b"MBR" * 100), (3 * 65536 + 100, rng.randbytes(300_000)),
              (2 * MiB - 10, patterned(200_000, 3)), (5 * MiB, patterned(65536 * 3, 9)),
              (size - 5000, rng.randbytes(5000))]
    raw = make_raw(d / "src.raw", size, chunks)
    images: dict[str, Path] = {}

    def conv(name: str, *opts: str) -> None:
        images[name] = d / f"{name}.qcow2"
        qemu_img("convert", "-O", "qcow2", *opts, raw, images[name])

    conv("v2", "-o", "compat=0.10")
    conv("v3_4k", "-o", "cluster_size=4096")
    conv("v3_64k")
    conv("v3_2m", "-o", "cluster_size=2M")
    conv("v3_512", "-o", "cluster_size=512")
    conv("compressed", "-c")
    conv("compressed_4k", "-c", "-o", "cluster_size=4096")
    conv("refcount1", "-o", "refcount_bits=1")
    conv("refcount64", "-o", "refcount_bits=64")
    # zero-flagged L2 entries: convert against a backing file writes zeros as zero clusters
    base = make_raw(d / "base.raw", size, [(0, patterned(size, 5))])
    images["base"] = d / "base.qcow2"
    qemu_img("convert", "-O", "qcow2", base, images["base"])
    images["zero_clusters"] = d / "zero_clusters.qcow2"
    qemu_img("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", raw,
             images["zero_clusters"])
    # a chain: overlay (qcow2) -> middle (qcow2) -> raw base, relative names
    images["middle"] = d / "middle.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", images["middle"])
    qemu_img("dd", "-O", "qcow2", f"if={raw}", f"of={images['middle']}", "bs=65536",
             "skip=30", "seek=30", "count=10", "conv=notrunc", check=False)
    images["overlay"] = d / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2",
             "-o", "cluster_size=4096", images["overlay"], "4M")
    return images


QEMU_IMAGE_NAMES = ["v2", "v3_4k", "v3_64k", "v3_2m", "v3_512", "compressed", "compressed_4k",
                    "refcount1", "refcount64", "zero_clusters", "middle", "overlay"]


def test_zero_cluster_fixture_really_has_zero_clusters(qemu_images: dict[str, Path]) -> None:
    extents = qemu_map(qemu_images["zero_clusters"])
    assert any(e["zero"] and e["present"] and e["depth"] == 0 for e in extents)


@pytest.mark.parametrize("name", QEMU_IMAGE_NAMES)
def test_qcow2_reader_matches_qemu_convert(qemu_images: dict[str, Path], tmp_path: Path,
                                           name: str) -> None:
    path = qemu_images[name]
    expected = qemu_raw(path, tmp_path)
    with Qcow2Image.open(path) as image:
        assert image.size == len(expected)
        assert image.pread(image.size, 0) == expected
        # odd-sized reads through the file view give the same bytes
        view = image.data
        view.seek(12345)
        assert view.read(777_777) == expected[12345 : 12345 + 777_777]


@pytest.mark.parametrize("name", QEMU_IMAGE_NAMES)
def test_qcow2_check_matches_qemu_check(qemu_images: dict[str, Path], name: str) -> None:
    path = qemu_images[name]
    rc, report, text = qemu_check(path)
    ours = check(path)
    assert ours.exit_code == rc
    mine = ours.to_json()
    mine["filename"] = report["filename"]
    assert mine == report, text


@pytest.mark.parametrize("name", ["v2", "v3_4k", "compressed", "zero_clusters", "overlay"])
def test_qcow2_map_matches_qemu_map(qemu_images: dict[str, Path], name: str) -> None:
    path = qemu_images[name]
    assert map_image(path) == qemu_map(path)


@pytest.mark.parametrize("name", ["v2", "v3_64k", "overlay"])
def test_qcow2_info_matches_qemu_info(qemu_images: dict[str, Path], name: str) -> None:
    path = qemu_images[name]
    theirs = json.loads(qemu_img("info", "--output=json", path).stdout)
    ours = info(path)
    # actual-size is st_blocks, which delayed allocation may change between two stats
    assert ours.pop("actual-size") > 0 and theirs.pop("actual-size") > 0
    assert ours == theirs


def test_qcow2_overlay_chain_seen_by_qemu(tmp_path: Path) -> None:
    base_raw = make_raw(tmp_path / "base.raw", 8 * MiB, [(0, patterned(8 * MiB, 1))])
    base = tmp_path / "base.qcow2"
    convert(base_raw, base, output_format="qcow2")
    sub = tmp_path / "sub"
    sub.mkdir()
    overlay = sub / "top.qcow2"
    with Qcow2Image.create(overlay, backing_file="../base.qcow2") as image:
        assert image.size == 8 * MiB
        image.pwrite(b"plan9.ini changed", 3 * MiB + 100)  # partial cluster: copy-on-write
        image.pwrite(bytes(70000), 5 * MiB)  # zeros over data: must read as zeros
    chain = qemu_img("info", "--backing-chain", "--output=json", overlay).stdout
    layers = json.loads(chain)
    assert [Path(layer["filename"]).name for layer in layers] == ["top.qcow2", "base.qcow2"]
    assert layers[0]["backing-filename"] == "../base.qcow2"
    assert layers[0]["backing-filename-format"] == "qcow2"
    expected = bytearray(patterned(8 * MiB, 1))
    expected[3 * MiB + 100 : 3 * MiB + 117] = b"plan9.ini changed"
    expected[5 * MiB : 5 * MiB + 70000] = bytes(70000)
    assert qemu_raw(overlay, tmp_path) == bytes(expected)
    with open_image(overlay) as image:
        assert image.pread(image.size, 0) == bytes(expected)
    assert_qemu_clean(overlay)
    # only the touched clusters live in the overlay
    assert os.path.getsize(overlay) < 8 * 65536


def test_qcow2_overlay_over_raw_absolute_path(tmp_path: Path) -> None:
    base_raw = make_raw(tmp_path / "disk.img", 3 * MiB, [(MiB, b"\xff" * 4096)])
    overlay = tmp_path / "o.qcow2"
    with Qcow2Image.create(overlay, backing_file=str(base_raw), backing_format="raw") as image:
        image.pwrite(b"x", MiB + 10)
    found = json.loads(qemu_img("info", "--output=json", overlay).stdout)
    assert found["backing-filename"] == str(base_raw)
    assert found["backing-filename-format"] == "raw"
    data = qemu_raw(overlay, tmp_path)
    assert data[MiB : MiB + 10] == b"\xff" * 10 and data[MiB + 10 : MiB + 11] == b"x"
    assert data[MiB + 11 : MiB + 4096] == b"\xff" * (4096 - 11)


def test_qcow2_convert_compressed_is_read_by_qemu(qemu_images: dict[str, Path],
                                                  tmp_path: Path) -> None:
    src = qemu_images["v3_64k"]
    out = tmp_path / "c.qcow2"
    convert(src, out, output_format="qcow2", compress=True, cluster_size=4096)
    assert_qemu_clean(out)
    _, report, _ = qemu_check(out)
    assert report.get("compressed-clusters", 0) > 10
    qemu_compare(out, src, "qcow2", "qcow2")
    assert check(out).to_json()["compressed-clusters"] == report["compressed-clusters"]


@pytest.mark.parametrize("name", ["overlay", "zero_clusters", "compressed"])
def test_qcow2_convert_to_raw_matches_qemu(qemu_images: dict[str, Path], tmp_path: Path,
                                          name: str) -> None:
    src = qemu_images[name]
    out = tmp_path / "out.raw"
    convert(src, out, output_format="raw")
    expected = qemu_raw(src, tmp_path)
    assert out.read_bytes() == expected
    # sparse: all-zero 64 KiB blocks were not written
    block = 65536
    nonzero = sum(1 for at in range(0, len(expected), block)
                  if expected[at : at + block].strip(b"\0"))
    assert os.stat(out).st_blocks * 512 <= nonzero * block


def test_qcow2_write_into_qemu_compressed_and_zero_images(qemu_images: dict[str, Path],
                                                          tmp_path: Path) -> None:
    for name in ("compressed", "zero_clusters", "v2"):
        src = qemu_images[name]
        path = tmp_path / f"{name}.qcow2"
        path.write_bytes(src.read_bytes())
        if name == "zero_clusters":
            (tmp_path / "base.qcow2").write_bytes(qemu_images["base"].read_bytes())
        shadow = tmp_path / f"{name}.raw"
        shadow.write_bytes(qemu_raw(path, tmp_path))
        rng = random.Random(3)
        with Qcow2Image.open(path, writable=True) as image, open(shadow, "r+b") as f:
            for _ in range(30):
                offset = rng.randrange(image.size)
                data = rng.randbytes(min(rng.randrange(1, 150_000), image.size - offset))
                if rng.random() < 0.3:
                    data = bytes(len(data))
                image.pwrite(data, offset)
                f.seek(offset)
                f.write(data)
        assert_qemu_clean(path)
        qemu_compare(path, shadow)
