"""The boot-chain lint (imagebuild.boot.pc): one test per rule of 9front's PC loader.

Each rule's source is named in a comment: 9front sys/src/boot/pc/{fat.c,sub.c,mem.h}.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.boot.pc import (
    BOOTARGSLEN,
    BOOTFILE_MAX,
    BootLintError,
    carries_loader,
    check_boot_fat,
    read_config,
    visible_names,
)
from imagebuild.disk.device import BlockDevice, BytesStorage
from imagebuild.fs.fat.format import FatFile, FatVolume, format_fat

KERNEL = b"\0" * 100
STOCK = [("9bootfat", b"\xeb\x3c"), ("plan9.ini", b"bootfile=9pc64\nconsole=0\n"),
         ("9pc64", KERNEL)]


def fat(ini: bytes, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    return [("9bootfat", b"\xeb\x3c"), ("plan9.ini", ini), ("9pc64", KERNEL), *extra]


def test_stock_files_pass() -> None:
    check_boot_fat(STOCK, "amd64.qcow2 9fat")
    assert carries_loader(STOCK)
    assert not carries_loader([("plan9.ini", b"bootfile=9pcnone\n")])  # no 9bootfat: no rule


def test_bootfile_must_name_a_file_on_the_fat() -> None:
    # fat.c start(): fatwalk(&fi, &fat, kern) fails -> print("not found"), prompt again
    with pytest.raises(BootLintError, match=r"bootfile=9pcnone: no such file on the boot FAT"):
        check_boot_fat(fat(b"bootfile=9pcnone\n"), "amd64.qcow2 9fat")


def test_bootfile_is_compared_in_lower_case() -> None:
    # fat.c dirname(): 'A'..'Z' become 'a'..'z'; fatwalk(): memcmp(name, path, j) byte for byte
    with pytest.raises(BootLintError, match=r"bootfile=9PC64: 9bootfat compares lower-case 8\.3 "
                                            r"names .*write bootfile=9pc64"):
        check_boot_fat(fat(b"bootfile=9PC64\n"), "x")
    # the device part before the last '!' is not part of the path (sub.c configure)
    with pytest.raises(BootLintError, match=r"write bootfile=sdC0!9fat!9pc64$"):
        check_boot_fat(fat(b"bootfile=sdC0!9fat!9PC64\n"), "x")
    check_boot_fat(fat(b"bootfile=sdC0!9fat!9pc64\n"), "x")
    check_boot_fat(fat(b"bootfile=/9pc64\n"), "x")  # fatwalk skips leading '/'


def test_a_long_named_kernel_is_seen_only_as_its_alias() -> None:
    # fat.c dirname(): `if(d->attr == 0x0F ...) return -1` - long-name slots are skipped
    files = fat(b"bootfile=9pc64-custom\n", ("9pc64-custom", KERNEL))
    with pytest.raises(BootLintError, match=r"'9pc64-custom' has a long name.*sees '9pc64-~1'"):
        check_boot_fat(files, "x")


def test_alias_names_match_what_format_writes() -> None:
    # the names the lint says 9bootfat sees are the 8.3 names format stores, lower-cased
    names = ["9bootfat", "plan9.ini", "9pc64-custom", "Kernel Two", "9pc64"]
    disk = BlockDevice(BytesStorage((63 + 20000) * 512), name="data")
    dev = disk.slice(63, 63 + 20000, "9fat")
    format_fat(dev, [FatFile(n, b"x") for n in names])
    stored = {e.short_name.lower() for e in FatVolume(dev).listdir()}
    assert set(visible_names(names)) == stored


def test_bootfile_longer_than_the_loader_path_buffer() -> None:
    # fat.c start(): char path[Maxpath] (Maxpath = 64); sub.c getconf() copies the value
    # and its NUL there without a bound
    assert BOOTFILE_MAX == 63
    ok = "d!" * 27 + "9pc64"  # 59 bytes
    check_boot_fat(fat(f"bootfile={ok}\n".encode()), "x")
    too_long = "d!" * 30 + "9pc64"  # 65 bytes
    with pytest.raises(BootLintError, match=r"65 bytes; 9bootfat copies it into a 64-byte path"):
        check_boot_fat(fat(f"bootfile={too_long}\n".encode()), "x")
    exact = "d!" * 29 + "9pc64"  # 63 bytes: fits with its NUL
    check_boot_fat(fat(f"bootfile={exact}\n".encode()), "x")
    with pytest.raises(BootLintError, match=r"64 bytes"):
        check_boot_fat(fat(f"bootfile=d{exact}\n".encode()), "x")


def test_plan9_ini_larger_than_the_configuration_area() -> None:
    # sub.c: BOOTARGSLEN = 4096-0x200-BOOTLINELEN; configure() stores key=value lines there
    # and readline() reads each raw line at confend+1, neither bounds-checked
    line = b"x" * 70 + b"=" + b"v" * 29 + b"\n"  # 100 bytes stored per line, distinct keys
    lines = [b"k%03d" % i + line[4:] for i in range(40)]
    ini = b"bootfile=9pc64\n" + b"".join(lines)
    with pytest.raises(BootLintError, match=rf"holds {BOOTARGSLEN} \(sub\.c configure"):
        check_boot_fat(fat(ini), "x")
    check_boot_fat(fat(b"bootfile=9pc64\n" + b"".join(lines[:34])), "x")
    # a comment is not stored, but read into the area all the same
    with pytest.raises(BootLintError, match="configuration area"):
        check_boot_fat(fat(b"bootfile=9pc64\n#" + b"c" * BOOTARGSLEN + b"\n"), "x")
    # repeated keys replace each other (delconf): only the last counts
    check_boot_fat(fat(b"bootfile=9pc64\n" + b"console=0\n" * 1000), "x")


def test_last_line_without_a_line_end_is_never_read() -> None:
    # sub.c readline(): `else if(read(f, p, 1) <= 0) return 0;` drops an unterminated line
    with pytest.raises(BootLintError, match=r"last line 'bootfile=9pc64' has no line end"):
        check_boot_fat(fat(b"console=0\nbootfile=9pc64"), "x")
    check_boot_fat(fat(b"bootfile=9pc64\n# trailing comment"), "x")


def test_read_config_follows_configure() -> None:
    # sub.c configure(): [blocks] other than [common] are skipped, `boot` ends the file,
    # delconf() deletes the first line starting with the key (a prefix match)
    config = read_config(b"  a=1\r\n[menu]\nb=2\n[common]\nbootfile=x\n;c=3\nbootfile=y\n"
                         b"boot\nd=4\n")
    assert config.lines == ("a=1", "bootfile=y")
    assert config.get("bootfile") == "y"
    assert read_config(b"bootfile=x\nboot=1\n").lines == ("boot=1",)  # 'boot' deleted bootfile
    assert read_config(b"a=1\nclear\nb=2\n").lines == ("b=2",)


def test_build_refuses_and_no_lint_builds(root: Path, tmp_path: Path, sde: int) -> None:
    from imagebuild.cli import main

    out = tmp_path / "x.qcow2"
    args = ["build", "amd64.qcow2", "--root", str(root), "--no-fs", "-q", "-o", str(out),
            "--set", "plan9.bootfile=9pcnone"]
    assert main(args) == 1
    assert not out.exists()  # refused before the first byte
    assert main([*args, "--no-lint"]) == 0
    assert out.exists()


def test_stock_recipes_pass_the_lint(root: Path) -> None:
    from imagebuild.pipeline.build import BuildOptions, plan_build
    from imagebuild.recipe.load import list_recipes, load_recipe

    for name in list_recipes():
        if load_recipe(name).iso is not None:
            continue  # an ISO target has no disk boot chain (tests/test_iso_build.py boots it)
        plan_build(load_recipe(name), BuildOptions(root=root, fs=False))


def test_read_config_counts_bytes_as_the_loader_stores_them() -> None:
    # sub.c readline()/configure(): every raw line is read at confend+1 with its NUL; a
    # stored line is key=value\n; delconf() frees the replaced line first
    assert read_config(b"a=1\n").high_water == 5
    ini = b"ab=cd\nab=x\nc=" + b"y" * 20 + b"\n"
    config = read_config(ini)
    assert config.lines == ("ab=x", "c=" + "y" * 20)
    assert config.high_water == 5 + 1 + 22 + 1
    # lines end at NUL too (strchr("\r\n", 0) finds the terminator); only tab and blank
    # are trimmed; a value may hold '='; `clear KEY` deletes; apm lines are not stored
    assert read_config(b"a=1\0b=2\rc=3\n").lines == ("a=1", "b=2", "c=3")
    assert read_config(b"\x0ba=1 \t\n").lines == ("\x0ba=1",)
    assert read_config(b"a=b=c\n").lines == ("a=b=c",)
    assert read_config(b"a=1\nb=2\nclear a\n").lines == ("b=2",)
    assert read_config(b"apm0=1\nx=1\n").lines == ("x=1",)
    assert read_config(b"x=1\nboot\ny=2").dropped is None  # nothing after boot is read
    assert read_config(b"x=1\n[menu]\ny=2").dropped is None  # a block's line: not used


def test_lint_messages_name_the_file_first() -> None:
    for ini in (b"bootfile=9pcnone\n", b"bootfile=9PC64\n", b"bootfile=" + b"k" * 64 + b"\n",
                b"bootfile=9pc64", b"x=" + b"v" * BOOTARGSLEN + b"\n"):
        with pytest.raises(BootLintError, match=r"^amd64 9fat: plan9\.ini: "):
            check_boot_fat(fat(ini), "amd64 9fat")


def test_read_config_edges_the_mutation_run_found() -> None:
    # a raw line longer than anything stored sets the high-water mark (readline)
    assert read_config(b"a=1\n#" + b"c" * 30 + b"\n").high_water == 4 + 1 + 31 + 1
    assert read_config(b"a=1\nclear\n#" + b"c" * 40 + b"\n").high_water == 0 + 1 + 41 + 1
    ini = b"a=" + b"v" * 10 + b"\nb=1\nclear b\n#" + b"c" * 40 + b"\n"
    assert read_config(ini).high_water == 13 + 1 + 41 + 1
    assert read_config(b"a=1\nb=2\nclear a\nc=3\n").lines == ("b=2", "c=3")
    # the key ends at the first '=' (configure: strchr), so it replaces a=1
    assert read_config(b"a=1\na=b=c\n").lines == ("a=b=c",)
    # only '\t' and ' ' are trimmed (readline's white[]), at either end
    assert read_config(b"a=1\x0c\n").lines == ("a=1\x0c",)
    assert read_config(b"x=1\n\x0c").dropped == "\x0c"
    assert read_config(b"Xa=1\n").lines == ("Xa=1",)
    assert read_config(b"Xa=1").dropped == "Xa=1"


def test_configuration_area_boundary() -> None:
    # sub.c BOOTARGSLEN: a line needing exactly the whole area fits, one byte more does not
    fits = b"x=" + b"v" * (BOOTARGSLEN - 4) + b"\n"  # read at +1, NUL: 1 + 3518 + 1 = 3520
    assert read_config(fits).high_water == BOOTARGSLEN
    check_boot_fat(fat(fits), "x")
    with pytest.raises(BootLintError, match="needs 3521 bytes"):
        check_boot_fat(fat(b"x=" + b"v" * (BOOTARGSLEN - 3) + b"\n"), "x")


def test_bootfile_in_a_directory_is_not_on_a_root_only_fat() -> None:
    # fat.c fatwalk() descends into directories, but format writes only root files
    with pytest.raises(BootLintError, match=r"bootfile=amd64/9pc64: 9bootfat walks the FAT for "
                                            r"'amd64/9pc64', but the boot FAT holds only root"):
        check_boot_fat(fat(b"bootfile=amd64/9pc64\n"), "x")


def test_lint_messages_word_for_word() -> None:
    # each refusal is one line: the FAT, plan9.ini, the key, the loader's rule and its source
    def refusal(ini: bytes, *extra: tuple[str, bytes]) -> str:
        with pytest.raises(BootLintError) as err:
            check_boot_fat(fat(ini, *extra), "amd64 9fat")
        return str(err.value)

    tail = "c" * 70  # the message quotes the first 60 characters of an unterminated line
    assert refusal(b"bootfile=9pc64\n" + tail.encode()) == (
        f"amd64 9fat: plan9.ini: its last line {tail[:60]!r} has no line end, and 9bootfat "
        "never reads it (sub.c readline returns 0 at the end of the file)")
    value = "d!" * 150 + "9pc64"  # the message keeps the first 200 characters of the key
    key = f"amd64 9fat: plan9.ini: bootfile={value}"
    assert refusal(f"bootfile={value}\n".encode()) == (
        f"{key[:200]}: 305 bytes; 9bootfat copies it into a 64-byte path buffer, so at most 63 "
        "(fat.c start: char path[Maxpath], sub.c getconf)")
    assert refusal(b"bootfile=amd64/9pc64\n") == (
        "amd64 9fat: plan9.ini: bootfile=amd64/9pc64: 9bootfat walks the FAT for 'amd64/9pc64', "
        "but the boot FAT holds only root files (fat.c fatwalk)")
    assert refusal(b"bootfile=9pcnone\n", ("Kernel Two", KERNEL)) == (
        "amd64 9fat: plan9.ini: bootfile=9pcnone: no such file on the boot FAT; 9bootfat would "
        "print 'not found' (fat.c fatwalk; the FAT holds 9bootfat, 9pc64, kernel~1, plan9.ini)")


def test_visible_names_maps_what_the_loader_sees_to_the_name_given() -> None:
    # fat.c dirname(): an 8.3 name is seen lower-cased; a long name only as its alias
    assert visible_names(["9BOOTFAT", "plan9.ini", "9pc64-custom"]) == {
        "9bootfat": "9BOOTFAT", "plan9.ini": "plan9.ini", "9pc64-~1": "9pc64-custom"}


def test_read_config_wait_and_show_are_commands_not_settings() -> None:
    # sub.c configure(): `wait` and `show` (the whole line) are commands, nothing is stored;
    # a line that only starts with them and has an '=' is a setting like any other
    assert read_config(b"wait\nshow\nwait=1\nshowx=2\n").lines == ("wait=1", "showx=2")
