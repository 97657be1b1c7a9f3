"""qcow2 behaviour users compare with qemu-img, and outputs that must never be damaged:
backing chains that would eat themselves, converts of unaligned data, overlays whose
backing file moved, small-cluster overlays, snapshots and bitmaps in `qcow2 info`."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from qcow2_helpers import (
    MiB,
    assert_qemu_clean,
    needs_qemu_img,
    patterned,
    qemu_compare,
    qemu_img,
)

from imagebuild.cli import main
from imagebuild.container.qcow2.image import Qcow2Image
from imagebuild.errors import InputError

pytestmark = needs_qemu_img


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1: an output that is a file in the base's backing chain --------------------------------
def test_qcow2_create_refuses_its_own_backing_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    y = tmp_path / "Y.qcow2"
    with Qcow2Image.create(y, 4 * MiB) as image:
        image.pwrite(patterned(MiB, 1), 0)
    before = digest(y)
    code, _, err = run(capsys, "qcow2", "create", str(y), "-b", "Y.qcow2")
    assert code == 1 and "backing chain" in err and str(y) in err
    assert digest(y) == before


def test_qcow2_create_refuses_any_name_of_a_chain_member(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Compared by device and inode: a hard link or a symlink is the same file."""
    a = tmp_path / "a.qcow2"
    b = tmp_path / "b.qcow2"
    with Qcow2Image.create(a, 4 * MiB) as image:
        image.pwrite(patterned(MiB, 2), 0)
    Qcow2Image.create(b, backing_file="a.qcow2").close()
    os.link(a, tmp_path / "hard.qcow2")
    (tmp_path / "soft.qcow2").symlink_to(a)
    before = digest(a)
    for name in ("a.qcow2", "hard.qcow2", "soft.qcow2"):
        code, _, err = run(capsys, "qcow2", "create", str(tmp_path / name), "-b", "b.qcow2")
        assert code == 1 and "backing chain" in err, name
    assert digest(a) == before
    with pytest.raises(InputError):
        Qcow2Image.create(tmp_path / "hard.qcow2", backing_file="b.qcow2")
    assert digest(a) == before


