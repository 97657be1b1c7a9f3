"""Fuzzing the ISO 9660 reader: the ISO targets with bytes of their metadata changed.

Regions: the hybrid's MBR entry for the ESP, the primary and Joliet volume
descriptors, the El Torito boot record and catalog, the path table, the directory
records of the root and of /rc/bin (extent, data length, flags, record and identifier
lengths) in both trees, and mk9660's Plan 9 system-use fields (our images carry those
in place of Rock Ridge).  The metadata is found by a small parser written here from
ECMA-119 and El Torito, not by our reader.  Both-byte-order fields are written in both
orders, so a case gets past the first consistency check and reaches what uses the value.

Each case runs `inspect`, `inspect --json`, `ls` and `cat` on the `iso:`, `joliet:`
and `esp:` trees in a limited child (tests/test_fuzz.py's runner), and every verb must
end with status 0 or 1, on failure with exactly one line naming the image, leaving the
image as it was.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_fuzz import (
    INTERESTING,
    KNOWN_LIMIT,
    TIME_LIMIT,
    Runner,
    _build,
    apply,
    check_verbs,
    restore,
)
from tests.test_fuzz import fuzz_root as fuzz_root  # the module-scoped demo root, shared

BLOCK = 2048
CASES = 8 * int(os.environ.get("FUZZ_SCALE", "1"))  # seeds per region kind and image


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    r = Runner(tmp_path_factory.mktemp("fuzz-iso-run"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def iso_images(fuzz_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fuzz-iso")
    images = {}
    for target in ("386.iso", "amd64.iso"):
        images[target] = out / target
        _build([target, "--root", str(fuzz_root), "-o", str(images[target])])
    return images


# -- where the metadata is (ECMA-119, El Torito), parsed here ---------------------------------


@dataclass(frozen=True)
class IsoField:
    at: int  # byte offset in the image
    width: int  # 1, 2 or 4 bytes of value
    order: str  # "le", "be" or "both" (the LE copy, then the BE copy)

    def encode(self, value: int) -> bytes:
        value &= (1 << (8 * self.width)) - 1
        little = value.to_bytes(self.width, "little")
        big = value.to_bytes(self.width, "big")
        return {"le": little, "be": big, "both": little + big}[self.order]


@dataclass(frozen=True)
class IsoRegion:
    name: str
    offset: int
    length: int
    fields: tuple[IsoField, ...]


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def directory_records(data: bytes, extent: int, length: int) -> list[int]:
    """The image offsets of the records of the directory at block `extent`."""
    out = []
    base = extent * BLOCK
    pos = 0
    while pos < length:
        size = data[base + pos]
        if size == 0:
            pos = (pos // BLOCK + 1) * BLOCK
            continue
        out.append(base + pos)
        pos += size
    return out


def record_fields(at: int) -> list[IsoField]:
    """A directory record's length, extent, data length, flags and identifier length."""
    return [IsoField(at, 1, "le"), IsoField(at + 2, 4, "both"), IsoField(at + 10, 4, "both"),
            IsoField(at + 25, 1, "le"), IsoField(at + 32, 1, "le")]


def sysuse_fields(data: bytes, at: int) -> list[IsoField]:
    """mk9660's Plan 9 field after the identifier: the name, uid and gid lengths, the mode."""
    name_len = data[at + 32]
    use = at + 33 + name_len + ((33 + name_len) & 1)
    fields = [IsoField(use, 1, "le")]
    pos = use
    for _ in range(2):
        pos += 1 + data[pos]
        fields.append(IsoField(pos, 1, "le"))
    pos += 1 + data[pos]
    pos += (pos - use) & 1
    return [*fields, IsoField(pos, 4, "both")]


def find_child(data: bytes, extent: int, length: int, name: bytes, joliet: bool) -> tuple[int, int]:
    want = name.decode().encode("utf-16-be") if joliet else name.upper()
    for at in directory_records(data, extent, length):
        ident = data[at + 33 : at + 33 + data[at + 32]]
        if ident.split(b";")[0] in (want, name):
            return _u32(data, at + 2), _u32(data, at + 10)
    raise AssertionError(f"no {name!r} in the directory at block {extent}")


def directory_region(data: bytes, name: str, extent: int, length: int,
                     sysuse: bool) -> IsoRegion:
    fields = []
    for at in directory_records(data, extent, length):
        fields += record_fields(at)
        if sysuse and data[at + 32] > 1:  # not . or ..
            fields += sysuse_fields(data, at)
    return IsoRegion(name, extent * BLOCK, min(length, BLOCK), tuple(fields))


def descriptor_region(name: str, block: int) -> IsoRegion:
    at = block * BLOCK
    return IsoRegion(name, at, 190, (
        IsoField(at + 80, 4, "both"), IsoField(at + 120, 2, "both"),
        IsoField(at + 124, 2, "both"), IsoField(at + 128, 2, "both"),
        IsoField(at + 132, 4, "both"), IsoField(at + 140, 4, "le"), IsoField(at + 148, 4, "be"),
        *record_fields(at + 156)))


