"""ISO 9660 images as mk9660 -c9j -B -E writes them, checked with independent readers
(isoinfo, xorriso, 7z, pycdlib) and our reader."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.fs.iso9660 import names
from imagebuild.fs.iso9660.reader import open_iso
from imagebuild.fs.iso9660.voldesc import IsoFormatError
from imagebuild.fs.iso9660.writer import Mk9660Options, write_iso
from imagebuild.fs.proto import ProtoEntry, read_proto

NOW = 1700000000


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    for rel, data in {
        "386/9bootiso": b"\xeb\xfe" + bytes(5000),
        "386/efiboot.fat": bytes(64 * 1024),
        "amd64/9pc64": b"kernel" * 1000,
        "cfg/plan9.ini": b"bootfile=/amd64/9pc64\n",
        "sys/lib/README.LongName": b"same\n",
        "sys/lib/dup": b"same\n",
        "sys/lib/empty": b"",
        "usr/glenda/a": b"a\n",
        "usr/glenda/a.": b"a dot\n",
        "usr/glenda/Weird;name?": b"w\n",
        "usr/glenda/lib/profile": b"profile\n",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    proto = tmp_path / "proto"
    proto.write_text(
        "386\td775 sys sys\n\t9bootiso\t664 sys sys\n\tefiboot.fat\t664 sys sys\n"
        "amd64\td775 sys sys\n\t9pc64\t775 sys sys\n"
        "cfg\td775 sys sys\n\tplan9.ini\t664 sys sys\n"
        "sys\td775 sys sys\n\t+\n"
        "usr\td775 sys sys\n\tglenda\td775 glenda glenda\n\t\t+\n"
    )
    return root, proto


def _write(tmp_path: Path, entries: list[ProtoEntry], name: str = "x.iso",
           **kw: object) -> Path:
    out = tmp_path / name
    options = Mk9660Options("Plan 9 Front (amd64)", NOW, "386/9bootiso", "386/efiboot.fat",
                            NOW)
    for k, v in kw.items():
        setattr(options, k, v)
    with open(out, "w+b") as f:
        write_iso(entries, f, options)
    return out


@pytest.fixture
def iso(tmp_path: Path) -> tuple[Path, list[ProtoEntry]]:
    root, proto = _tree(tmp_path)
    entries = read_proto([proto], root)
    return _write(tmp_path, entries), entries


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def test_isoinfo_reads_descriptors_and_every_entry(iso: tuple[Path, list[ProtoEntry]]) -> None:
    path, entries = iso
    info = _run("isoinfo", "-d", "-i", str(path))
    assert "System id: PLAN 9 BOOT ISO9660" in info
    assert "Volume id: PLAN 9 FRONT (AMD64)" in info
    assert "Joliet with UCS level 2 found" in info
    assert "boot catalog is in sector 20" in info
    joliet = _run("isoinfo", "-J", "-l", "-i", str(path))
    listed: dict[str, int] = {}
    directory = ""
    for line in joliet.splitlines():
        if line.startswith("Directory listing of "):
            directory = line[len("Directory listing of "):]
        match = re.match(r"^[-d]\S+\s+\d+\s+\d+\s+\d+\s+(\d+) .*\]  (.*?) ?$", line)
        if match and match.group(2) not in (".", ".."):
            listed[directory + match.group(2)] = int(match.group(1))
    for e in entries:
        joliet_name = e.path if not names.is_bad_joliet(e.name) else None
        if joliet_name is None:
            continue
        key = joliet_name + ("/" if e.is_dir else "")
        key = key.rstrip("/") if e.is_dir else key
        assert key in listed or key + "/" in {k + "/" for k in listed}, key
        if not e.is_dir:
            assert listed[key] == e.length, key
    iso_listing = _run("isoinfo", "-l", "-i", str(path))
    assert "F000000" in iso_listing and "9BOOTISO" in iso_listing


def test_xorriso_sees_one_bios_and_one_efi_no_emulation_entry(
        iso: tuple[Path, list[ProtoEntry]]) -> None:
    path, _ = iso
    report = subprocess.run(["xorriso", "-indev", str(path), "-report_el_torito", "plain"],
                            capture_output=True, text=True).stdout
    rows = [ln for ln in report.splitlines() if ln.startswith("El Torito boot img :")]
    assert len(rows) == 2
    assert re.search(r"1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4\s", rows[0]), rows
    assert re.search(r"2\s+UEFI\s+y\s+none\s+0x0000\s+0x00\s+128\s", rows[1]), rows
    assert "/386/9bootiso" in report and "/386/efiboot.fat" in report


def test_pycdlib_and_7z_read_the_files(iso: tuple[Path, list[ProtoEntry]]) -> None:
    import io

    import pycdlib

    path, entries = iso
    cd = pycdlib.PyCdlib()
    cd.open(str(path))
    try:
        for e in entries:
            if e.is_dir or names.is_bad_joliet(e.name):
                continue
            data = io.BytesIO()
            cd.get_file_from_iso_fp(data, joliet_path=e.path)
            assert data.getvalue() == e.source.read_bytes(), e.path
        data = io.BytesIO()
        cd.get_file_from_iso_fp(data, iso_path="/AMD64/9PC64")
        assert data.getvalue() == b"kernel" * 1000
    finally:
        cd.close()
    listing = _run("7z", "l", str(path))
    assert "amd64/9pc64" in listing and "6000" in listing


def test_our_reader_gives_plan9_names_modes_owners(iso: tuple[Path, list[ProtoEntry]]) -> None:
    path, entries = iso
    image, close = open_iso(str(path))
    try:
        walked = dict(image.walk())
        for e in entries:
            got = walked[e.path]
            assert (got.mode, got.uid, got.gid, got.is_dir) == (
                e.mode, e.uid or "sys", e.gid or "sys", e.is_dir), e.path
            if not e.is_dir:
                assert image.read_file(e.path) == e.source.read_bytes()
        catalog = image.boot_catalog()
        assert catalog is not None and catalog.default.sector_count == 4
        assert [p for p, _ in catalog.sections] == [0xEF]
    finally:
        close()


def test_same_content_shares_an_extent_and_empty_files_have_none(
        iso: tuple[Path, list[ProtoEntry]]) -> None:
    path, _ = iso
    image, close = open_iso(str(path))
    try:
        long_name = image.stat("/sys/lib/README.LongName")
        assert image.stat("/sys/lib/dup").extent == long_name.extent
        assert image.stat("/sys/lib/empty").extent == 0
    finally:
        close()


def test_volume_size_excludes_path_tables_as_mk9660(iso: tuple[Path, list[ProtoEntry]]) -> None:
    path, _ = iso
    image, close = open_iso(str(path))
    try:
        assert image.primary is not None
        assert image.primary.l_path_table >= image.primary.volume_space_size
        assert os.path.getsize(path) > image.primary.volume_space_size * 2048
    finally:
        close()


def test_reproducible(tmp_path: Path) -> None:
    root, proto = _tree(tmp_path)
    entries = read_proto([proto], root)
    a = _write(tmp_path, entries, "a.iso").read_bytes()
    b = _write(tmp_path, entries, "b.iso").read_bytes()
    assert a == b


def test_path_table_lists_a_directory_whose_record_fills_its_block(tmp_path: Path) -> None:
    """68 bytes of . and .., then 60-byte records: the 33rd ends at byte 2048 exactly;
    mk9660's path.c leaves that directory out, we list it (pycdlib rejects the former)."""
    import pycdlib

    root = tmp_path / "q"
    for i in range(34):
        (root / "top" / f"d{i:07d}").mkdir(parents=True)
    proto = tmp_path / "proto"
    proto.write_text("top\td775 sys sys\n\t+\n")
    entries = [e.replace(uid="sys", gid="sys") for e in read_proto([proto], root)]
    complete = _write(tmp_path, entries, "c.iso", boot_image=None, efi_boot_image=None)
    faithful = _write(tmp_path, entries, "f.iso", boot_image=None, efi_boot_image=None,
                      faithful_path_table=True)
    for path, count in ((complete, 36), (faithful, 35)):
        image, close = open_iso(str(path))
        try:
            assert len(image.path_table()) == count
            assert image.path_table() == image.path_table(big_endian=True)
        finally:
            close()
    cd = pycdlib.PyCdlib()
    cd.open(str(complete))
    cd.close()