def test_qcow2_convert_refuses_its_input_and_its_backing_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output that is the input, a link to it, or a file it reads through is refused and
    left as it was (qemu-img's image locks refuse the same)."""
    a = tmp_path / "a.qcow2"
    b = tmp_path / "b.qcow2"
    with Qcow2Image.create(a, 4 * MiB) as image:
        image.pwrite(patterned(MiB, 3), 0)
    Qcow2Image.create(b, backing_file="a.qcow2").close()
    (tmp_path / "link.qcow2").symlink_to(b)
    before = {p.name: digest(p) for p in (a, b)}
    for out in ("b.qcow2", "link.qcow2", "a.qcow2"):
        code, _, err = run(capsys, "qcow2", "convert", "-O", "qcow2", str(b),
                           str(tmp_path / out))
        assert code == 1 and "backing chain" in err, out
    assert {p.name: digest(p) for p in (a, b)} == before
    assert (tmp_path / "link.qcow2").is_symlink()


def test_customize_refuses_to_replace_a_file_in_the_base_chain(
        built: dict[str, Path], tmp_path: Path, sde: int) -> None:
    from imagebuild.pipeline.customize import customize

    a = tmp_path / "A.qcow2"
    b = tmp_path / "B.qcow2"
    shutil.copyfile(built["amd64.qcow2"], a)
    customize(a, b, sets=["plan9.console=1"], files=[])
    before = digest(a)
    with pytest.raises(InputError, match="backing chain"):
        customize(b, a, sets=["plan9.console=2"], files=[])
    assert digest(a) == before
    assert_qemu_clean(b)


# -- 6: convert -c with two data extents in one cluster -------------------------------------
def test_qcow2_convert_compress_extents_sharing_a_cluster(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    with open(raw, "wb") as f:  # data at 0 and at 32 KiB, a hole between: one 64 KiB cluster
        f.truncate(4 * MiB)
        f.write(patterned(4096, 3))
        f.seek(32768)
        f.write(patterned(4096, 4))
        f.seek(3 * MiB + 512)
        f.write(b"x" * 100)
    out = tmp_path / "out.qcow2"
    assert main(["qcow2", "convert", "-c", "-O", "qcow2", str(raw), str(out)]) == 0
    assert_qemu_clean(out)
    qemu_compare(out, raw)


# -- 16: an overlay whose backing file was moved --------------------------------------------
def test_qcow2_info_and_inspect_of_overlay_with_moved_backing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "o.qcow2"
    Qcow2Image.create(base, 8 * MiB).close()
    with Qcow2Image.create(overlay, backing_file="base.qcow2") as image:
        image.pwrite(b"new", 0)
    base.rename(tmp_path / "moved.qcow2")
    code, out, err = run(capsys, "qcow2", "info", "--output", "json", str(overlay))
    assert code == 0, err
    ours = json.loads(out)
    theirs = json.loads(qemu_img("info", "--output=json", overlay).stdout)
    assert ours == theirs
    code, out, _ = run(capsys, "qcow2", "info", str(overlay))
    assert code == 0 and out == qemu_img("info", overlay).stdout
    code, out, err = run(capsys, "inspect", "--plain", str(overlay))
    assert code == 1 and "backing base.qcow2" in out
    assert f"{overlay}: backing file 'base.qcow2' not found" in err
    for verb in (["qcow2", "map", str(overlay)], ["qcow2", "check", str(overlay)],
                 ["qcow2", "convert", str(overlay), str(tmp_path / "flat.qcow2")],
                 ["ls", str(overlay), "9fat:/"]):
        code, _, err = run(capsys, *verb)
        assert code == 1 and f"{overlay}: backing file 'base.qcow2' not found" in err, verb
        assert err.count("\n") == 1
    assert not (tmp_path / "flat.qcow2").exists()


def test_qcow2_missing_backing_deeper_in_the_chain_names_its_owner(tmp_path: Path) -> None:
    Qcow2Image.create(tmp_path / "a.qcow2", MiB).close()
    Qcow2Image.create(tmp_path / "b.qcow2", backing_file="a.qcow2").close()
    Qcow2Image.create(tmp_path / "c.qcow2", backing_file="b.qcow2").close()
    (tmp_path / "a.qcow2").unlink()
    from imagebuild.container.qcow2.backing import BackingFileMissing

    with pytest.raises(BackingFileMissing, match=r"b\.qcow2: backing file 'a\.qcow2'"):
        Qcow2Image.open(tmp_path / "c.qcow2")
    with pytest.raises(BackingFileMissing, match=r"new\.qcow2: backing file 'nope'"):
        Qcow2Image.create(tmp_path / "new.qcow2", backing_file="nope")


# -- 17: 512-byte clusters with a backing file; no partial output ---------------------------
@pytest.mark.parametrize("cluster", [512, 4096, 8192])
def test_qcow2_create_small_clusters_with_backing_like_qemu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: int) -> None:
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "b.qcow2", "1M")
    ours = tmp_path / "o.qcow2"
    theirs = tmp_path / "q.qcow2"
    code, _, err = run(capsys, "qcow2", "create", "--cluster-size", str(cluster),
                       "-b", "b.qcow2", "-F", "qcow2", str(ours))
    assert code == 0, err
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", "-b", "b.qcow2",
             "-F", "qcow2", theirs)
    assert_qemu_clean(ours)
    # the same header extensions (QEMU writes the feature name table only above 4 KiB)
    assert (Qcow2Image.open(ours, backing=False).header.extensions
            == Qcow2Image.open(theirs, backing=False).header.extensions)
    info = json.loads(qemu_img("info", "--output=json", ours).stdout)
    assert info["cluster-size"] == cluster and info["backing-filename"] == "b.qcow2"


