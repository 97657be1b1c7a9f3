"""The checks a build makes before its first byte (pipeline/plan.py), in process:
SOURCE_DATE_EPOCH, --file NAME=PATH, the root, the container, missing inputs (all named at
once), the clock a build uses and where the image goes (README "Build", "Reproducible")."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import pytest

from imagebuild.errors import ImageBuildError, InputError
from imagebuild.fs.proto.entry import ProtoError
from imagebuild.pipeline import plan as plan_mod
from imagebuild.pipeline.demo import DEMO_MARKER
from imagebuild.pipeline.plan import (
    MAX_EPOCH,
    BuildOptions,
    place_files,
    plan_build,
    read_file_options,
    source_date_epoch,
)
from imagebuild.recipe.load import load_recipe


# -- SOURCE_DATE_EPOCH -------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("0", 0), ("1700000000", 1700000000),
    (str(MAX_EPOCH), MAX_EPOCH),
])
def test_source_date_epoch_values(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                  expected: int | None) -> None:
    if value is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert source_date_epoch() == expected


@pytest.mark.parametrize("value", ["-1", "+1", " 1", "1.5", "1e9", "\u00b2", "\u0661\u0662"])
def test_source_date_epoch_only_ascii_digits(monkeypatch: pytest.MonkeyPatch,
                                             value: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(ImageBuildError) as err:
        source_date_epoch()
    assert str(err.value) == f"SOURCE_DATE_EPOCH={value!r}: must be a whole number of seconds"


@pytest.mark.parametrize("value", [str(MAX_EPOCH + 1), "9" * 11, "9" * 5000])  # int(): 4300
def test_source_date_epoch_past_2106_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                value: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(ImageBuildError, match=r"after 2106-02-07 06:28:15 UTC, the last time "
                                              r"Plan 9's 32-bit stat times hold$"):
        source_date_epoch()


# -- --file NAME=PATH --------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["kernel", "=x", "kernel=", "a/b=x", "/x=y"])
def test_file_option_must_be_name_equals_path(text: str) -> None:
    with pytest.raises(InputError) as err:
        read_file_options([text])
    assert str(err.value) == (f"--file {text!r}: expected NAME=PATH, NAME a file name on the "
                              f"boot partition")


def test_file_option_name_must_be_printable(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(InputError, match=r"NAME must be printable UTF-8 text$"):
        read_file_options([f"a\tb={tmp_path / 'f'}"])


def test_file_options_read_and_collect_the_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"AAA")
    (tmp_path / "b").write_bytes(b"B")
    # NAME ends at the first '=': the PATH may hold more
    files, unreadable = read_file_options(
        [f"one={tmp_path / 'a'}", f"two=x={tmp_path / 'missing'}", f"three={tmp_path / 'b'}"])
    assert files == [("one", b"AAA"), ("three", b"B")]
    assert unreadable == [f"x={tmp_path / 'missing'} (No such file or directory)"]


def test_file_option_limit_and_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"12345")
    assert read_file_options([f"a={tmp_path / 'a'}"], limit=5)[0] == [("a", b"12345")]
    with pytest.raises(InputError) as big:
        read_file_options([f"a={tmp_path / 'a'}"], limit=4)
    assert str(big.value) == f"{tmp_path / 'a'}: --file is 5 bytes, more than 4"

    def no_memory(path: str, limit: int, what: str) -> bytes:
        raise MemoryError

    monkeypatch.setattr(plan_mod, "read_input", no_memory)
    with pytest.raises(InputError) as err:
        read_file_options([f"a={tmp_path / 'a'}"])
    assert str(err.value) == f"{tmp_path / 'a'}: --file too big to hold in memory"


def test_place_files_replaces_in_place_as_fat_compares_names() -> None:
    files = [("9bootfat", b"1"), ("plan9.ini", b"2"), ("9pc64", b"3")]
    place_files(files, [("PLAN9.INI", b"new"), ("extra", b"4"), ("9PC64", b"k")])
    assert files == [("9bootfat", b"1"), ("PLAN9.INI", b"new"), ("9PC64", b"k"),
                     ("extra", b"4")]


# -- plan_build's checks -------------------------------------------------------------------------
@pytest.fixture
def small_root(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "root"))


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    recipe = load_recipe("amd64.qcow2")
    for bad in (tmp_path / "missing", Path("/dev/null")):
        with pytest.raises(InputError) as err:
            plan_build(recipe, BuildOptions(root=bad))
        assert str(err.value) == f"root {bad}: not a directory"


def test_container_must_be_qcow2_or_raw(root: Path) -> None:
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=root, container="vmdk"))
    assert str(err.value) == "--format 'vmdk': expected qcow2 or raw"


def test_every_missing_input_is_named_at_once(small_root: Path) -> None:
    (small_root / "386" / "pbs").unlink()
    (small_root / "amd64" / "9pc64").unlink()
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=small_root, fs=False))
    assert str(err.value) == (f"amd64.qcow2: missing inputs under {small_root}: 386/pbs, "
                              f"amd64/9pc64")


def test_an_input_below_a_file_is_missing(small_root: Path) -> None:
    shutil.rmtree(small_root / "amd64")
    (small_root / "amd64").write_bytes(b"a file where a directory was")
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=small_root, fs=False))
    assert str(err.value) == f"amd64.qcow2: missing inputs under {small_root}: amd64/9pc64"


def test_an_input_that_is_a_directory_is_refused(small_root: Path) -> None:
    os.unlink(small_root / "386" / "pbs")
    (small_root / "386" / "pbs").mkdir()
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=small_root, fs=False))
    assert str(err.value) == f"{small_root}/386/pbs: input is a directory"


def test_unreadable_file_options_are_named_after_the_inputs(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"),
                   BuildOptions(root=root, fs=False, files=[f"x={tmp_path / 'nope'}"]))
    assert str(err.value) == f"--file: cannot read {tmp_path / 'nope'} (No such file or directory)"


def test_the_clock_option_then_source_date_epoch_then_now(monkeypatch: pytest.MonkeyPatch,
                                                          root: Path) -> None:
    recipe = load_recipe("amd64.qcow2")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    given = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=1234))
    assert (given.timestamp, given.pinned_time) == (1234, 1234)
    pinned = plan_build(recipe, BuildOptions(root=root, fs=False))
    assert (pinned.timestamp, pinned.pinned_time) == (1700000000, 1700000000)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    before = int(time.time())
    now = plan_build(recipe, BuildOptions(root=root, fs=False))
    assert before <= now.timestamp <= int(time.time()) and now.pinned_time is None


def test_the_plan_holds_what_the_recipe_names(root: Path) -> None:
    recipe = load_recipe("amd64.qcow2")
    built = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=0))
    assert built.output == Path("out") / "9front.amd64.qcow2"
    assert (built.container, built.size, built.demo) == ("qcow2", 3770 << 20, False)
    assert built.mbr_bootcode == (root / "386" / "mbr").read_bytes()
    assert built.pbs == (root / "386" / "pbs").read_bytes()
    assert [name for name, _ in built.fat_files] == ["9bootfat", "plan9.ini", "9pc64"]
    assert built.fat_files[2][1] == (root / "amd64" / "9pc64").read_bytes()
    assert built.fs_entries is None and built.raw_writes == []
    raw = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=0, container="raw",
                                          output=Path("x.img")))
    assert (raw.container, raw.size, raw.output) == ("raw", 3771 << 20, Path("x.img"))
    reform = plan_build(load_recipe("reform.img"), BuildOptions(root=root, fs=False,
                                                                timestamp=0))
    flash = (root / "sys/src/boot/reform/flash.bin").read_bytes()
    assert reform.raw_writes == [("sys/src/boot/reform/flash.bin", 33792, flash)]
    assert reform.mbr_bootcode is None and reform.pbs is None


def test_a_file_option_replaces_the_boot_file_of_that_name(root: Path, tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"new kernel")
    built = plan_build(load_recipe("amd64.qcow2"),
                       BuildOptions(root=root, fs=False, timestamp=0,
                                    files=[f"9PC64={tmp_path / 'k'}", f"extra={tmp_path / 'k'}"]))
    assert built.fat_files[2] == ("9PC64", b"new kernel")
    assert built.fat_files[3] == ("extra", b"new kernel")


def test_the_fs_tree_is_listed_unless_left_out(root: Path) -> None:
    recipe = load_recipe("amd64.qcow2")
    with_fs = plan_build(recipe, BuildOptions(root=root, timestamp=0))
    assert with_fs.fs_entries and with_fs.missing_sources == []
    assert plan_build(recipe, BuildOptions(root=root, timestamp=0, fs=False)).fs_entries is None


# -- the messages name the file; the limits ------------------------------------------------------
def _failing_read(monkeypatch: pytest.MonkeyPatch, suffix: str, error: BaseException) -> None:
    real = plan_mod.read_input

    def read(path: str | os.PathLike[str], limit: int, what: str = "input") -> bytes:
        if os.fspath(path).endswith(suffix):
            raise error
        return real(path, limit, what)

    monkeypatch.setattr(plan_mod, "read_input", read)


def test_an_input_too_big_for_memory_is_named(monkeypatch: pytest.MonkeyPatch,
                                             root: Path) -> None:
    _failing_read(monkeypatch, "386/pbs", MemoryError())
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=root, fs=False))
    assert str(err.value) == f"{root / '386/pbs'}: input too big to hold in memory"


def test_an_unreadable_input_is_named_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                      root: Path) -> None:
    # root reads every file whatever its mode: the refusal is the one the kernel would give
    _failing_read(monkeypatch, "386/pbs",
                  PermissionError(errno.EACCES, "Permission denied", str(root / "386/pbs")))
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"), BuildOptions(root=root, fs=False))
    assert str(err.value) == (f"amd64.qcow2: missing inputs under {root}: "
                              f"386/pbs (Permission denied)")


def test_an_unreadable_file_option_is_named_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"k")
    _failing_read(monkeypatch, "/k",
                  PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "k")))
    assert read_file_options([f"k={tmp_path / 'k'}"]) == (
        [], [f"{tmp_path / 'k'} (Permission denied)"])


def test_a_file_option_is_read_up_to_4_gib_by_default(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    # a sparse file one byte past FAT's 4 GiB file limit: refused from its size, not read
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate((1 << 32) + 1)
    with pytest.raises(InputError) as err:
        read_file_options([f"big={big}"])
    assert str(err.value) == f"{big}: --file is {(1 << 32) + 1} bytes, more than {1 << 32}"
    limits: list[int] = []

    def record(path: str | os.PathLike[str], limit: int, what: str = "input") -> bytes:
        limits.append(limit)
        return b""

    monkeypatch.setattr(plan_mod, "read_input", record)
    read_file_options([f"big={big}"])
    assert limits == [1 << 32]


def test_a_file_option_in_a_build_is_held_to_the_image_size(root: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate((3770 << 20) + 1)  # sparse: one byte more than the qcow2 image holds
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"),
                   BuildOptions(root=root, fs=False, files=[f"big={big}"]))
    assert str(err.value) == f"{big}: --file is {(3770 << 20) + 1} bytes, more than {3770 << 20}"


# -- what the options hand on to rendering and to the fs tree ------------------------------------
def _plan9_ini(plan: plan_mod.BuildPlan) -> bytes:
    return dict(plan.fat_files)["plan9.ini"]


def test_sets_template_dir_and_the_demo_mark_reach_the_boot_files(root: Path,
                                                                  tmp_path: Path) -> None:
    recipe = load_recipe("zynq.img")
    plain = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=0))
    assert _plan9_ini(plain) == b"bootfile=9zynq\n"
    set_ = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=0,
                                           sets=["plan9.console=1", "fs.disk=sdC0"]))
    assert _plan9_ini(set_) == b"bootfile=9zynq\nconsole=1\n"  # fs.disk is the recipe's
    assert set_.recipe.fs.disk == "sdC0"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "plan9.ini").write_text("# mine\n")
    mine = plan_build(recipe, BuildOptions(root=root, fs=False, timestamp=0,
                                           template_dir=tmp_path / "t"))
    assert _plan9_ini(mine) == b"# mine\n"
    (tmp_path / "demo").mkdir()
    demo_root = Path(shutil.copytree(root, tmp_path / "demo" / "root"))
    (demo_root / DEMO_MARKER).write_text("demo\n")
    demo = plan_build(recipe, BuildOptions(root=demo_root, fs=False, timestamp=0))
    assert demo.demo and _plan9_ini(demo).startswith(b"# imagebuild demo root")


def test_strict_makes_a_missing_proto_source_an_error(root: Path, tmp_path: Path) -> None:
    r = Path(shutil.copytree(root, tmp_path / "root"))
    proto = r / "sys/lib/sysconfig/proto/distproto"
    proto.write_text(proto.read_text() + "nosuchfile\t664\n")
    recipe = load_recipe("zynq.img")
    lenient = plan_build(recipe, BuildOptions(root=r, timestamp=0))
    assert [m.path for m in lenient.missing_sources] == ["/nosuchfile"]
    assert lenient.fs_entries
    with pytest.raises(ProtoError, match=r"distproto:\d+: .*nosuchfile"):
        plan_build(recipe, BuildOptions(root=r, timestamp=0, strict=True))
    strict_recipe = recipe.replace(fs=recipe.fs.replace(strict=True))
    with pytest.raises(ProtoError, match=r"distproto:\d+: .*nosuchfile"):
        plan_build(strict_recipe, BuildOptions(root=r, timestamp=0))


def test_fs_type_none_lists_no_fs_tree_and_reads_no_protos(root: Path, tmp_path: Path) -> None:
    r = Path(shutil.copytree(root, tmp_path / "root"))
    shutil.rmtree(r / "sys/lib/sysconfig/proto")
    built = plan_build(load_recipe("zynq.img"), BuildOptions(root=r, timestamp=0,
                                                             fs_type="none"))
    assert built.fs_entries is None and built.missing_sources == []
    assert built.recipe.fs.type == "none"


def test_every_unreadable_file_option_is_named_at_once(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        plan_build(load_recipe("amd64.qcow2"),
                   BuildOptions(root=root, fs=False,
                                files=[f"x={tmp_path / 'a'}", f"y={tmp_path / 'b'}"]))
    assert str(err.value) == (f"--file: cannot read {tmp_path / 'a'} (No such file or "
                              f"directory), {tmp_path / 'b'} (No such file or directory)")


def test_a_boot_lint_error_names_the_recipe_and_its_fat(root: Path, tmp_path: Path) -> None:
    (tmp_path / "ini").write_bytes(b"bootfile=9pc64")  # no line end: 9bootfat never reads it
    with pytest.raises(ImageBuildError) as err:
        plan_build(load_recipe("amd64.qcow2"),
                   BuildOptions(root=root, fs=False, files=[f"plan9.ini={tmp_path / 'ini'}"]))
    assert str(err.value).startswith("amd64.qcow2 9fat: plan9.ini: its last line ")
    lenient = plan_build(load_recipe("amd64.qcow2"),
                         BuildOptions(root=root, fs=False, lint=False, timestamp=0,
                                      files=[f"plan9.ini={tmp_path / 'ini'}"]))
    assert dict(lenient.fat_files)["plan9.ini"] == b"bootfile=9pc64"


def test_only_the_first_equals_sign_ends_the_fs_disk_key(root: Path) -> None:
    with pytest.raises(ImageBuildError) as err:
        plan_build(load_recipe("zynq.img"),
                   BuildOptions(root=root, fs=False, sets=["fs.disk=sd=C0"]))
    assert str(err.value).startswith("fs.disk 'sd=C0': expected an sd(3) name")


def _paths(plan: plan_mod.BuildPlan) -> set[str]:
    assert plan.fs_entries is not None
    return {e.path for e in plan.fs_entries}


def test_a_bind_of_two_directories_is_a_union_of_both(root: Path) -> None:
    # `bind -a sys/lib/dist/adm/timezone adm/timezone`: the tree's GMT and the dist's local
    assert sorted(p.name for p in (root / "adm/timezone").iterdir()) == ["GMT"]
    assert sorted(p.name for p in (root / "sys/lib/dist/adm/timezone").iterdir()) == ["local"]
    paths = _paths(plan_build(load_recipe("zynq.img"), BuildOptions(root=root, timestamp=0)))
    assert {"/adm/timezone/GMT", "/adm/timezone/local"} <= paths


def test_a_git_checkout_is_bound_where_the_recipe_says(root: Path, tmp_path: Path) -> None:
    r = Path(shutil.copytree(root, tmp_path / "root"))
    (r / ".git").mkdir()
    (r / ".git/HEAD").write_text("ref: refs/heads/front\n")
    proto = r / "sys/lib/sysconfig/proto/distproto"
    proto.write_text(proto.read_text() + "dist\td775\n\tplan9front\td775\n\t\t.git\td775\n"
                                         "\t\t\t+\n")
    recipe = load_recipe("zynq.img")
    bound = plan_build(recipe, BuildOptions(root=r, timestamp=0))
    assert "/dist/plan9front/.git/HEAD" in _paths(bound) and bound.missing_sources == []
    unbound = plan_build(recipe.replace(fs=recipe.fs.replace(git_bind=None)),
                         BuildOptions(root=r, timestamp=0))
    assert "/dist/plan9front/.git/HEAD" not in _paths(unbound)
    missing = [m.path for m in unbound.missing_sources]
    assert missing and all(p.startswith("/dist/plan9front/.git") for p in missing)
    (r / ".git/HEAD").unlink()
    (r / ".git").rmdir()
    (r / ".git").write_text("gitdir: elsewhere\n")  # a worktree's .git file: not a checkout
    assert "/dist/plan9front/.git/HEAD" not in _paths(
        plan_build(recipe, BuildOptions(root=r, timestamp=0)))
