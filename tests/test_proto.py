"""Proto files read as sys/src/libdisk/proto.c (rdproto) reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild.fs.proto import (
    DMAPPEND,
    DMDIR,
    DMEXCL,
    DMTMP,
    ProtoEntry,
    ProtoError,
    cleanname,
    parse_mode_option,
    plan9_regex,
    read_proto,
)


def make_tree(root: Path, files: dict[str, str | None], mode: int = 0o644) -> None:
    """Create files (str content) and directories (None) under root."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)


def proto(tmp_path: Path, text: str, name: str = "proto") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def paths(entries: list[ProtoEntry]) -> list[str]:
    return [e.path for e in entries]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(
        root,
        {
            "adm/timezone/EST": "est",
            "adm/timezone/GMT": "gmt",
            "lib/a": "a",
            "lib/b": "b",
            "lib/sub/c": "c",
            "lib/sub/deeper/d": "d",
            "rc/bin/x": "x",
            "rc/bin/y.local": "y",
            "sys/lib/dist/empty": "",
            "sys/log": None,
            "amd64/bin/ls": "ls",
            "amd64/bin/_skipped": "s",
            "tmp": None,
        },
    )
    return root


# -- cleanname and regular expressions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/adm", "/adm"),
        ("//a//b/", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/..", "/"),
        ("", "."),
        ("a/../..", ".."),
        ("/x/+", "/x/+"),
    ],
)
def test_cleanname_follows_plan9(path: str, clean: str) -> None:
    assert cleanname(path) == clean


def test_plan9_regex_treats_braces_and_backslash_escapes_literally() -> None:
    assert plan9_regex(r"\.(out|orig|([ao]?[0125678vqki]?))$").search("foo.8")
    assert plan9_regex(r"\.(out|orig|([ao]?[0125678vqki]?))$").search("foo.")
    assert not plan9_regex(r"\.(pyo|pyc|orig)$").search("x.py")
    assert plan9_regex("a{2}").search("a{2}")  # no counted repetition in regexp(6)
    assert not plan9_regex(r"\d").search("1")  # \d is a literal d
    assert plan9_regex(r"\d").search("d")
    assert plan9_regex("^_").search("_x") and not plan9_regex("^_").search("x_")


# -- mode options (parsemode) --------------------------------------------------------------------


def test_dist_mode_options_make_files_group_writable_not_other_writable() -> None:
    # distproto starts with mode=ug+rw and mode=o-w: '+' keeps only the named bits
    # being set (mask 0660), '-' clears them (mask 02, mode bit 0).
    mask, mode = parse_mode_option("ug+rw", 0, 0)
    assert (mask, mode) == (0o660, 0o660)
    mask, mode = parse_mode_option("o-w", mask, mode)
    assert (mask, mode) == (0o662, 0o660)


def test_octal_mode_option_sets_rw_bits_and_forgets_earlier_ones() -> None:
    mask, mode = parse_mode_option("o-w", 0, 0)
    assert parse_mode_option("0751", mask, mode) == (0o666, 0o751 & 0o666)


def test_mode_option_with_equals_sets_special_bits() -> None:
    # '=' keeps the whole mask: the append/exclusive/temporary bits are set or cleared
    assert parse_mode_option("a=rwl", 0, 0) == (
        DMAPPEND | DMEXCL | DMTMP | 0o666,
        DMEXCL | 0o666,
    )
    assert parse_mode_option("+t", 0, 0) == (DMTMP, DMTMP)
    assert parse_mode_option("u+q", 0, 0) is None
    assert parse_mode_option("z", 0, 0) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="augo+-=rwxlt!01234567", max_size=8), st.integers(0, 0xFFFFFFFF))
def test_mode_option_only_changes_masked_bits(spec: str, before: int) -> None:
    parsed = parse_mode_option(spec, 0, before)
    if parsed is None:
        return
    mask, mode = parsed
    assert mode & ~mask == before & ~mask


# -- structure -----------------------------------------------------------------------------------


def test_indentation_nests_and_tab_counts_eight(tmp_path: Path, src: Path) -> None:
    # "        a" (8 spaces) is as deep as "\tsub", so it is sub's sibling, not its child
    p = proto(tmp_path, "lib\td775\n\tsub\td775\n\t\tc\n        a\n    b\n")
    entries = read_proto([p], src)
    assert paths(entries) == ["/lib", "/lib/sub", "/lib/sub/c", "/lib/a", "/lib/b"]
    assert entries[0].is_dir and entries[0].mode == DMDIR | 0o775
    assert entries[2].length == 1 and not entries[2].is_dir