def test_qcow2_verbs_leave_no_partial_output(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    keep = tmp_path / "keep.qcow2"
    keep.write_bytes(b"precious")
    raw = tmp_path / "src.raw"
    nibbles = bytes(range(16)) * 16  # half-compressible data spreads over the file
    raw.write_bytes(random.Random(6).randbytes(4 * MiB).translate(nibbles))
    bad = tmp_path / "bad.qcow2"  # compressed clusters whose last quarter is zeroed
    qemu_img("convert", "-c", "-O", "qcow2", raw, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) * 3 // 4 :] = bytes(len(data) - len(data) * 3 // 4)
    bad.write_bytes(data)
    deep = tmp_path / ("d" * 200) / ("e" * 240)  # a backing name too long for 512 B clusters
    deep.parent.mkdir()
    Qcow2Image.create(deep, MiB).close()
    inputs = sorted(["keep.qcow2", "src.raw", "bad.qcow2", "d" * 200])
    failing = [
        ["qcow2", "create", "--cluster-size", "512", "-b", str(deep.relative_to(tmp_path)),
         str(keep)],
        ["qcow2", "create", "--cluster-size", "3", str(keep), "1M"],
        ["qcow2", "create", "--cluster-size", "512", str(keep), "1E"],
        ["qcow2", "create", str(keep), "-b", "missing.qcow2"],
        ["qcow2", "convert", "-O", "qcow2", str(bad), str(keep)],
        ["qcow2", "convert", "-O", "raw", str(bad), str(keep)],
    ]
    for argv in failing:
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.count("\n") == 1, (argv, err)
        assert keep.read_bytes() == b"precious", argv
        assert sorted(p.name for p in tmp_path.iterdir()) == inputs, argv
    new = tmp_path / "new.qcow2"
    code, _, _ = run(capsys, "qcow2", "create", "--cluster-size", "3", str(new), "1M")
    assert code == 1 and not new.exists()


# -- 18: snapshots and persistent bitmaps in qcow2 info -------------------------------------
def test_qcow2_info_lists_snapshots_and_bitmaps_like_qemu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "64M")
    with Qcow2Image.open(path, writable=True) as image:
        image.pwrite(patterned(MiB, 5), 0)
    qemu_img("snapshot", "-c", "first", path)
    qemu_img("snapshot", "-c", "second snapshot, a longer name", path)
    qemu_img("bitmap", "--add", path, "bm0")
    qemu_img("bitmap", "--add", "-g", "128K", "--disable", path, "b1")
    for output in ("json", "human"):
        code, out, err = run(capsys, "qcow2", "info", "--output", output, str(path))
        assert code == 0, err
        theirs = qemu_img("info", f"--output={output}", path).stdout
        if output == "json":
            ours = json.loads(out)
            assert ours == json.loads(theirs)
            assert [s["name"] for s in ours["snapshots"]] == [
                "first", "second snapshot, a longer name"]
            assert [b["name"] for b in ours["format-specific"]["data"]["bitmaps"]] == [
                "bm0", "b1"]
        else:
            assert out == theirs


def test_qcow2_info_of_v2_image_with_snapshot_like_qemu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "1M")
    qemu_img("snapshot", "-c", "s", path)
    code, out, _ = run(capsys, "qcow2", "info", "--output", "json", str(path))
    assert code == 0
    assert json.loads(out) == json.loads(qemu_img("info", "--output=json", path).stdout)


# -- convert: threads and durability ----------------------------------------------------------
def _mixed_raw(path: Path, size: int, seed: int) -> None:
    """Holes, compressible and incompressible runs, unaligned extents."""
    rng = random.Random(seed)
    nibbles = bytes(range(16)) * 16
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(40):
            at = rng.randrange(size - 300_000)
            n = rng.randrange(1, 300_000)
            data = rng.randbytes(n)
            f.seek(at)
            f.write(data if rng.random() < 0.3 else data.translate(nibbles))


def test_qcow2_convert_compress_threads_write_the_same_bytes(tmp_path: Path) -> None:
    from imagebuild.container.qcow2.convert import convert

    raw = tmp_path / "in.raw"
    _mixed_raw(raw, 24 * MiB, 7)
    outputs = []
    for workers in (1, 2, 8):
        out = tmp_path / f"c{workers}.qcow2"
        convert(raw, out, compress=True, workers=workers)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert_qemu_clean(tmp_path / "c8.qcow2")
    qemu_compare(tmp_path / "c8.qcow2", raw)
    flat = tmp_path / "flat.raw"
    convert(tmp_path / "c8.qcow2", flat, output_format="raw")
    assert flat.read_bytes() == raw.read_bytes()


