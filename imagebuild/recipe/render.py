"""Boot files rendered from jinja2 templates: plan9.ini, config.txt, cmdline.txt.

Each recipe names the files it renders (`[render]`) and their variables
(`[vars.NAMESPACE]`); `--set NAMESPACE.KEY=VALUE` overrides or adds one.
Variable values may themselves use `{{ kernel }}` (the first kernel's file
name), `{{ kernels }}` and `{{ objtype }}`, so a derived recipe that swaps the
kernel gets the right `bootfile=` without repeating it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any

from imagebuild.errors import TemplateError
from imagebuild.recipe.load import Recipe

if TYPE_CHECKING:
    import jinja2

# Our templates ship inside the package (imagebuild/templates/), so a wheel has them.
TEMPLATE_DIR = Path(str(resources.files("imagebuild").joinpath("templates")))
_SET = re.compile(r"^([A-Za-z_][\w-]*)((?:\.[^.=\s]+)+)=(.*)$", re.DOTALL)


def parse_set(text: str) -> tuple[list[str], str]:
    """'plan9.console=0' -> (['plan9', 'console'], '0'); 'config.pi3.core_freq=250' nests."""
    match = _SET.match(text)
    if not match:
        raise TemplateError(f"--set {text!r}: expected NAMESPACE.KEY=VALUE, e.g. plan9.console=0")
    namespace, dotted, value = match.groups()
    if "\n" in value or "\r" in value:
        raise TemplateError(f"--set {text.splitlines()[0]!r}...: a value must be a single line")
    return [namespace, *dotted[1:].split(".")], value


def apply_sets(recipe: Recipe, variables: dict[str, Any], sets: Iterable[str]) -> None:
    """Apply --set overrides; a namespace the target has no variables for is an error."""
    for text in sets:
        path, value = parse_set(text)
        if path[0] not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise TemplateError(
                f"--set {text}: target {recipe.name} has no variables named {path[0]!r} "
                f"(it has: {known})"
            )
        table = variables
        for part in path[:-1]:
            node = table.setdefault(part, {})
            if not isinstance(node, dict):
                raise TemplateError(f"--set {text}: {part!r} is a value, not a table")
            table = node
        if isinstance(table.get(path[-1]), dict):
            raise TemplateError(f"--set {text}: {path[-1]!r} is a table, not a value")
        table[path[-1]] = value


def _environment(template_dirs: Sequence[Path]) -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def template_search_path(template_dir: Path | None) -> list[Path]:
    """--template-dir first (when given), then our templates."""
    return [template_dir, TEMPLATE_DIR] if template_dir is not None else [TEMPLATE_DIR]


def template_files(recipe: Recipe, template_dir: Path | None = None) -> list[Path]:
    """The template file each rendered boot file comes from (for doit's file_dep)."""
    found = []
    for template in recipe.render.values():
        for directory in template_search_path(template_dir):
            if (directory / template).is_file():
                found.append(directory / template)
                break
    return found


def render_boot_files(
    recipe: Recipe,
    *,
    sets: Iterable[str] = (),
    template_dir: Path | None = None,
    demo: bool = False,
) -> dict[str, bytes]:
    """Render every [render] file of the recipe; errors name the template and line."""
    import jinja2

    variables: dict[str, Any] = copy.deepcopy(recipe.vars)
    apply_sets(recipe, variables, sets)
    kernel_names = [PurePosixPath(k).name for k in recipe.kernels]
    base: dict[str, Any] = {
        "target": recipe.name,
        "objtype": recipe.objtype,
        "kernel": kernel_names[0] if kernel_names else "",
        "kernels": kernel_names,
        "demo": demo,
    }
    env = _environment(template_search_path(template_dir))
    context = {**base, **_expand(env, variables, base)}
    rendered: dict[str, bytes] = {}
    for name, template_name in recipe.render.items():
        try:
            template = env.get_template(template_name)
        except jinja2.TemplateNotFound:
            where = ", ".join(str(d) for d in template_search_path(template_dir))
            raise TemplateError(
                f"{recipe.path}: template {template_name!r} for {name} not found in {where}"
            ) from None
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(f"{err.filename}:{err.lineno}: {err.message}") from None
        try:
            text = template.render(context)
        except jinja2.TemplateError as err:
            filename = template.filename or template_name
            line = _template_line(err.__traceback__, filename)
            where = f"{filename}:{line}" if line else filename
            raise TemplateError(f"{where}: {err.message or err} (rendering {name})") from None
        rendered[name] = text.encode()
    return rendered


def _expand(env: jinja2.Environment, value: Any, base: Mapping[str, Any]) -> Any:
    """Render `{{ ... }}` inside variable values (bootfile = "{{ kernel }}")."""
    import jinja2

    if isinstance(value, dict):
        return {k: _expand(env, v, base) for k, v in value.items()}
    if isinstance(value, str) and "{" in value:
        try:
            return env.from_string(value).render(base)
        except jinja2.TemplateError as err:
            raise TemplateError(f"variable value {value!r}: {err.message or err}") from None
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value