def test_plus_copies_recursively_and_star_only_files(tmp_path: Path, src: Path) -> None:
    p = proto(tmp_path, "lib d775\n\t*\nrc d775\n\t+\n")
    p2 = proto(tmp_path, "lib d775\n\t+\n", "p2")
    assert paths(read_proto([p], src)) == [
        "/lib",
        "/lib/a",
        "/lib/b",
        "/rc",
        "/rc/bin",
        "/rc/bin/x",
        "/rc/bin/y.local",
    ]
    assert paths(read_proto([p2], src)) == [
        "/lib",
        "/lib/a",
        "/lib/b",
        "/lib/sub",
        "/lib/sub/c",
        "/lib/sub/deeper",
        "/lib/sub/deeper/d",
    ]


def test_entries_after_a_star_follow_it(tmp_path: Path, src: Path) -> None:
    p = proto(tmp_path, "lib d775\n\t*\n\tsub d775\n\t\t*\n")
    assert paths(read_proto([p], src)) == ["/lib", "/lib/a", "/lib/b", "/lib/sub", "/lib/sub/c"]


def test_plus_that_is_not_first_names_a_file_called_plus(tmp_path: Path, src: Path) -> None:
    p = proto(tmp_path, "lib d775\n\ta\n\t+\n")
    with pytest.raises(ProtoError, match=r"proto:3: /lib/\+: source .* does not exist"):
        read_proto([p], src)


def test_skip_option_applies_to_expansion(tmp_path: Path, src: Path) -> None:
    p = proto(
        tmp_path, "rc d775\n\tskip=\\.local$\n\t+\n$objtype d775\n\tbin d775\n\t\tskip=^_\n\t\t+\n"
    )
    entries = read_proto([p], src, variables={"objtype": "amd64"})
    assert paths(entries) == [
        "/rc",
        "/rc/bin",
        "/rc/bin/x",
        "/amd64",
        "/amd64/bin",
        "/amd64/bin/ls",
    ]


def test_options_last_until_a_shallower_line(tmp_path: Path, src: Path) -> None:
    text = "uid=sys\ngid=sys\nadm d775 adm adm\n\tuid=adm\n\ttimezone d775\n\t\t*\nlib d775\n\ta\n"
    entries = {e.path: e for e in read_proto([proto(tmp_path, text)], src)}
    assert (entries["/adm"].uid, entries["/adm"].gid) == ("adm", "adm")
    assert (entries["/adm/timezone"].uid, entries["/adm/timezone"].gid) == ("adm", "sys")
    assert entries["/adm/timezone/EST"].uid == "adm"
    assert (entries["/lib"].uid, entries["/lib/a"].uid) == ("sys", "sys")


def test_no_owner_anywhere_leaves_owner_to_the_writer(tmp_path: Path, src: Path) -> None:
    (entry,) = read_proto([proto(tmp_path, "tmp d555\n")], src)
    assert (entry.uid, entry.gid) == (None, None)


def test_mode_options_apply_to_source_modes(tmp_path: Path, src: Path) -> None:
    (src / "lib" / "a").chmod(0o755)
    (src / "lib" / "b").chmod(0o600)
    text = "mode=ug+rw\nmode=o-w\nlib d775\n\t*\n"
    entries = {e.path: e for e in read_proto([proto(tmp_path, text)], src)}
    # (mode & ~0662) | 0660: executable bits stay, other-write goes
    assert entries["/lib/a"].mode == 0o775
    assert entries["/lib/b"].mode == 0o660
    assert entries["/lib"].mode == DMDIR | 0o775  # an explicit mode wins


def test_mode_on_plus_line_sets_only_rw_bits(tmp_path: Path, src: Path) -> None:
    (src / "lib" / "a").chmod(0o755)
    entries = {e.path: e for e in read_proto([proto(tmp_path, "lib d775\n\t* 640\n")], src)}
    assert entries["/lib/a"].mode == (0o755 & ~0o666) | 0o640
    assert entries["/lib/b"].mode == 0o640


def test_explicit_modes_with_append_and_exclusive_bits(tmp_path: Path, src: Path) -> None:
    text = (
        "sys d775\n\tlog d775\n"
        "\t\tauth a662 sys sys /sys/lib/dist/empty\n"
        "\t\tlock l600 - - /sys/lib/dist/empty\n"
        "\t\tboth dal700 - - /tmp\n"
    )
    entries = {e.path: e for e in read_proto([proto(tmp_path, text)], src)}
    auth = entries["/sys/log/auth"]
    assert auth.mode == DMAPPEND | 0o662 and auth.source == src / "sys/lib/dist/empty"
    assert (auth.uid, auth.gid, auth.length) == ("sys", "sys", 0)
    assert entries["/sys/log/lock"].mode == DMEXCL | 0o600
    assert entries["/sys/log/both"].mode == DMDIR | DMAPPEND | DMEXCL | 0o700


