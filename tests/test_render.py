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