def iso_regions(path: Path) -> list[IsoRegion]:
    data = path.read_bytes()
    kinds = {data[b * BLOCK] for b in range(16, 24)
             if data[b * BLOCK + 1 : b * BLOCK + 6] == b"CD001"}
    assert {0, 1, 2, 255} <= kinds, kinds
    pvd, boot, svd = 16 * BLOCK, 17 * BLOCK, 18 * BLOCK
    assert data[pvd] == 1 and data[boot] == 0 and data[svd] == 2
    mbr = [IsoField(446 + 16 * i + at, w, "le") for i in range(2) for at, w in
           ((0, 1), (4, 1), (8, 4), (12, 4))]  # the hybrid's ESP: status, type, start, sectors
    regions = [IsoRegion("mbr", 446, 32, tuple(mbr)),
               descriptor_region("pvd", 16), descriptor_region("svd", 18),
               IsoRegion("boot-record", boot, 80, (IsoField(boot + 0x47, 4, "le"),))]
    catalog = _u32(data, boot + 0x47) * BLOCK
    entry = [(0, 1, "le"), (1, 1, "le"), (2, 2, "le"), (6, 2, "le"), (8, 4, "le")]
    regions.append(IsoRegion("catalog", catalog, 128, (
        IsoField(catalog, 1, "le"), IsoField(catalog + 1, 1, "le"),
        IsoField(catalog + 28, 2, "le"), IsoField(catalog + 30, 1, "le"),
        *(IsoField(catalog + 32 + at, w, o) for at, w, o in entry),
        IsoField(catalog + 64, 1, "le"), IsoField(catalog + 65, 1, "le"),
        IsoField(catalog + 66, 2, "le"),
        *(IsoField(catalog + 96 + at, w, o) for at, w, o in entry))))
    table, table_size = _u32(data, pvd + 140) * BLOCK, _u32(data, pvd + 132)
    fields, pos = [], 0
    while pos < table_size:
        fields += [IsoField(table + pos, 1, "le"), IsoField(table + pos + 2, 4, "le"),
                   IsoField(table + pos + 6, 2, "le")]
        pos += 8 + data[table + pos] + (data[table + pos] & 1)
    regions.append(IsoRegion("path-table", table, table_size, tuple(fields)))
    for tree, vd, joliet in (("dir", pvd, False), ("joliet", svd, True)):
        extent, length = _u32(data, vd + 156 + 2), _u32(data, vd + 156 + 10)
        regions.append(directory_region(data, f"{tree}-root", extent, length, not joliet))
        for name in (b"rc", b"bin"):
            extent, length = find_child(data, extent, length, name, joliet)
        regions.append(directory_region(data, f"{tree}-rc-bin", extent, length, not joliet))
    return regions


def iso_mutate(region: IsoRegion, rng: random.Random,
               pointers: list[int]) -> list[tuple[int, bytes]]:
    """One to three patches: a byte, random bytes, an extreme number or a block number in
    a field (of the image's metadata, its last block, past its end)."""
    patches = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["byte", "random", "number", "number", "pointer"])
        if kind == "byte":
            patches.append((region.offset + rng.randrange(region.length),
                            bytes([rng.randrange(256)])))
        elif kind == "random":
            at = rng.randrange(region.length)
            patches.append((region.offset + at,
                            rng.randbytes(min(rng.randint(1, 16), region.length - at))))
        else:
            field = rng.choice(region.fields)
            value = rng.choice(INTERESTING if kind == "number" else pointers)
            patches.append((field.at, field.encode(value)))
    return patches


# -- the verbs ----------------------------------------------------------------------------------


ISO_VERBS = [["inspect"], ["inspect", "--json"], ["ls", "iso:/rc/bin"], ["cat", "iso:/rc/bin/big"],
             ["ls", "joliet:/rc/bin"], ["cat", "joliet:/rc/bin/hello"], ["ls", "esp:/"],
             ["cat", "esp:/9bootfat"]]

# (image, kind, seed) -> the bug, kept as strict xfails until fixed
KNOWN: dict[tuple[str, str, int], str] = {}


def _params() -> list[object]:
    kinds = {"mbr": CASES // 2, "pvd": CASES, "svd": CASES // 2, "boot-record": CASES // 4,
             "catalog": CASES, "path-table": CASES // 4, "dir-root": CASES, "dir-rc-bin": CASES,
             "joliet-root": CASES // 2, "joliet-rc-bin": CASES // 2}
    out = []
    for target in ("386.iso", "amd64.iso"):
        for kind, count in kinds.items():
            for seed in range(count):
                marks = []
                if (target, kind, seed) in KNOWN:
                    marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[target, kind, seed]))
                out.append(pytest.param(target, kind, seed, id=f"{target}-{kind}-{seed}",
                                        marks=marks))
    return out


