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


# -- [iso] recipes, inputs, templates and the key table: every field as documented ------------


ISO_FULL = """description = "d"
format = "iso"
objtype = "arm64"
kernels = ["k/9a", "k/9b"]
default = true
output = "cd.iso"
[iso]
volume = "V"
boot_image = "b/bios"
efi_boot_image = "b/efi"
plan9ini = "c/p.ini"
hybrid_loader = "h/l"
hybrid_mbr = "h/m"
hybrid_pbs = "h/p"
hybrid_efi = ["e/a*", "e/b"]
[fs]
type = "cwfs"
disk = "sdE1"
[vars.plan9]
x = "1"
"""


def test_iso_recipe_takes_every_key_where_it_belongs(tmp_path: Path) -> None:
    from imagebuild.recipe.load import FsSpec, IsoSpec, Recipe

    path = _write(tmp_path, "cd", ISO_FULL)
    recipe = load_recipe(path)
    default_fs = load_recipe("amd64.qcow2").fs
    assert recipe == Recipe(
        name="cd", path=path, sources=(path,), description="d", output="cd.iso", format="iso",
        mb=0, objtype="arm64", kernels=("k/9a", "k/9b"), default=True, mbr_bootcode=None,
        fdisk=(), prep=("fscache", "fsworm", "other"), fat_partition="", fat_pbs=None,
        fat_reserved=1, fat_files=(), render={}, vars={"plan9": {"x": "1"}},
        fs=FsSpec("cwfs", default_fs.protos, default_fs.binds, "/dist/plan9front", "sdE1", False),
        raw_writes=(),
        iso=IsoSpec(volume="V", boot_image="b/bios", efi_boot_image="b/efi", plan9ini="c/p.ini",
                    hybrid_loader="h/l", hybrid_mbr="h/m", hybrid_pbs="h/p",
                    hybrid_efi=("e/a*", "e/b")))
    assert recipe.root_inputs() == ["k/9a", "k/9b", *default_fs.protos, "b/bios", "b/efi"]
    assert (recipe.description, recipe.objtype) == ("d", "arm64")
    assert recipe.iso is not None  # field by field: a record's own constructor is under test too
    assert recipe.iso.as_dict() == {
        "volume": "V", "boot_image": "b/bios", "efi_boot_image": "b/efi", "plan9ini": "c/p.ini",
        "hybrid_loader": "h/l", "hybrid_mbr": "h/m", "hybrid_pbs": "h/p",
        "hybrid_efi": ("e/a*", "e/b")}


def test_iso_recipe_defaults(tmp_path: Path) -> None:
    from imagebuild.recipe.load import IsoSpec

    path = _write(tmp_path, "min", 'description = "d"\nformat = "iso"\nobjtype = "386"\n'
                                   'kernels = ["386/9pc"]\n[iso]\nvolume = "V"\nboot_image = "b"\n')
    recipe = load_recipe(path)
    assert recipe.iso == IsoSpec("V", "b", None, "cfg/plan9.ini", None, None, None, ())
    assert (recipe.output, recipe.default, recipe.vars) == ("9front.min", False, {"plan9": {}})
    assert recipe.fs == load_recipe("amd64.qcow2").fs
    assert recipe.root_inputs() == ["386/9pc", *recipe.fs.protos, "b"]
    for key, value in (("layout", "{}"), ("fat", "{}")):
        with pytest.raises(RecipeError, match=rf": key '{key}' has no meaning in an \[iso\]"):
            load_recipe(_write(tmp_path, "bad", f"extends = \"min.toml\"\n{key} = {value}\n"))
    with pytest.raises(RecipeError, match=r": missing key 'iso.boot_image'$"):
        load_recipe(_write(tmp_path, "bad", 'description = "d"\nformat = "iso"\nobjtype = "x"\n'
                                            'kernels = ["k"]\n[iso]\nvolume = "V"\n'))
    with pytest.raises(RecipeError, match=r": missing key 'objtype'$"):
        load_recipe(_write(tmp_path, "bad", 'description = "d"\nformat = "iso"\n'
                                            'kernels = ["k"]\n[iso]\nvolume = "V"\n'
                                            'boot_image = "b"\n'))


def test_root_inputs_list_each_root_file_once_in_order(tmp_path: Path) -> None:
    protos = ("sys/lib/sysconfig/proto/distproto", "sys/lib/sysconfig/proto/9bootproto")
    assert load_recipe("amd64.qcow2").root_inputs() == [
        "386/mbr", "386/pbs", "386/9bootfat", "amd64/9pc64", *protos]  # 9pc64 once
    assert load_recipe("reform.img").root_inputs() == [
        "sys/src/boot/reform/boot.scr", "arm64/9reform.u", "sys/src/boot/reform/flash.bin",
        *protos]  # plan9.ini is rendered, not read from the root
    path = _write(tmp_path, "none", 'extends = "reform.img"\n[fs]\ntype = "none"\n')
    assert load_recipe(path).root_inputs() == [
        "sys/src/boot/reform/boot.scr", "arm64/9reform.u", "sys/src/boot/reform/flash.bin"]


