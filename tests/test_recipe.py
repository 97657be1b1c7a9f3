"""Recipes: every disk target of the dist mkfile, validated with errors naming file and key."""

from pathlib import Path

import pytest

from imagebuild.errors import RecipeError
from imagebuild.recipe.load import list_recipes, load_recipe

MiB = 1 << 20

MKFILE_TARGETS = {
    # target: (mb, objtype, container) from sys/lib/dist/mkfile (June 2025)
    "amd64.qcow2": (3770, "amd64", "qcow2"),
    "arm64.qcow2": (3770, "arm64", "qcow2"),
    "pi.img": (1885, "arm", "raw"),
    "pi3.img": (1885, "arm64", "raw"),
    "zynq.img": (1885, "arm", "raw"),
    "reform.img": (1885, "arm64", "raw"),
    "honeycomb.img": (1885, "arm64", "raw"),
}


def test_every_mkfile_disk_target_has_a_recipe() -> None:
    disk = {n for n in list_recipes() if load_recipe(n).iso is None}
    assert disk == set(MKFILE_TARGETS)
    assert set(list_recipes()) - disk == {"386.iso", "amd64.iso"}  # %.386.iso, %.amd64.iso


@pytest.mark.parametrize("name", sorted(MKFILE_TARGETS))
def test_recipe_size_objtype_container(name: str) -> None:
    mb, objtype, container = MKFILE_TARGETS[name]
    recipe = load_recipe(name)
    assert (recipe.mb, recipe.objtype, recipe.format) == (mb, objtype, container)
    assert recipe.output == f"9front.{name}"
    assert recipe.default


def test_image_size_per_container_as_the_mkfile_makes_it() -> None:
    recipe = load_recipe("amd64.qcow2")
    # disk/qcowfs -n `{echo $mb '*1048576' | pc}: exactly mb MiB
    assert recipe.image_size("qcow2") == 3770 * MiB
    # dd -bs 1048576 -oseek $mb -count 1: one MiB written after mb MiB
    assert recipe.image_size("raw") == 3771 * MiB
    assert load_recipe("pi.img").image_size("raw") == 1886 * MiB
    assert recipe.output_name("raw") == "9front.amd64.img"
    assert load_recipe("pi.img").output_name("qcow2") == "9front.pi.qcow2"


def test_amd64_steps_follow_the_mkfile() -> None:
    r = load_recipe("amd64.qcow2")
    assert r.mbr_bootcode == "386/mbr"
    assert r.fdisk == "auto"
    assert r.prep == ("9fat", "nvram", "fs")
    assert (r.fat_partition, r.fat_pbs, r.fat_reserved) == ("9fat", "386/pbs", 2)
    assert r.fat_files == ("386/9bootfat", "plan9.ini", "amd64/9pc64")


def test_reform_writes_flash_bin_at_33k() -> None:
    (write,) = load_recipe("reform.img").raw_writes
    assert (write.file, write.offset) == ("sys/src/boot/reform/flash.bin", 33 * 1024)