@pytest.mark.parametrize(("target", "kind", "seed"), _params())
def test_iso(runner: Runner, iso_images: dict[str, Path], target: str, kind: str,
             seed: int) -> None:
    image = iso_images[target]
    regions = iso_regions(image)
    region = next(r for r in regions if r.name == kind)
    size = image.stat().st_size // BLOCK
    pointers = [*sorted({r.offset // BLOCK for r in regions}), 0, 16, size - 1, size,
                1 << 31, 0xFFFF_FFFF]
    rng = random.Random(f"{target}/{kind}/{seed}")
    patches = iso_mutate(region, rng, pointers)
    patched = apply(image, patches)
    limit = KNOWN_LIMIT if (target, kind, seed) in KNOWN else TIME_LIMIT
    try:
        problems = check_verbs(runner, image, ISO_VERBS, limit)
    finally:
        restore(patched)
    shown = [(hex(at), data.hex()) for at, data in patches]
    assert not problems, f"{kind} patched with {shown}: " + "; ".join(problems)


# -- regressions ----------------------------------------------------------------------------------


def test_owner_that_is_not_utf8(runner: Runner, iso_images: dict[str, Path]) -> None:
    """A Plan 9 uid byte 0xFF in a system-use field: UnicodeDecodeError in ls and inspect."""
    image = iso_images["amd64.iso"]
    data = image.read_bytes()
    at = next(r for r in iso_regions(image) if r.name == "dir-rc-bin").offset
    records = [a for a in directory_records(data, at // BLOCK, BLOCK) if data[a + 32] > 1]
    uid = sysuse_fields(data, records[0])[1].at + 1  # the first byte of the uid
    patched = apply(image, [(uid, b"\xff")])
    try:
        problems = check_verbs(runner, image, ISO_VERBS)
        code, stderr = runner.run(["ls", str(image), "iso:/rc/bin"])
    finally:
        restore(patched)
    assert not problems, problems
    assert code == 0, stderr


def test_cat_streams_a_file_past_the_end(runner: Runner, iso_images: dict[str, Path]) -> None:
    """A data length reaching past the image's end is refused before anything is read."""
    image = iso_images["386.iso"]
    data = image.read_bytes()
    at = next(r for r in iso_regions(image) if r.name == "dir-rc-bin").offset
    big = next(a for a in directory_records(data, at // BLOCK, BLOCK)
               if data[a + 33 : a + 33 + data[a + 32]].lower().startswith(b"big"))
    patched = apply(image, [(big + 10, IsoField(0, 4, "both").encode(0xFFFF_FFF0))])
    try:
        code, stderr = runner.run(["cat", str(image), "iso:/rc/bin/big"])
    finally:
        restore(patched)
    assert code == 1 and "past the image's end" in stderr and image.name in stderr, stderr


def test_overlapping_directories_are_refused(runner: Runner,
                                             iso_images: dict[str, Path]) -> None:
    """Directories whose extents overlap (here every one of /'s subdirectories covers a long
    run of zero blocks) made walk read the same bytes again and again: quadratic in the
    image's size.  More directory bytes than the image holds is an error."""
    from imagebuild.fs.iso9660.reader import IsoFormatError, open_iso

    image = iso_images["386.iso"]
    data = image.read_bytes()
    blocks = len(data) // BLOCK
    zero = [not any(data[b * BLOCK : (b + 1) * BLOCK]) for b in range(blocks)]
    start, end, b = 0, 0, 17
    while b < blocks:  # the longest run of zero blocks past the descriptors
        if zero[b]:
            e = b
            while e < blocks and zero[e]:
                e += 1
            if e - b > end - start:
                start, end = b, e
            b = e
        b += 1
    root = next(r for r in iso_regions(image) if r.name == "dir-root").offset // BLOCK
    subdirs = [a for a in directory_records(data, root, BLOCK)
               if data[a + 32] > 1 and data[a + 25] & 2]
    assert len(subdirs) * (end - start) // 2 > blocks, "the run is long enough to overlap"
    both = IsoField(0, 4, "both")
    patches = []
    for i, at in enumerate(subdirs):
        patches += [(at + 2, both.encode(start + i)),
                    (at + 10, both.encode((end - start - i) * BLOCK))]
    patched = apply(image, patches)
    try:
        problems = check_verbs(runner, image, ISO_VERBS)
        iso, close = open_iso(str(image))
        try:
            with pytest.raises(IsoFormatError, match="directories overlap"):
                iso.walk()
        finally:
            close()
    finally:
        restore(patched)
    assert not problems, problems


def test_inspect_names_the_image_on_a_bad_partition(runner: Runner,
                                                    iso_images: dict[str, Path]) -> None:
    """The hybrid's ESP entry running past the image: inspect's one line named no file."""
    image = iso_images["amd64.iso"]
    patched = apply(image, [(446 + 12, (1 << 30).to_bytes(4, "little"))])
    try:
        code, stderr = runner.run(["inspect", str(image)])
    finally:
        restore(patched)
    assert code == 1 and stderr.count("\n") == 1 and image.name in stderr, stderr
