"""Boot files rendered from templates match what the mkfile's echo lines write."""

from pathlib import Path

import pytest

from imagebuild.errors import TemplateError
from imagebuild.recipe.load import load_recipe
from imagebuild.recipe.render import render_boot_files


def render(name: str, **kw: object) -> dict[str, str]:
    return {k: v.decode() for k, v in render_boot_files(load_recipe(name), **kw).items()}  # type: ignore[arg-type]


def test_amd64_plan9_ini_is_the_mkfiles() -> None:
    # echo 'bootfile='^`{basename $kernel}; echo 'console=0'
    assert render("amd64.qcow2") == {"plan9.ini": "bootfile=9pc64\nconsole=0\n"}


def test_arm64_plan9_ini_has_console_and_vgasize() -> None:
    assert render("arm64.qcow2") == {"plan9.ini": "console=0\nvgasize=text\n"}


def test_zynq_reform_honeycomb_plan9_ini() -> None:
    assert render("zynq.img") == {"plan9.ini": "bootfile=9zynq\n"}
    assert render("reform.img") == {"plan9.ini": "console=0\n"}
    assert render("honeycomb.img") == {"plan9.ini": "console=0\n"}


def test_pi_config_txt_sections_as_the_mkfile_writes_them() -> None:
    files = render("pi.img")
    assert files["config.txt"] == (
        "[pi0]\nkernel=9pi\n[pi1]\nkernel=9pi\n[pi2]\nkernel=9pi2\n[pi3]\nkernel=9pi2\n"
        "core_freq=250\n[all]\ngpu_mem=16\nenable_uart=1\nboot_delay=1\n"
    )
    assert files["cmdline.txt"] == "console=0\n"


def test_pi3_config_txt() -> None:
    assert render("pi3.img")["config.txt"] == (
        "[pi4]\nkernel=9pi4\narm_64bit=1\n[pi3]\nkernel=9pi3\narm_64bit=1\n"
        "[all]\ngpu_mem=16\ncore_freq=250\nenable_uart=1\nboot_delay=1\n"
    )


def test_set_overrides_and_adds_keys() -> None:
    files = render("amd64.qcow2", sets=["plan9.console=1", "plan9.*acpi=1", "plan9.monitor=vesa"])
    assert files["plan9.ini"] == "bootfile=9pc64\nconsole=1\n*acpi=1\nmonitor=vesa\n"
    files = render("pi.img",
                   sets=["config.pi3.core_freq=400", "cmdline.nobootprompt=local!/dev/sdM0/fs"])
    assert "[pi3]\nkernel=9pi2\ncore_freq=400\n" in files["config.txt"]
    assert files["cmdline.txt"] == "console=0 nobootprompt=local!/dev/sdM0/fs\n"


def test_demo_root_marks_plan9_ini() -> None:
    text = render("amd64.qcow2", demo=True)["plan9.ini"]
    assert text.startswith("# imagebuild demo root")
    assert text.endswith("bootfile=9pc64\nconsole=0\n")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["nonsense"], "expected NAMESPACE.KEY=VALUE"),
        (["grub.timeout=3"], "has no variables named 'grub'"),
        (["plan9.console=0\nbootfile=evil"], "single line"),
    ],
)
def test_bad_set_is_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(TemplateError, match=message) as err:
        render("amd64.qcow2", sets=sets)
    assert "\n" not in str(err.value)


def test_template_dir_overrides_and_errors_name_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "plan9.ini").write_text("# custom\nbootfile={{ plan9.bootfile }}\n")
    assert render("amd64.qcow2", template_dir=tmp_path)["plan9.ini"] == "# custom\nbootfile=9pc64\n"
    (tmp_path / "plan9.ini").write_text("ok\n\n{{ plan9.nosuch }}\n")
    with pytest.raises(TemplateError, match=r"plan9.ini:3: .*nosuch"):
        render("amd64.qcow2", template_dir=tmp_path)
    (tmp_path / "plan9.ini").write_text("{% for x in %}\n")
    with pytest.raises(TemplateError, match=r"plan9.ini:1: "):
        render("amd64.qcow2", template_dir=tmp_path)


