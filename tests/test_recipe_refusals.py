"""Every refusal of the recipe loader (imagebuild.recipe.load), word for word.

Each bad recipe is one RecipeError: the recipe file, the dotted key, what the key must be
(keys.py's table: type, choices, bounds) and the value found, on one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.errors import RecipeError
from imagebuild.recipe.load import load_recipe, with_fs

DISK = 'extends = "amd64.qcow2"\n'
ISO = 'extends = "amd64.iso"\n'
TOP_KEYS = ("description, extends, output, format, mb, objtype, kernels, default, layout, fat, "
            "render, vars, raw_write, fs, iso")


@pytest.mark.parametrize(("text", "message"), [
    (DISK + "extends2 = 1\n", f"unknown key 'extends2' (expected one of: {TOP_KEYS})"),
    ("extends = 3\n", "key 'extends' must be a string, not 3"),
    ('description = "x"\n', "missing key 'format'"),
    ("description = 1\n", "key 'description' must be a string, not 1"),
    (DISK + 'mb = "big"\n', "key 'mb' must be an integer, not 'big'"),
    (DISK + "mb = true\n", "key 'mb' must be an integer, not True"),
    (DISK + "mb = 0\n", "key 'mb' must be between 1 and 2097151, not 0"),
    (DISK + "mb = 2097152\n", "key 'mb' must be between 1 and 2097151, not 2097152"),
    (DISK + 'format = "vmdk"\n',
     "key 'format' must be one of ('qcow2', 'raw', 'iso'), not 'vmdk'"),
    (DISK + "[layout]\nfdisk = 3\n", "key 'layout.fdisk' must be a string or a list, not 3"),
    (DISK + '[layout]\nfdisk = "manual"\n',
     "key 'layout.fdisk' must be \"auto\" or a list of commands"),
    (DISK + '[layout]\nfdisk = ["a", 1]\n',
     "key 'layout.fdisk' must be a list of non-empty strings"),
    (DISK + '[layout]\nfdisk = ["a", ""]\n',
     "key 'layout.fdisk' must be a list of non-empty strings"),
    (DISK + '[layout]\nprep = [""]\n', "key 'layout.prep' must be a list of non-empty strings"),
    (DISK + '[layout]\nmbr = "/mbr"\n',
     "key 'layout.mbr': '/mbr' must be relative to the root, inside it"),
    (DISK + '[render]\n"plan9.ini" = 3\n', "key 'render.plan9.ini' must be a template name"),
    (DISK + "raw_write = [1]\n", "key 'raw_write[0]' must be a table"),
    (DISK + '[[raw_write]]\nfile = "a"\n', "missing key 'raw_write[0].offset'"),
    (DISK + '[[raw_write]]\nfile = "/a"\noffset = 0\n',
     "key 'raw_write[0].file': '/a' must be relative to the root, inside it"),
    (DISK + '[[raw_write]]\nfile = "a"\noffset = -1\n',
     "key 'raw_write[0].offset' must be at least 0, not -1"),
    (DISK + '[[raw_write]]\nfile = "a"\noffset = 1\nx = 2\n',
     "unknown key 'raw_write[0].x' (expected one of: file, offset)"),
    (DISK + '[fat]\nfiles = ["/etc/passwd"]\n',
     "key 'fat.files': '/etc/passwd' must be relative to the root, inside it"),
    (DISK + "[fat]\nreserved = 0\n", "key 'fat.reserved' must be between 1 and 65535, not 0"),
    (DISK + "[fat]\nreserved = 65536\n",
     "key 'fat.reserved' must be between 1 and 65535, not 65536"),
    (DISK + '[fat]\npbs = "a/../../p"\n',
     "key 'fat.pbs': 'a/../../p' must be relative to the root, inside it"),
    (DISK + 'kernels = ["../k"]\n',
     "key 'kernels': '../k' must be relative to the root, inside it"),
    (DISK + "kernels = [1]\n", "key 'kernels' must be a list of non-empty strings"),
    (DISK + 'kernels = ["amd64/9pc64\\u0000"]\n',
     "key 'kernels': 'amd64/9pc64\\x00' holds a NUL byte"),
    (DISK + 'output = "../README.md"\n',
     "key 'output': '../README.md' must be a file name (it goes in out/)"),
    (DISK + 'output = "/tmp/x.img"\n',
     "key 'output': '/tmp/x.img' must be a file name (it goes in out/)"),
    (DISK + 'output = ".."\n', "key 'output': '..' must be a file name (it goes in out/)"),
    (DISK + 'output = "x\\u0000"\n',
     "key 'output': 'x\\x00' must be a file name (it goes in out/)"),
    (DISK + '[fs]\ntype = "zfs"\n',
     "key 'fs.type' must be one of ('hjfs', 'gefs', 'cwfs', 'none'), not 'zfs'"),
    (DISK + '[fs]\nprotos = ["/p"]\n',
     "key 'fs.protos': '/p' must be relative to the root, inside it"),
    (DISK + '[fs.binds]\n"usr" = "a"\n', "key 'fs.binds.usr': the bound path must start with /"),
    (DISK + '[fs.binds]\n"/usr" = []\n',
     "key 'fs.binds./usr' must be a directory or a list of them"),
    (DISK + '[fs.binds]\n"/usr" = 3\n',
     "key 'fs.binds./usr' must be a directory or a list of them"),
    (DISK + '[fs.binds]\n"/usr" = ["/a"]\n',
     "key 'fs.binds./usr': '/a' must be relative to the root, inside it"),
    (DISK + '[fs.binds]\n"/usr" = [1]\n',
     "key 'fs.binds./usr' must be a list of non-empty strings"),
    (DISK + '[fs]\ndisk = "hd0"\n', "key 'fs.disk' must be an sd(3) name such as sdC0, not 'hd0'"),
    (DISK + "[fs]\nbogus = 1\n",
     "unknown key 'fs.bogus' (expected one of: type, protos, binds, git_bind, disk, strict)"),
    (DISK + "[fs]\nstrict = 1\n", "key 'fs.strict' must be true or false, not 1"),
    (ISO + "mb = 3\n", "key 'mb' has no meaning in an [iso] recipe"),
    (ISO + 'format = "raw"\n', "an [iso] recipe has format = \"iso\", not 'raw'"),
    (ISO + "kernels = []\n", "key 'kernels' must name the kernel bootfile= loads"),
    (ISO + "[iso]\nvolume = 3\n", "key 'iso.volume' must be a string, not 3"),
    (ISO + '[iso]\nvolume = "9\\u0000front"\n', "key 'iso.volume': '9\\x00front' holds a NUL byte"),
    (DISK + '[fs]\ngit_bind = "/dist/a\\u0000b"\n',
     "key 'fs.git_bind': '/dist/a\\x00b' must be an fs path starting with / (or \"\" for "
     "nowhere), without a NUL byte"),
    (DISK + '[fs]\ngit_bind = "dist/plan9front"\n',
     "key 'fs.git_bind': 'dist/plan9front' must be an fs path starting with / (or \"\" for "
     "nowhere), without a NUL byte"),
    (ISO + '[iso]\nboot_image = "/b"\n',
     "key 'iso.boot_image': '/b' must be relative to the root, inside it"),
    (ISO + '[iso]\nplan9ini = "../x"\n',
     "key 'iso.plan9ini': '../x' must be relative to the root, inside it"),
    (ISO + '[iso]\nhybrid_efi = ["/etc/host*"]\n',
     "key 'iso.hybrid_efi': '/etc/host*' must be relative to the root, inside it"),
    (ISO + '[iso]\nhybrid_efi = ["../../etc/host*"]\n',
     "key 'iso.hybrid_efi': '../../etc/host*' must be relative to the root, inside it"),
    (ISO + "[iso]\nbogus = 1\n",
     "unknown key 'iso.bogus' (expected one of: volume, boot_image, efi_boot_image, plan9ini, "
     "hybrid_loader, hybrid_mbr, hybrid_pbs, hybrid_efi)"),
    (ISO + "[iso]\nhybrid_efi = [1]\n", "key 'iso.hybrid_efi' must be a list of non-empty strings"),
    (ISO + 'kernels = ["/k"]\n', "key 'kernels': '/k' must be relative to the root, inside it"),
    (ISO + "kernels = [1]\n", "key 'kernels' must be a list of non-empty strings"),
    (ISO + '[fs]\ndisk = "hd0"\n',
     "key 'fs.disk' must be an sd(3) name such as sdC0, not 'hd0'"),
    (DISK + "[fat]\nfiles = [1]\n", "key 'fat.files' must be a list of non-empty strings"),
    (DISK + '[fs]\nprotos = [""]\n', "key 'fs.protos' must be a list of non-empty strings"),
    (DISK + 'output = ""\n', "key 'output': '' must be a file name (it goes in out/)"),
    (DISK + 'output = "."\n', "key 'output': '.' must be a file name (it goes in out/)"),
    ("iso = {}\n", "missing key 'description'"),
    ("mb = [\n", "Invalid value (at end of document)"),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "tables or arrays nested too deeply"),
    ('extends = "nosuch"\n', "key 'extends': no recipe named 'nosuch'"),
    ('extends = "gone.toml"\n', "key 'extends': no recipe named 'gone.toml'"),
    ('extends = "mine.toml"\n', "key 'extends': a cycle (mine.toml -> mine.toml)"),
])
def test_recipe_refusal_word_for_word(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: {message}"


def test_with_fs_refusals_word_for_word() -> None:
    recipe = load_recipe("amd64.qcow2")
    with pytest.raises(RecipeError) as err:
        with_fs(recipe, "zfs")
    assert str(err.value) == "--fs 'zfs': expected one of hjfs, gefs, cwfs, none"
    with pytest.raises(RecipeError) as err:
        with_fs(recipe, "cwfs", "sdC0)(x")
    assert str(err.value) == "fs.disk 'sdC0)(x': expected an sd(3) name such as sdC0 or sdF0"


# -- templates and --set (imagebuild.recipe.render) ------------------------------------------


def _render_error(recipe: str | Path = "amd64.qcow2", **kw: object) -> str:
    from imagebuild.errors import TemplateError
    from imagebuild.recipe.render import render_boot_files

    with pytest.raises(TemplateError) as err:
        render_boot_files(load_recipe(recipe), **kw)  # type: ignore[arg-type]
    return str(err.value)


SET_SHAPE = "expected NAMESPACE.KEY=VALUE, e.g. plan9.console=0"


@pytest.mark.parametrize(("target", "option", "message"), [
    ("amd64.qcow2", "nonsense", f"--set 'nonsense': {SET_SHAPE}"),
    ("amd64.qcow2", "plan9=1", f"--set 'plan9=1': {SET_SHAPE}"),
    ("amd64.qcow2", "9a.b=1", f"--set '9a.b=1': {SET_SHAPE}"),
    ("amd64.qcow2", "a..b=1", f"--set 'a..b=1': {SET_SHAPE}"),
    ("amd64.qcow2", "a.b c=1", f"--set 'a.b c=1': {SET_SHAPE}"),
    ("amd64.qcow2", "plan9.console=0\nbootfile=x",
     "--set 'plan9.console=0'...: a value must be a single line"),
    ("amd64.qcow2", "plan9.console=0\rbootfile=x",
     "--set 'plan9.console=0'...: a value must be a single line"),
    ("amd64.qcow2", "plan9.x=\udcff", "--set 'plan9.x=\\udcff': not UTF-8 text"),
    ("amd64.qcow2", "grub.t=3", "--set grub.t=3: target amd64.qcow2 has no variables named "
                                "'grub' (it has: plan9)"),
    ("amd64.qcow2", "plan9.console.x=1", "--set plan9.console.x=1: 'console' is a value, not a "
                                         "table"),
    ("pi.img", "config.pi3=1", "--set config.pi3=1: 'pi3' is a table, not a value"),
    ("pi.img", "config.pi3.core_freq.x=1",
     "--set config.pi3.core_freq.x=1: 'core_freq' is a value, not a table"),
])
def test_set_refusal_word_for_word(target: str, option: str, message: str) -> None:
    assert _render_error(target, sets=[option]) == message


def test_set_names_every_namespace_or_none() -> None:
    from imagebuild.errors import TemplateError
    from imagebuild.recipe.render import apply_sets

    recipe = load_recipe("pi.img")
    with pytest.raises(TemplateError) as err:
        apply_sets(recipe, {"plan9": {}, "config": {}}, ["x.y=1"])
    assert str(err.value) == ("--set x.y=1: target pi.img has no variables named 'x' (it has: "
                              "config, plan9)")
    with pytest.raises(TemplateError) as err:
        apply_sets(recipe, {}, ["x.y=1"])
    assert str(err.value) == "--set x.y=1: target pi.img has no variables named 'x' (it has: none)"
    variables: dict[str, object] = {"cmdline": {}}
    # '-' in names, '=' in values
    apply_sets(recipe, variables, ["cmdline.a-b.c=1", "cmdline.k=v=w"])
    assert variables == {"cmdline": {"a-b": {"c": "1"}, "k": "v=w"}}


@pytest.mark.parametrize(("text", "message"), [
    (b"{{ 1 / 0 }}\n", "{t}:1: ZeroDivisionError: division by zero (rendering plan9.ini)"),
    (b'ok\n{{ "a" + 1 }}\n',
     '{t}:2: TypeError: can only concatenate str (not "int") to str (rendering plan9.ini)'),
    (b'{% include "plan9.ini" %}\n',
     "{t}: templates include each other without end (rendering plan9.ini)"),
    (b"{% for x in %}\n", "{t}:1: Expected an expression, got 'end of statement block'"),
    (b"ok\n\n{{ plan9.nosuch }}\n",
     "{t}:3: 'dict object' has no attribute 'nosuch' (rendering plan9.ini)"),
    (b'{% include "../x" %}\n', "template '../x': must be a name inside the template directory"),
    (b"ok\ncaf\xe9\n", "{r}: [render] plan9.ini: {t}:2: not UTF-8 text"),
])
def test_template_refusal_word_for_word(tmp_path: Path, text: bytes, message: str) -> None:
    (tmp_path / "plan9.ini").write_bytes(text)
    where = {"t": str(tmp_path / "plan9.ini"), "r": str(load_recipe("amd64.qcow2").path)}
    assert _render_error(template_dir=tmp_path) == message.format(**where)


def test_template_dir_and_render_table_refusals_word_for_word(tmp_path: Path) -> None:
    from imagebuild.recipe.render import TEMPLATE_DIR

    assert _render_error(template_dir=tmp_path / "nosuch") == (
        f"--template-dir {tmp_path / 'nosuch'}: not a directory")
    (tmp_path / "plan9.ini").mkdir()
    stock = load_recipe("amd64.qcow2").path
    assert _render_error(template_dir=tmp_path) == (
        f"{stock}: [render] plan9.ini: {tmp_path / 'plan9.ini'}: template is a directory")
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\n[render]\n"plan9.ini" = "../../etc/passwd"\n')
    assert _render_error(recipe) == (
        f"{recipe}: [render] plan9.ini: template '../../etc/passwd': must be a name inside the "
        "template directory")
    recipe.write_text('extends = "amd64.qcow2"\n[render]\n"plan9.ini" = "nosuch.ini"\n')
    assert _render_error(recipe) == (
        f"{recipe}: template 'nosuch.ini' for plan9.ini not found in {TEMPLATE_DIR}")
    assert _render_error(recipe, template_dir=tmp_path) == (
        f"{recipe}: template 'nosuch.ini' for plan9.ini not found in {tmp_path}, {TEMPLATE_DIR}")


@pytest.mark.parametrize(("value", "message"), [
    ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
    ('{{ "a" + 1 }}', 'TypeError: can only concatenate str (not "int") to str'),
    ("{{ nosuch }}", "'nosuch' is undefined"),
    ("{% if %}", "Expected an expression, got 'end of statement block'"),
])
def test_variable_value_refusal_word_for_word(tmp_path: Path, value: str, message: str) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f"extends = \"amd64.qcow2\"\n[vars.plan9]\nbootfile = '{value}'\n")
    assert _render_error(recipe) == f"{recipe}: [vars]: variable value {value!r}: {message}"


def test_set_on_a_table_names_the_last_part() -> None:
    from imagebuild.errors import TemplateError
    from imagebuild.recipe.render import apply_sets

    with pytest.raises(TemplateError) as err:
        apply_sets(load_recipe("pi.img"), {"a": {"b": {"c": {}}}}, ["a.b.c=1"])
    assert str(err.value) == "--set a.b.c=1: 'c' is a table, not a value"


def test_template_names_outside_the_directory_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    for name in ("/etc/passwd", "a/../../x", ".."):
        recipe.write_text(f'extends = "amd64.qcow2"\n[render]\n"plan9.ini" = "{name}"\n')
        assert _render_error(recipe) == (
            f"{recipe}: [render] plan9.ini: template {name!r}: must be a name inside the "
            "template directory")


def test_template_and_recipe_read_errors_name_the_file(tmp_path: Path) -> None:
    # /proc/self/mem is a regular file of size 0 whose first page cannot be read (EIO)
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux's /proc/self/mem")
    (tmp_path / "plan9.ini").symlink_to("/proc/self/mem")
    stock = load_recipe("amd64.qcow2").path
    assert _render_error(template_dir=tmp_path) == (
        f"{stock}: [render] plan9.ini: {tmp_path / 'plan9.ini'}: Input/output error")
    recipe = tmp_path / "mine.toml"
    recipe.symlink_to("/proc/self/mem")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(err.value) == f"{recipe}: Input/output error"


def test_template_error_paths_word_for_word(tmp_path: Path) -> None:
    stock = load_recipe("amd64.qcow2").path
    top = tmp_path / "plan9.ini"
    top.write_text('ok\n{% include "inc.txt" %}\n')
    (tmp_path / "inc.txt").write_text("a\n{% if %}\n")  # the included file's name and line
    assert _render_error(template_dir=tmp_path) == (
        f"{tmp_path / 'inc.txt'}:2: Expected an expression, got 'end of statement block'")
    top.write_text('ok\n{% include "nope.txt" %}\n')
    assert _render_error(template_dir=tmp_path) == f"{top}:2: nope.txt (rendering plan9.ini)"
    value = "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f"extends = \"amd64.qcow2\"\n[vars.plan9]\nbootfile = '{value}'\n")
    assert _render_error(recipe) == f"{recipe}: [vars]: variable value {value!r}: nested too deeply"
    assert stock.name == "amd64.qcow2.toml"
