"""The command line: one-line errors, exit 1, and no output file on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 1 << 20


def imagebuild(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return subprocess.run([sys.executable, "-m", "imagebuild", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def copy_root(root: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(root, dest)
    return dest


def test_list_names_every_target() -> None:
    proc = imagebuild("list")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["386.iso", "amd64.iso", "amd64.qcow2", "arm64.qcow2", "honeycomb.img",
                     "pi.img", "pi3.img", "reform.img", "zynq.img"]


def test_missing_inputs_are_all_reported_at_once(root: Path, tmp_path: Path) -> None:
    r = copy_root(root, tmp_path / "root")
    (r / "amd64/9pc64").unlink()
    (r / "386/pbs").unlink()
    out = tmp_path / "out.qcow2"
    proc = imagebuild("build", "amd64.qcow2", "--root", r, "-o", out)
    assert_one_line_error(proc, "amd64/9pc64", "386/pbs", "missing")
    assert not out.exists()
    assert list(tmp_path.glob(".*tmp")) == []


def test_bad_recipe_key(tmp_path: Path, root: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\nmegabytes = 10\n')
    proc = imagebuild("build", recipe, "--root", root, "-o", tmp_path / "x.qcow2")
    assert_one_line_error(proc, str(recipe), "megabytes")
    assert not (tmp_path / "x.qcow2").exists()


def test_template_error_names_template_and_line(tmp_path: Path, root: Path) -> None:
    templates = tmp_path / "t"
    templates.mkdir()
    (templates / "plan9.ini").write_text("bootfile={{ plan9.bootfile }}\n{{ plan9.oops }}\n")
    out = tmp_path / "x.qcow2"
    proc = imagebuild("build", "amd64.qcow2", "--root", root, "-o", out,
                      "--template-dir", templates)
    assert_one_line_error(proc, "plan9.ini:2", "oops")
    assert not out.exists()


def test_file_too_big_for_the_boot_partition(tmp_path: Path, root: Path) -> None:
    big = tmp_path / "huge"
    with big.open("wb") as f:  # sparse, 200 MiB: more than the 100 MiB FAT partition
        f.truncate(200 * MiB)
    out = tmp_path / "x.img"
    proc = imagebuild("build", "pi.img", "--root", root, "-o", out, "--file", f"huge={big}")
    assert_one_line_error(proc)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_file_larger_than_the_memory_allowed(tmp_path: Path, root: Path) -> None:
    import resource

    big = tmp_path / "huge"
    with big.open("wb") as f:  # sparse, 1.5 GiB: fits the image, not a 1 GiB address space
        f.truncate(1536 * MiB)
    out = tmp_path / "x.qcow2"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "imagebuild", "build", "amd64.qcow2", "--root", str(root),
         "--no-fs", "-o", str(out), "--file", f"huge={big}"],
        capture_output=True, text=True, env=env, preexec_fn=limit,
    )
    assert_one_line_error(proc, str(big), "too big to hold in memory")
    assert not out.exists()


def test_unwritable_output_directory(tmp_path: Path, root: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root ignores modes; an immutable directory stops root too
    chattr = ["chattr", "+i", str(locked)]
    if os.geteuid() == 0 and subprocess.run(chattr, capture_output=True).returncode:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        proc = imagebuild("build", "zynq.img", "--root", root, "-o", locked / "x.img")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert_one_line_error(proc, str(locked))
    assert list(locked.iterdir()) == []


def test_output_directory_that_is_a_file(tmp_path: Path, root: Path) -> None:
    # works as root too: a path below a regular file cannot be created
    blocker = tmp_path / "out"
    blocker.write_text("")
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", blocker / "x.img")
    assert_one_line_error(proc, str(blocker))


@pytest.mark.parametrize("kind", ["kernel", "symlink to kernel", "hard link to --file",
                                  "recipe"])
def test_output_that_is_an_input_is_refused(tmp_path: Path, root: Path, kind: str) -> None:
    root = copy_root(root, tmp_path / "root")
    kernel = root / "amd64" / "9pc64"
    extra = tmp_path / "extra.txt"
    extra.write_text("extra\n")
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\ndescription = "mine"\n')
    victim, out = {
        "kernel": (kernel, kernel),
        "symlink to kernel": (kernel, tmp_path / "link"),
        "hard link to --file": (extra, tmp_path / "hard"),
        "recipe": (recipe, recipe),
    }[kind]
    if kind == "symlink to kernel":
        out.symlink_to(kernel)
    elif kind == "hard link to --file":
        out.hardlink_to(extra)
    before = victim.read_bytes()
    proc = imagebuild("build", recipe, "--root", root, "--no-fs", "-o", out,
                      "--file", f"extra.txt={extra}")
    assert_one_line_error(proc, str(out), "output is the input")
    assert victim.read_bytes() == before
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("value", ["4294967296", "99999999999999999999"])
def test_source_date_epoch_past_plan9_times(
    tmp_path: Path, root: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    out = tmp_path / "x.qcow2"
    proc = imagebuild("build", "amd64.qcow2", "--root", root, "-o", out)
    assert_one_line_error(proc, "SOURCE_DATE_EPOCH", "2106")
    assert list(tmp_path.iterdir()) == []


def test_cwfs_build_with_times_after_2038(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cwfs's Timet is a 32-bit long (portdat.h): a later clock is one line, no output."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(1 << 31))
    out = tmp_path / "x.qcow2"
    proc = imagebuild("build", "amd64.qcow2", "--root", root, "--fs", "cwfs", "-o", out)
    assert_one_line_error(proc, "32-bit Timet")
    assert not out.exists()


def test_unknown_target(root: Path) -> None:
    proc = imagebuild("build", "vax.img", "--root", root)
    assert_one_line_error(proc, "vax.img", "known:")


def test_build_then_inspect_and_cat(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "z.img"
    proc = imagebuild("build", "zynq.img", "--root", root, "-o", out, "--plain",
                      "--set", "plan9.console=1")
    assert proc.returncode == 0, proc.stderr
    assert "MBR partitions" in proc.stdout and "PLAN9.INI" in proc.stdout  # 8.3: no long name
    cat = imagebuild("cat", out, "9fat:plan9.ini")
    assert cat.stdout == "bootfile=9zynq\nconsole=1\n"
    inspect = imagebuild("inspect", out, "--json")
    assert '"fat_bits"' in inspect.stdout


def test_corrupt_image_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(60))
    assert_one_line_error(imagebuild("inspect", bad), str(bad))


def test_fs_tree_too_big_for_the_partition(tmp_path: Path, root: Path) -> None:
    r = copy_root(root, tmp_path / "root")
    (r / "rc/bin/huge").write_bytes(b"x" * (250 * MiB))  # the fs partition of 300 MiB is ~200
    recipe = tmp_path / "small.toml"
    recipe.write_text('extends = "zynq.img"\nmb = 300\n')
    out = tmp_path / "small.img"
    proc = imagebuild("build", recipe, "--root", r, "-o", out)
    assert_one_line_error(proc, "fs")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_proto_error_names_file_and_line(tmp_path: Path, root: Path) -> None:
    r = copy_root(root, tmp_path / "root")
    proto = r / "sys/lib/sysconfig/proto/distproto"
    proto.write_text(proto.read_text() + "nosuchfile\t664\n")
    out = tmp_path / "x.img"
    proc = imagebuild("build", "zynq.img", "--root", r, "-o", out, "--strict")
    assert_one_line_error(proc, "distproto:", "nosuchfile")
    assert not out.exists()


def test_ls_cat_and_fsck_of_the_fs_partition(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "z.img"
    assert imagebuild("build", "zynq.img", "--root", root, "-o", out, "-q").returncode == 0
    ls = imagebuild("ls", out, "fs:/rc/bin")
    assert ls.returncode == 0 and ls.stdout.split()[-1] == "hello"
    assert imagebuild("cat", out, "fs:/rc/bin/hello").stdout == (root / "rc/bin/hello").read_text()
    fsck = imagebuild("fsck", out, "fs")
    assert fsck.returncode == 0 and "clean" in fsck.stdout
    for verb, spec in [("cat", "fs:/no/such/file"), ("ls", "fs:/nodir"),
                       ("cat", "9fat:nofile"), ("cat", "nocolon")]:
        assert_one_line_error(imagebuild(verb, out, spec), f"imagebuild: {out}: ")