def test_template_files_follow_the_search_path(tmp_path: Path) -> None:
    from imagebuild.recipe.render import TEMPLATE_DIR, template_files

    pi = load_recipe("pi.img")
    assert template_files(pi) == [TEMPLATE_DIR / "config.txt", TEMPLATE_DIR / "cmdline.txt"]
    (tmp_path / "cmdline.txt").write_text("x\n")
    (tmp_path / "config.txt").mkdir()  # not a file: the next directory's
    assert template_files(pi, tmp_path) == [TEMPLATE_DIR / "config.txt", tmp_path / "cmdline.txt"]
    path = _write(tmp_path, "mine", 'extends = "pi.img"\n[render]\n"cmdline.txt" = "nosuch"\n')
    assert template_files(load_recipe(path)) == [TEMPLATE_DIR / "config.txt"]


def test_list_keys_lines_word_for_word() -> None:
    from imagebuild.recipe import keys

    lines = keys.describe()
    for line in (
        "description          string                   required           one line for "
        "`imagebuild list`",
        "output               string                                      output file name, in "
        "out/ (default 9front.NAME, not inherited)",
        "format               qcow2|raw|iso            required           container",
        "mb                   integer 1..2097151       required           image size in MiB "
        "(raw images get one MiB more)",
        "default              boolean                  default False      built by a plain "
        "`./dev build`",
        "render               table                                       boot file name -> "
        "template name",
        "layout.fdisk         string|list              required           \"auto\" (fdisk -baw) "
        "or the commands piped to fdisk -b",
        "fat.reserved         integer 1..65535         default 1          reserved sectors "
        "(disk/format -r)",
        "fs.type              hjfs|gefs|cwfs|none      default 'hjfs'     file system of the fs "
        "partition",
        "raw_write[].offset   integer 0..              required           byte offset in the image",
        "iso.plan9ini         string                   default 'cfg/plan9.ini' tree path of "
        "plan9.ini: bootfile= replaced, --set",
        "iso.hybrid_efi       list                                        root globs of the ESP's "
        "efi/boot files",
    ):
        assert line in lines
    assert keys.Key(int, keys.REQUIRED, "x").required and not keys.Key(int, 0, "x").required
    assert keys.Key(str, "d", "doc", 1, 9, ("a", "b")).as_dict() == {
        "type": str, "default": "d", "doc": "doc", "lo": 1, "hi": 9, "choices": ("a", "b")}


def test_with_fs_puts_the_file_servers_partitions_where_fs_was(tmp_path: Path) -> None:
    from imagebuild.recipe.load import with_fs

    amd64 = load_recipe("amd64.qcow2")
    cwfs = with_fs(amd64, "cwfs")
    assert (cwfs.fs.type, cwfs.prep) == ("cwfs", ("9fat", "nvram", "fscache", "fsworm", "other"))
    assert with_fs(cwfs, "gefs").prep == ("9fat", "nvram", "fs")
    assert with_fs(amd64, "none").prep == amd64.prep  # prepdisk makes nothing for it
    assert with_fs(amd64, disk="sdF0").fs == amd64.fs.replace(disk="sdF0")
    middle = load_recipe(_write(tmp_path, "m", 'extends = "amd64.qcow2"\n'
                                               '[layout]\nprep = ["9fat", "fs", "nvram"]\n'))
    assert with_fs(middle, "cwfs").prep == ("9fat", "fscache", "fsworm", "other", "nvram")
    bare = load_recipe(_write(tmp_path, "b", 'extends = "amd64.qcow2"\n'
                                             '[layout]\nprep = ["9fat", "nvram"]\n'))
    assert bare.prep == ("9fat", "nvram", "fs")  # hjfs: its partition goes at the end


def test_extends_finds_a_target_of_the_recipe_directory_given(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "base.toml").write_text((Path(__file__).parent.parent / "imagebuild/recipes/"
                                    "amd64.qcow2.toml").read_text())
    other = tmp_path / "other"
    other.mkdir()
    mine = _write(other, "mine", 'extends = "base"\nmb = 100\n')
    recipe = load_recipe(mine, recipe_dir=lib)
    assert (recipe.mb, recipe.sources) == (100, (mine, lib / "base.toml"))
    assert load_recipe("base", recipe_dir=lib).output == "9front.amd64.qcow2"


@pytest.mark.parametrize(("name", "parent", "output"), [
    ("big.qcow2", "amd64.qcow2", "9front.big.qcow2"),
    ("big.img", "amd64.qcow2", "9front.big.img"),
    ("big", "amd64.qcow2", "9front.big.qcow2"),
    ("big", "zynq.img", "9front.big.img"),
])
def test_default_output_keeps_a_container_suffix(tmp_path: Path, name: str, parent: str,
                                                 output: str) -> None:
    path = _write(tmp_path, name, f'extends = "{parent}"\n')
    assert load_recipe(path).output == output