def test_lines_under_a_file_are_its_siblings(tmp_path: Path, src: Path) -> None:
    # domkfs only descends into directories; deeper lines under a file stay in its directory
    p = proto(tmp_path, "lib d775\n\ta\n\t\tb\n")
    assert paths(read_proto([p], src)) == ["/lib", "/lib/a", "/lib/b"]


def test_comments_blank_lines_and_paths_in_names(tmp_path: Path, src: Path) -> None:
    p = proto(tmp_path, "# comment\n\n   \nlib/sub d775\n\t  # indented comment\n\tc\n")
    assert paths(read_proto([p], src)) == ["/lib/sub", "/lib/sub/c"]


def test_concatenated_protos_share_options_and_continue_lines(tmp_path: Path, src: Path) -> None:
    a = proto(tmp_path, "uid=glenda\nlib d775\n", "a")
    b = proto(tmp_path, "\ta\n", "b")
    entries = read_proto([a, b], src)
    assert paths(entries) == ["/lib", "/lib/a"]
    assert entries[1].uid == "glenda" and entries[1].origin == f"{b}:1"


def test_directory_listed_twice_is_enumerated_twice(tmp_path: Path, src: Path) -> None:
    # mkfs skips the second one as up to date; the writer decides, the reader reports both
    a = proto(tmp_path, "lib d775\n\ta\n", "a")
    b = proto(tmp_path, "lib d775\n\tb\n", "b")
    assert paths(read_proto([a, b], src)) == ["/lib", "/lib/a", "/lib", "/lib/b"]


# -- errors name the proto file and line -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "lib d775\n\tmissing\n",
            r"proto:2: /lib/missing: source .*src/lib/missing does not exist",
        ),
        ("lib d7x5\n", r"proto:1: bad mode specification 'd7x5'"),
        ("lib 775\n", r"proto:1: inconsistent mode for /lib"),
        ("lib/a d775\n", r"proto:1: inconsistent mode for /lib/a"),
        ("lib d775\n\tcolour=red\n", r"proto:2: bad option colour=red"),
        ("lib d775\n\tmode=u+q\n", r"proto:2: bad mode specification 'u\+q'"),
        ("lib d775\n\tskip=(\n", r"proto:2: bad regular expression"),
        ("$objtype d775\n", r"proto:1: undefined variable \$objtype"),
        ("lib d775\n\ta - - - rel/path\n", r"proto:2: relative source path 'rel/path'"),
        ("lib d775", r"proto:1: last line has no newline"),
        ("lib\0 d775\n", r"proto:1: null bytes in proto"),
        ("nowhere d775\n\t+\n", r"proto:2: /nowhere/\+: source directory .* does not exist"),
        ("nowhere 664\n", r"proto:1: /nowhere: source .* does not exist"),
    ],
)
def test_errors_name_proto_file_and_line(
    tmp_path: Path, src: Path, text: str, message: str
) -> None:
    with pytest.raises(ProtoError, match=message):
        read_proto([proto(tmp_path, text)], src)


def test_star_over_a_file_is_an_error(tmp_path: Path, src: Path) -> None:
    p = proto(tmp_path, "lib d775\n\ta\n\t\t*\n")
    # '*' first under a file: the file's own lines go to the file's directory, so the
    # '*' is not first there and names the file "/lib/*"
    with pytest.raises(ProtoError, match=r"proto:3: /lib/\*: source"):
        read_proto([p], src)


def test_missing_proto_file(tmp_path: Path, src: Path) -> None:
    with pytest.raises(ProtoError, match="can't open proto"):
        read_proto([tmp_path / "nope"], src)


def test_special_files_are_refused(tmp_path: Path, src: Path) -> None:
    os.mkfifo(src / "lib" / "fifo")
    with pytest.raises(ProtoError, match="neither a file nor a directory"):
        read_proto([proto(tmp_path, "lib d775\n\t*\n")], src)


# -- binds (the mkfile's `mk binds`) ---------------------------------------------------------


def test_bind_replaces_a_subtree(tmp_path: Path, src: Path) -> None:
    cfg = tmp_path / "dist" / "cfg"
    make_tree(cfg, {"plan9.ini": "bootfile=9pc64\n", "pxe/default": "x"})
    p = proto(tmp_path, "cfg d775\n\tpxe d775\n\t\t*\n\tplan9.ini 664\n")
    entries = read_proto([p], src, binds={"/cfg": cfg})
    assert paths(entries) == ["/cfg", "/cfg/pxe", "/cfg/pxe/default", "/cfg/plan9.ini"]
    assert entries[3].source == cfg / "plan9.ini" and entries[3].length == 15