@pytest.mark.parametrize("name, message", [
    ("bad\x01name", "control characters"),
    ("emoji\U0001f600", "beyond U+FFFF"),
    ("n" * 200, "at most 255"),
])
def test_names_mk9660_cannot_store_are_refused(tmp_path: Path, name: str, message: str) -> None:
    root, proto = _tree(tmp_path)
    entries = read_proto([proto], root)
    src = root / "sys/lib/dup"
    entries.append(ProtoEntry(f"/sys/{name}", 0o664, "sys", "sys", src, NOW, 5))
    out = tmp_path / "bad.iso"
    with open(out, "w+b") as f, pytest.raises(IsoFormatError, match=re.escape(message)):
        write_iso(entries, f, Mk9660Options("V", NOW, "386/9bootiso", None, NOW))
    assert out.stat().st_size == 0


def test_a_file_past_4gib_is_refused_before_writing(tmp_path: Path) -> None:
    root, proto = _tree(tmp_path)
    big = root / "sys/lib/big"
    with open(big, "wb") as f:
        f.truncate((1 << 32) + 1)
    entries = read_proto([proto], root)
    out = tmp_path / "big.iso"
    with open(out, "w+b") as f, pytest.raises(IsoFormatError, match="32 bits"):
        write_iso(entries, f, Mk9660Options("V", NOW, "386/9bootiso", None, NOW))
    assert out.stat().st_size == 0


def test_missing_boot_image_is_refused(tmp_path: Path) -> None:
    root, proto = _tree(tmp_path)
    entries = [e for e in read_proto([proto], root) if e.name != "efiboot.fat"]
    with open(tmp_path / "o.iso", "w+b") as f, pytest.raises(IsoFormatError, match="-E"):
        write_iso(entries, f, Mk9660Options("V", NOW, "386/9bootiso", "386/efiboot.fat", NOW))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abAB._x", min_size=1, max_size=6), max_size=40))
def test_plan9_qsort_sorts_like_sorted_for_distinct_keys(keys: list[str]) -> None:
    items = sorted(set(keys))[::-1]
    names.plan9_qsort(items, lambda a, b: (a > b) - (a < b))
    assert items == sorted(items)


def test_conform_names_are_numbered_in_tree_order_and_reused() -> None:
    conform = names.ConformMap()
    assert conform.conform("LongDirectory", True) == "D000000"
    assert conform.conform("README", False) == "F000001"
    assert conform.conform("LongDirectory", False) == "D000000"
    assert conform.text() == b"D000000 LongDirectory\nF000001 README\n"
    assert names.is_bad_iso9660("plan9.ini") is False
    assert names.is_bad_iso9660(".profile") and names.is_bad_iso9660("a.b.c")
    assert names.iso_compare("A.", "A") == 0