def test_extends_merges_tables_and_replaces_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path, "m", 'extends = "amd64.qcow2"\n[fs]\ndisk = "sdE0"\n'
                                 '[vars.plan9]\n"*acpi" = "1"\n')
    recipe = load_recipe(path)
    assert recipe.fs.disk == "sdE0"  # a table the parent does not have
    assert recipe.vars == {"plan9": {"bootfile": "{{ kernel }}", "console": "0", "*acpi": "1"}}
    path = _write(tmp_path, "v", 'extends = "amd64.qcow2"\nvars = 3\n')  # a table replaced
    with pytest.raises(RecipeError, match=r": key 'vars' must be a table, not 3$"):
        load_recipe(path)


def test_fs_table_takes_every_key(tmp_path: Path) -> None:
    from imagebuild.recipe.load import MKFILE_BINDS, FsSpec

    path = _write(tmp_path, "f", 'extends = "amd64.qcow2"\n[fs]\ntype = "gefs"\n'
                                 'protos = ["p/a", "p/b"]\ngit_bind = ""\ndisk = "sdE1"\n'
                                 'strict = true\n[fs.binds]\n"/usr" = "u"\n"/x" = ["a", "b"]\n')
    assert load_recipe(path).fs.as_dict() == FsSpec(
        "gefs", ("p/a", "p/b"), {**MKFILE_BINDS, "/usr": ("u",), "/x": ("a", "b")}, None, "sdE1",
        True).as_dict()
    assert load_recipe(path).fs.strict is True and load_recipe(path).fs.binds["/usr"] == ("u",)
    path = _write(tmp_path, "g", 'extends = "amd64.qcow2"\n[fs]\ngit_bind = "/src"\n')
    assert load_recipe(path).fs.git_bind == "/src"


def test_extends_chain_depth_bound(tmp_path: Path) -> None:
    from imagebuild.recipe.load import MAX_EXTENDS_DEPTH

    def chain(n: int) -> Path:  # r0 extends r1 ... extends r(n-1) extends amd64.qcow2
        for i in range(n):
            parent = f"r{i + 1}.toml" if i + 1 < n else "amd64.qcow2"
            _write(tmp_path, f"r{i}", f'extends = "{parent}"\nmb = {100 + i}\n')
        return tmp_path / "r0.toml"

    recipe = load_recipe(chain(MAX_EXTENDS_DEPTH))  # 8 hops: amd64.qcow2 is the 9th file
    assert (recipe.mb, len(recipe.sources)) == (100, MAX_EXTENDS_DEPTH + 1)
    with pytest.raises(RecipeError) as err:
        load_recipe(chain(MAX_EXTENDS_DEPTH + 1))
    assert str(err.value) == (f"{tmp_path / f'r{MAX_EXTENDS_DEPTH}.toml'}: 'extends' chain deeper "
                              f"than {MAX_EXTENDS_DEPTH} (a cycle?)")


def test_derived_default_and_bounds_that_are_allowed(tmp_path: Path) -> None:
    derived = load_recipe(_write(tmp_path, "d", 'extends = "amd64.qcow2"\ndefault = true\n'
                                                'description = "mine"\n'))
    assert derived.default and derived.description == "mine"
    for mb in (1, 2097151):
        assert load_recipe(_write(tmp_path, "m", f'extends = "amd64.qcow2"\nmb = {mb}\n')).mb == mb
    for reserved in (1, 65535):
        text = f'extends = "amd64.qcow2"\n[fat]\nreserved = {reserved}\n'
        assert load_recipe(_write(tmp_path, "r", text)).fat_reserved == reserved
    from imagebuild.recipe.load import RawWrite

    text = 'extends = "reform.img"\n[[raw_write]]\nfile = "f"\noffset = 0\n'
    assert load_recipe(_write(tmp_path, "w", text)).raw_writes[0] == RawWrite("f", 0)


def test_recipe_file_refusals_word_for_word(tmp_path: Path) -> None:
    import os

    def refusal(path: Path) -> str:
        with pytest.raises(RecipeError) as err:
            load_recipe(path)
        return str(err.value)

    assert refusal(tmp_path / "nosuch.toml") == f"{tmp_path / 'nosuch.toml'}: no such recipe file"
    (tmp_path / "dir.toml").mkdir()
    assert refusal(tmp_path / "dir.toml") == f"{tmp_path / 'dir.toml'}: recipe is a directory"
    os.mkfifo(tmp_path / "fifo.toml")
    assert refusal(tmp_path / "fifo.toml") == (
        f"{tmp_path / 'fifo.toml'}: recipe is not a regular file")
    big = _write(tmp_path, "big", "#" * (1 << 20) + "\n")
    assert refusal(big) == f"{big}: recipe is 1048577 bytes, more than 1048576"
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'extends = "amd64.qcow2"\n\ndescription = "caf\xe9"\n')
    assert refusal(bad) == f"{bad}:3: not UTF-8 text (byte 43)"