def test_union_bind_lists_both_and_finds_first(tmp_path: Path, src: Path) -> None:
    extra = tmp_path / "dist" / "timezone"
    make_tree(extra, {"EST": "other", "Local": "local"})
    p = proto(tmp_path, "adm d775\n\ttimezone d775\n\t\t*\n")
    entries = read_proto([p], src, binds={"adm/timezone": [src / "adm" / "timezone", extra]})
    assert paths(entries)[2:] == ["/adm/timezone/EST", "/adm/timezone/GMT", "/adm/timezone/Local"]
    assert entries[2].source == src / "adm/timezone/EST"
    assert entries[4].source == extra / "Local"


def test_bind_point_missing_from_tree_still_lists(tmp_path: Path, src: Path) -> None:
    usr = tmp_path / "dist" / "usr"
    make_tree(usr, {"glenda/lib/profile": "p"})
    p = proto(tmp_path, "+\n")
    got = paths(read_proto([p], src, binds={"/usr": usr}))
    assert got[-4:] == ["/usr", "/usr/glenda", "/usr/glenda/lib", "/usr/glenda/lib/profile"]


def test_source_root_bound_below_itself(tmp_path: Path, src: Path) -> None:
    (src / "dist").mkdir()
    make_tree(src, {".git/HEAD": "ref"})
    p = proto(tmp_path, "dist d775\n\tplan9front d775\n\t\t.git d775\n\t\t\t+\n")
    entries = read_proto([p], src, binds={"/dist/plan9front": src})
    assert paths(entries) == [
        "/dist",
        "/dist/plan9front",
        "/dist/plan9front/.git",
        "/dist/plan9front/.git/HEAD",
    ]
    assert entries[-1].source == src / ".git/HEAD"


def test_source_mtime_is_reported(tmp_path: Path, src: Path) -> None:
    os.utime(src / "lib" / "a", (1_000_000, 1_234_567))
    (entry,) = [
        e for e in read_proto([proto(tmp_path, "lib d775\n\ta\n")], src) if e.path == "/lib/a"
    ]
    assert entry.mtime == 1_234_567


def test_real_distproto_parses_against_a_matching_tree(tmp_path: Path) -> None:
    """The 2025 distproto and 9bootproto (abridged to their distinct constructs)."""
    root = tmp_path / "src"
    make_tree(
        root,
        {
            "adm/timezone/GMT": "g",
            "cfg/pxe": None,
            "lib/ndb/local": "l",
            "lib/ndb/dhcp": None,
            "rc/lib/rcmain": "r",
            "rc/lib/x.local": "r",
            "amd64/bin/rc": "rc",
            "amd64/bin/_hidden": "h",
            "386/9bootfat": "boot",
            "sys/lib/dist/empty": "",
            "sys/log/httpd": None,
        },
    )
    dist = (
        "mode=ug+rw\nmode=o-w\nuid=sys\ngid=sys\n"
        "adm\td775 adm adm\n\tuid=adm\n\tgid=adm\n\ttimezone\td775\n\t\t*\n"
        "cfg\td775\n\tpxe\td775\n"
        "lib\td775\n\tndb\td775\n\t\t*\n\t\tdhcp\td775\n"
        "rc\td775\n\tskip=\\.local$\n\t+\n"
        "$objtype\td775\n\tbin\td775\n\t\tskip=^_\n\t\t+\n"
        "sys\td775\n\tlog\td775\n\t\tauth\ta662 sys sys /sys/lib/dist/empty\n"
        "\t\thttpd\td775\n\t\t\tlog\ta662 sys sys /sys/lib/dist/empty\n\t\t\n"
    )
    boot = "uid=sys\ngid=sys\n386\td775\n\t9bootfat\t664\n"
    entries = read_proto(
        [proto(tmp_path, dist, "distproto"), proto(tmp_path, boot, "9bootproto")],
        root,
        variables={"objtype": "amd64"},
    )
    got = {e.path: (oct(e.mode), e.uid, e.gid) for e in entries}
    assert got == {
        "/adm": (oct(DMDIR | 0o775), "adm", "adm"),
        "/adm/timezone": (oct(DMDIR | 0o775), "adm", "adm"),
        "/adm/timezone/GMT": ("0o664", "adm", "adm"),
        "/cfg": (oct(DMDIR | 0o775), "sys", "sys"),
        "/cfg/pxe": (oct(DMDIR | 0o775), "sys", "sys"),
        "/lib": (oct(DMDIR | 0o775), "sys", "sys"),
        "/lib/ndb": (oct(DMDIR | 0o775), "sys", "sys"),
        "/lib/ndb/local": ("0o664", "sys", "sys"),
        "/lib/ndb/dhcp": (oct(DMDIR | 0o775), "sys", "sys"),
        "/rc": (oct(DMDIR | 0o775), "sys", "sys"),
        "/rc/lib": (oct(DMDIR | 0o775), "sys", "sys"),  # mode=ug+rw,o-w on 0755
        "/rc/lib/rcmain": ("0o664", "sys", "sys"),
        "/amd64": (oct(DMDIR | 0o775), "sys", "sys"),
        "/amd64/bin": (oct(DMDIR | 0o775), "sys", "sys"),
        "/amd64/bin/rc": ("0o664", "sys", "sys"),
        "/sys": (oct(DMDIR | 0o775), "sys", "sys"),
        "/sys/log": (oct(DMDIR | 0o775), "sys", "sys"),
        "/sys/log/auth": (oct(DMAPPEND | 0o662), "sys", "sys"),
        "/sys/log/httpd": (oct(DMDIR | 0o775), "sys", "sys"),
        "/sys/log/httpd/log": (oct(DMAPPEND | 0o662), "sys", "sys"),
        "/386": (oct(DMDIR | 0o775), "sys", "sys"),
        "/386/9bootfat": ("0o664", "sys", "sys"),
    }