# -- 9.11: templates that run into errors: one TemplateError naming the template -------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ 1 / 0 }}\n", r"plan9\.ini:1: .*division by zero"),
        ('ok\n{{ "a" + 1 }}\n', r"plan9\.ini:2: .*TypeError"),
        ('{% include "plan9.ini" %}\n', r"plan9\.ini: .*include each other"),
    ],
)
def test_template_runtime_errors_are_template_errors(tmp_path: Path, text: str,
                                                     message: str) -> None:
    (tmp_path / "plan9.ini").write_text(text)
    with pytest.raises(TemplateError, match=message) as err:
        render("amd64.qcow2", template_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_non_utf8_template(tmp_path: Path) -> None:
    (tmp_path / "plan9.ini").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(TemplateError, match=r"plan9\.ini:2: not UTF-8"):
        render("amd64.qcow2", template_dir=tmp_path)


@pytest.mark.parametrize("value", ["{{ 1 / 0 }}", '{{ "a" + 1 }}', "{{ nosuch }}", "{% if %}"])
def test_errors_in_recipe_variable_values(tmp_path: Path, value: str) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text(f"extends = \"amd64.qcow2\"\n[vars.plan9]\nbootfile = '{value}'\n")
    with pytest.raises(TemplateError, match=r"mine\.toml: \[vars\]: variable value") as err:
        render_boot_files(load_recipe(recipe))
    assert "\n" not in str(err.value)


def test_render_table_naming_a_template_outside_names_the_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\n[render]\n"plan9.ini" = "../../etc/passwd"\n')
    with pytest.raises(TemplateError, match=r"mine\.toml: \[render\] plan9\.ini: template"):
        render_boot_files(load_recipe(recipe))


def test_set_values_are_literal() -> None:
    files = render("amd64.qcow2", sets=["plan9.x={{ 1 / 0 }}", "plan9.y={% raw %}"])
    assert files["plan9.ini"].endswith("x={{ 1 / 0 }}\ny={% raw %}\n")


def test_non_utf8_set_value() -> None:
    with pytest.raises(TemplateError, match="not UTF-8"):
        render("amd64.qcow2", sets=["plan9.x=\udcff"])


# -- our templates in Python: the same bytes as jinja2 -------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
_values = st.one_of(_keys, st.just(""), st.lists(_keys, max_size=2),
                    st.dictionaries(_keys, _keys, max_size=2))


def _jinja(template: Path, context: dict[str, object]) -> str:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    return env.from_string(template.read_text()).render(context)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(plan9=st.dictionaries(_keys, _values, max_size=4), demo=st.booleans(),
       config=st.dictionaries(_keys, st.one_of(st.dictionaries(_keys, _values, max_size=3),
                                               _keys), max_size=3),
       cmdline=st.dictionaries(_keys, _values, max_size=4))
def test_builtin_templates_render_as_jinja2(plan9: dict[str, object], demo: bool,
                                            config: dict[str, object],
                                            cmdline: dict[str, object]) -> None:
    from imagebuild.recipe import render as module

    context = {"plan9": plan9, "config": config, "cmdline": cmdline, "demo": demo}
    for name in ("plan9.ini", "config.txt", "cmdline.txt"):
        path = module.TEMPLATE_DIR / name
        builtin = module._BUILTIN[module.template_key(path.read_text())]
        ours = builtin(context)
        if ours is not None:  # None: the builtin hands this context to jinja2
            assert ours == _jinja(path, context), name


def test_every_stock_template_has_a_builtin() -> None:
    from imagebuild.recipe import render as module

    for path in module.TEMPLATE_DIR.iterdir():
        assert module.template_key(path.read_text()) in module._BUILTIN, path.name


def test_template_dir_falls_back_to_ours_name_by_name(tmp_path: Path) -> None:
    (tmp_path / "cmdline.txt").write_text("{{ cmdline.console }} mine\n")
    files = render("pi.img", template_dir=tmp_path)
    assert files["cmdline.txt"] == "0 mine\n"
    assert files["config.txt"] == render("pi.img")["config.txt"]  # not in tmp_path: ours


def test_recipe_values_may_name_every_base_variable(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\nkernels = ["amd64/9pc64", "k/9x"]\n'
                      "[vars.plan9]\nbootfile = '{{ kernel }}-{{ objtype }}'\n"
                      "t = '{{ target }}'\nk = '{{ kernels }}'\nd = '{{ demo }}'\n")
    text = render_boot_files(load_recipe(recipe), demo=True)["plan9.ini"].decode()
    assert text.endswith("bootfile=9pc64-amd64\nconsole=0\nt=mine\nk=['9pc64', '9x']\nd=True\n")
    recipe.write_text('extends = "amd64.qcow2"\nkernels = []\n')  # no kernel: {{ kernel }} is ""
    assert render_boot_files(load_recipe(recipe))["plan9.ini"] == b"bootfile=\nconsole=0\n"


def test_stock_templates_render_without_jinja2(monkeypatch: pytest.MonkeyPatch) -> None:
    # our own templates are rendered by the Python equivalents (_BUILTIN): no jinja2 call
    from imagebuild.recipe import render as render_mod

    def no_jinja(*args: object) -> str:
        raise AssertionError("jinja2 rendered a stock template")

    monkeypatch.setattr(render_mod._Jinja, "render", no_jinja)
    monkeypatch.setattr(render_mod._Jinja, "expand", no_jinja)
    for name in ("amd64.qcow2", "pi.img", "pi3.img", "zynq.img"):
        assert render(name)  # {{ kernel }} values too are expanded without jinja2


def test_jinja_templates_render_values_as_they_are(tmp_path: Path) -> None:
    # no HTML escaping; lists in [vars] reach the template whole; a surrogate a template
    # writes ("\\udcff") is the byte it stands for (surrogateescape), not an error
    (tmp_path / "plan9.ini").write_text('a={{ plan9.a }}\nl={{ plan9.l | join(",") }}\n'
                                        '{{ "\\udcff" }}\n')
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\n[vars.plan9]\na = "<&>"\nl = ["x", "y"]\n')
    assert render_boot_files(load_recipe(recipe), template_dir=tmp_path)["plan9.ini"] == (
        b"a=<&>\nl=x,y\n\xff\n")


def test_demo_header_word_for_word() -> None:
    assert render("amd64.qcow2", demo=True)["plan9.ini"] == (
        "# imagebuild demo root: the kernel and boot programs here are generated stand-ins, "
        "not 9front\nbootfile=9pc64\nconsole=0\n")


def test_recipe_scalars_become_text_as_toml_writes_them(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "amd64.qcow2"\n[vars.plan9]\nn = 3\nt = true\nf = false\n'
                      "x = 1.5\n")
    assert render_boot_files(load_recipe(recipe))["plan9.ini"] == (
        b"bootfile=9pc64\nconsole=0\nn=3\nt=true\nf=false\nx=1.5\n")