def test_pi_fdisk_script_is_the_mkfiles() -> None:
    r = load_recipe("pi.img")
    assert r.fdisk == ("a p1 . .+100M", "t p1 FAT32", "a p2 . $", "t p2 PLAN9", "A p1",
                       "p", "w", "q")
    assert r.fat_partition == "dos"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_recipe_extends_and_overrides_a_few_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "mine", 'extends = "amd64.qcow2"\nmb = 8000\n'
                  '[vars.plan9]\nconsole = "1"\n')
    r = load_recipe(path)
    assert r.mb == 8000
    assert r.vars["plan9"] == {"bootfile": "{{ kernel }}", "console": "1"}
    assert r.fat_pbs == "386/pbs"
    assert not r.default  # derived targets are not built by default unless they say so
    assert r.sources[0] == path and r.sources[1].name == "amd64.qcow2.toml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('extends = "amd64.qcow2"\nmbb = 3\n', "unknown key 'mbb'"),
        ('extends = "amd64.qcow2"\nmb = "big"\n', "key 'mb' must be an integer"),
        ('extends = "amd64.qcow2"\nmb = 0\n', "key 'mb' must be between 1 and"),
        # issue 9.13: sizes the MBR's 32-bit sector numbers and the BPB's 16 bits cannot hold
        ('extends = "amd64.qcow2"\nmb = 9223372036854775807\n', "key 'mb' must be between"),
        ('extends = "amd64.qcow2"\n[fat]\nreserved = 65536\n', "'fat.reserved' must be between"),
        ('extends = "amd64.qcow2"\nformat = "vmdk"\n', "key 'format' must be one of"),
        ('extends = "amd64.qcow2"\n[layout]\nfdisk = "manual"\n', "layout.fdisk"),
        ('extends = "amd64.qcow2"\n[fat]\nfiles = ["/etc/passwd"]\n', "relative to the root"),
        ('extends = "amd64.qcow2"\n[fat]\nfiles = ["../x"]\n', "relative to the root"),
        ('extends = "nosuch"\n', "no recipe named 'nosuch'"),
        ('description = "x"\n', "missing key 'format'"),
        ("mb = [\n", "mine.toml"),
        ('extends = "amd64.qcow2"\n[layout]\nbogus = 1\n', "unknown key 'layout.bogus'"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "mine", text)
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'extends = "b"\n')
    path = _write(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"a": 'extends = "b.toml"\n', "b": 'extends = "a.toml"\n'},
         r"a cycle \(a\.toml -> b\.toml -> a\.toml\)"),
        ({"a": 'extends = "a.toml"\n'}, r"a cycle \(a\.toml -> a\.toml\)"),
        ({"a": 'extends = "gone.toml"\n'}, r"a\.toml: key 'extends': no recipe named 'gone\.toml'"),
    ],
)
def test_extends_by_file_name_cycles_and_missing_parents(
    tmp_path: Path, files: dict[str, str], match: str
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(RecipeError, match=match):
        load_recipe(tmp_path / "a.toml")


def test_extends_names_a_file_beside_the_recipe(tmp_path: Path) -> None:
    _write(tmp_path, "base", 'extends = "amd64.qcow2"\nmb = 5000\n')
    path = _write(tmp_path, "mine", 'extends = "base.toml"\ndescription = "mine"\n')
    recipe = load_recipe(path)
    assert (recipe.mb, recipe.objtype) == (5000, "amd64")


@pytest.mark.parametrize(("name", "text", "output"), [
    ("mine", 'extends = "amd64.qcow2"\ndescription = "m"\n', "9front.mine.qcow2"),
    ("mine", 'extends = "zynq.img"\ndescription = "m"\n', "9front.mine.img"),
    ("big.img", 'extends = "zynq.img"\ndescription = "m"\n', "9front.big.img"),
    ("mine", 'extends = "zynq.img"\noutput = "z.raw"\n', "z.raw"),
])
def test_derived_recipe_does_not_write_over_its_parents_image(
    tmp_path: Path, name: str, text: str, output: str
) -> None:
    assert load_recipe(_write(tmp_path, name, text)).output == output


def test_unknown_target_lists_known_ones() -> None:
    with pytest.raises(RecipeError, match=r"known: 386\.iso, amd64\.iso, amd64\.qcow2"):
        load_recipe("vax.img")


def test_non_utf8_recipe_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_bytes(b'extends = "amd64.qcow2"\ndescription = "caf\xe9"\n')
    with pytest.raises(RecipeError, match=r"mine\.toml:2: not UTF-8"):
        load_recipe(path)


def test_deeply_nested_recipe_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(RecipeError, match=r"mine\.toml"):
        load_recipe(path)


def test_recipe_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    import os

    path = tmp_path / "mine.toml"
    os.mkfifo(path)
    with pytest.raises(RecipeError, match="not a regular file"):
        load_recipe(path)


def test_keys_table_declares_every_key_once() -> None:
    from imagebuild.recipe import keys

    for table in (keys.TOP, keys.LAYOUT, keys.FAT, keys.FS, keys.RAW_WRITE):
        for spec in table.values():
            assert spec.doc and (spec.required or spec.default is not keys.REQUIRED)


def test_list_keys_prints_the_table_the_loader_validates_with() -> None:
    from imagebuild.recipe import keys

    lines = keys.describe()
    names = [line.split()[0] for line in lines]
    expected = [p + k for p, table in keys.TABLES.items() for k in table]
    assert names == expected
    assert any(line.startswith("fat.reserved") and "1..65535" in line for line in lines)