def test_symlink_loop_in_plus_is_an_error(tmp_path: Path, src: Path) -> None:
    (src / "lib" / "sub" / "back").symlink_to(src / "lib")
    with pytest.raises(ProtoError, match=r"proto:2: /lib/sub/back: source .* contains itself"):
        read_proto([proto(tmp_path, "lib d775\n\t+\n")], src)


def test_symlinked_files_and_directories_are_followed(tmp_path: Path, src: Path) -> None:
    (src / "lib" / "alias").symlink_to(src / "lib" / "a")
    (src / "lib" / "tz").symlink_to(src / "adm" / "timezone")
    entries = {e.path: e for e in read_proto([proto(tmp_path, "lib d775\n\t+\n")], src)}
    assert entries["/lib/alias"].length == 1 and not entries["/lib/alias"].is_dir
    assert entries["/lib/tz"].is_dir and "/lib/tz/EST" in entries


# -- missing sources (a git checkout: no empty directories, no built binaries) --------------


def test_missing_directories_are_made_empty_with_the_proto_mode_and_owner(
    tmp_path: Path, src: Path
) -> None:
    p = proto(tmp_path, "run d555 sys sys\nmail d775\n\tbox d775\n\t\tglenda d700 glenda glenda\n")
    os.utime(p, (1_650_000_000, 1_650_000_000))
    entries = read_proto([p], src)
    assert [(e.path, oct(e.mode), e.uid, e.gid, e.missing, e.length) for e in entries] == [
        ("/run", oct(DMDIR | 0o555), "sys", "sys", True, 0),
        ("/mail", oct(DMDIR | 0o775), None, None, True, 0),
        ("/mail/box", oct(DMDIR | 0o775), None, None, True, 0),
        ("/mail/box/glenda", oct(DMDIR | 0o700), "glenda", "glenda", True, 0),
    ]
    assert {e.mtime for e in entries} == {1_650_000_000}  # the proto's: reproducible


def test_missing_files_are_collected_and_their_lines_skipped(tmp_path: Path, src: Path) -> None:
    from imagebuild.fs.proto import MissingSource, missing_summary

    text = "lib d775\n\tgone\n\t\tdeeper\n\ta\n386 d775\n\t9bootpxe\n"
    left_out: list[MissingSource] = []
    entries = read_proto([proto(tmp_path, text)], src, on_missing=left_out.append)
    assert paths(entries) == ["/lib", "/lib/a", "/386"]
    assert [(m.origin.rsplit("/", 1)[-1], m.path) for m in left_out] == [
        ("proto:2", "/lib/gone"),
        ("proto:6", "/386/9bootpxe"),
    ]
    summary = missing_summary(left_out * 6, limit=3).splitlines()
    assert summary[0].startswith("warning: 12 files named in the protos do not exist")
    assert summary[1].endswith("proto:2: /lib/gone: source " + str(src / "lib/gone")
                               + " does not exist")
    assert summary[-1] == "  ... and 9 more" and len(summary) == 5