def test_qcow2_convert_fsyncs_only_when_asked(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-img convert's default cache mode (unsafe) never fsyncs; -t/--sync does."""
    raw = tmp_path / "in.raw"
    _mixed_raw(raw, 4 * MiB, 8)
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    for argv, synced in ((["-O", "qcow2"], False), (["-O", "raw"], False),
                         (["-c", "-O", "qcow2"], False), (["--sync", "-O", "qcow2"], True),
                         (["-t", "writeback", "-O", "raw"], True)):
        calls.clear()
        out = tmp_path / "out.img"
        assert main(["qcow2", "convert", *argv, str(raw), str(out)]) == 0
        assert bool(calls) == synced, argv
        fmt = "raw" if "raw" in argv else "qcow2"
        qemu_compare(out, raw, fmt_a=fmt)


# -- refusal paths the mutation check found untested -------------------------------------------
def test_qcow2_unknown_incompatible_bit_named_from_the_feature_table(tmp_path: Path) -> None:
    """qcow2.txt "Feature name table": an unknown incompatible bit is named by the image."""
    import struct

    from imagebuild.errors import UnsupportedImageError

    path = tmp_path / "f.qcow2"
    Qcow2Image.create(path, MiB).close()  # 64 KiB clusters: the table is there
    data = bytearray(path.read_bytes())
    table = data.index(struct.pack(">BB", 0, 4) + b"extended L2 entries")
    # rename bit 4's entry into bit 9 "frobnication", then set bit 9
    data[table : table + 48] = struct.pack(">BB46s", 0, 9, b"frobnication")
    data[72:80] = struct.pack(">Q", 1 << 9)
    path.write_bytes(data)
    with pytest.raises(UnsupportedImageError, match=r"unknown features: frobnication$"):
        Qcow2Image.open(path)
    data[72:80] = struct.pack(">Q", (1 << 9) | (1 << 11))
    path.write_bytes(data)
    with pytest.raises(UnsupportedImageError, match=r"frobnication, bit 11$"):
        Qcow2Image.open(path)


@pytest.mark.parametrize("size,cluster", [(0, 65536), (MiB, 512), (3 * MiB + 512, 4096)])
def test_qcow2_new_header_fields_equal_qemu_img(tmp_path: Path, size: int, cluster: int) -> None:
    """Every header field of a new image as qemu-img create writes it (offsets aside)."""
    from imagebuild.container.qcow2.header import Qcow2Header

    ours, theirs = tmp_path / "o.qcow2", tmp_path / "q.qcow2"
    Qcow2Image.create(ours, size, cluster_size=cluster).close()
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", theirs, str(size))
    fields = []
    for path in (ours, theirs):
        data = path.read_bytes()
        header = Qcow2Header.unpack(data[:cluster], str(path), len(data))
        fields.append({k: getattr(header, k) for k in Qcow2Header.__slots__
                       if k not in ("l1_table_offset", "refcount_table_offset",
                                    "refcount_table_clusters")})
    assert fields[0] == fields[1]
    with Qcow2Image.open(ours) as image:  # and it opens again
        assert image.size == size


def test_qcow2_header_filling_the_whole_first_cluster_is_accepted(tmp_path: Path) -> None:
    """512-byte clusters: 112 header + 16 backing format extension + 8 end = 136 bytes,
    so a 376-byte backing name fills cluster 0 exactly; one byte more is refused."""
    from imagebuild.errors import UnsupportedImageError

    sub = tmp_path / ("d" * 200)
    sub.mkdir()
    for length, fits in ((376, True), (377, False)):
        name = f"{sub.name}/" + "b" * (length - len(sub.name) - 1)
        Qcow2Image.create(tmp_path / name, MiB).close()
        out = tmp_path / f"o{length}.qcow2"
        if fits:
            Qcow2Image.create(out, cluster_size=512, backing_file=name).close()
            assert_qemu_clean(out)
        else:
            with pytest.raises(UnsupportedImageError, match="more than one 512-byte cluster"):
                Qcow2Image.create(out, cluster_size=512, backing_file=name)


def test_qcow2_create_overlay_over_an_unrelated_file_is_allowed(tmp_path: Path) -> None:
    """Only files in the chain are refused: replacing an unrelated file works as before."""
    Qcow2Image.create(tmp_path / "base.qcow2", MiB).close()
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"old")
    with Qcow2Image.create(other, backing_file="base.qcow2") as image:
        assert image.backing is not None and image.size == MiB
    assert_qemu_clean(other)
