"""Boot files rendered from templates: plan9.ini, config.txt, cmdline.txt.

Each recipe names the files it renders (`[render]`) and their variables
(`[vars.NAMESPACE]`); `--set NAMESPACE.KEY=VALUE` overrides or adds one.
The recipe's variable values may themselves use `{{ kernel }}` (the first
kernel's file name), `{{ kernels }}` and `{{ objtype }}`, so a derived recipe
that swaps the kernel gets the right `bootfile=` without repeating it; --set
values are taken literally (a `{{` in one stays a `{{`).

Templates are jinja2 with strict undefined variables.  Our own templates
(recognised by their bytes) and values that only name a variable are
rendered by equivalent Python here, so a build that needs no jinja2 feature
does not import jinja2 (tests/test_render.py checks both give the same
bytes).  Every failure is a TemplateError naming the template and line.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any

from imagebuild.errors import ImageBuildError, TemplateError, show_path
from imagebuild.recipe.load import Recipe
from imagebuild.util.files import read_input

if TYPE_CHECKING:
    import jinja2

# Our templates ship inside the package (imagebuild/templates/), so a wheel has them.
TEMPLATE_DIR = Path(__file__).parent.parent / "templates"  # not resolved, as RECIPE_DIR
MAX_TEMPLATE_BYTES = 1 << 20
# compiled on first use (re caches it): only --set needs it
_SET = r"^([A-Za-z_][\w-]*)((?:\.[^.=\s]+)+)=(.*)$"
# a variable value that only names base variables: rendered without jinja2
_PLAIN_VALUE = re.compile(r"(?:[^{}]|\{\{\s*(?:target|objtype|kernel|kernels|demo)\s*\}\})*")
_NAME = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def parse_set(text: str) -> tuple[list[str], str]:
    """'plan9.console=0' -> (['plan9', 'console'], '0'); 'config.pi3.core_freq=250' nests.

    Raises TemplateError for any other shape, a value over several lines or
    text that is not UTF-8.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TemplateError(f"--set {text!r}: not UTF-8 text") from None
    match = re.match(_SET, text, re.DOTALL)
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


def template_search_path(template_dir: Path | None) -> list[Path]:
    """--template-dir first (when given), then our templates."""
    return [template_dir, TEMPLATE_DIR] if template_dir is not None else [TEMPLATE_DIR]


def check_template_dir(template_dir: Path | None) -> None:
    """Raises TemplateError when --template-dir names no directory."""
    if template_dir is not None and not template_dir.is_dir():
        raise TemplateError(f"--template-dir {show_path(template_dir)}: not a directory")


def template_files(recipe: Recipe, template_dir: Path | None = None) -> list[Path]:
    """The template file each rendered boot file comes from (for doit's file_dep)."""
    found = []
    for template in recipe.render.values():
        for directory in template_search_path(template_dir):
            if (directory / template).is_file():
                found.append(directory / template)
                break
    return found


def read_template(name: str, search: Sequence[Path]) -> tuple[Path, str] | None:
    """The first `name` on the search path: (path, text), or None when there is none.

    Raises TemplateError for a template that is not a regular file, too big,
    not UTF-8, or a name that climbs out of its directory.
    """
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        raise TemplateError(f"template {name!r}: must be a name inside the template directory")
    for directory in search:
        path = directory / name
        if not path.exists():
            continue
        try:
            data = read_input(path, MAX_TEMPLATE_BYTES, "template")
        except ImageBuildError as err:
            raise TemplateError(str(err)) from None
        except OSError as err:
            raise TemplateError(f"{show_path(path)}: {err.strerror}") from None
        try:
            return path, data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise TemplateError(f"{show_path(path)}:{line}: not UTF-8 text") from None
    return None


def render_boot_files(
    recipe: Recipe,
    *,
    sets: Iterable[str] = (),
    template_dir: Path | None = None,
    demo: bool = False,
) -> dict[str, bytes]:
    """Render every [render] file of the recipe: boot file name -> bytes (UTF-8).

    Raises TemplateError naming the template (and line) or the --set option.
    """
    check_template_dir(template_dir)
    search = template_search_path(template_dir)
    kernel_names = [PurePosixPath(k).name for k in recipe.kernels]
    base: dict[str, Any] = {
        "target": recipe.name,
        "objtype": recipe.objtype,
        "kernel": kernel_names[0] if kernel_names else "",
        "kernels": kernel_names,
        "demo": demo,
    }
    jinja = _Jinja(search)
    try:
        variables = _expand(jinja, _fresh(recipe.vars), base)
    except TemplateError as err:  # a [vars] value of the recipe: name the recipe file
        raise TemplateError(f"{recipe.path}: [vars]: {err}") from None
    apply_sets(recipe, variables, sets)  # after expansion: --set values are literal
    context = {**base, **variables}
    rendered: dict[str, bytes] = {}
    for name, template_name in recipe.render.items():
        try:
            found = read_template(template_name, search)
        except TemplateError as err:
            raise TemplateError(f"{recipe.path}: [render] {name}: {err}") from None
        if found is None:
            where = ", ".join(str(d) for d in search)
            raise TemplateError(
                f"{recipe.path}: template {template_name!r} for {name} not found in {where}"
            )
        path, source = found
        builtin = _BUILTIN.get(template_key(source))
        text = builtin(context) if builtin is not None else None
        if text is None:
            text = jinja.render(path, template_name, context, name)
        rendered[name] = text.encode("utf-8", errors="surrogateescape")
    return rendered


def template_key(source: str) -> tuple[int, int]:
    """(length, CRC-32) of a template's UTF-8 text: how our own templates are recognised
    (zlib is loaded already; hashlib would add to every start)."""
    data = source.encode("utf-8", errors="surrogateescape")
    return len(data), zlib.crc32(data)


class _Jinja:
    """jinja2, imported on first use; templates come through read_template."""

    def __init__(self, search: Sequence[Path]) -> None:
        self.search = search
        self._env: jinja2.Environment | None = None

    def env(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            search = self.search

            class Loader(jinja2.BaseLoader):
                def get_source(self, environment: jinja2.Environment,
                               template: str) -> tuple[str, str, Callable[[], bool]]:
                    found = read_template(template, search)
                    if found is None:
                        raise jinja2.TemplateNotFound(template)
                    return found[1], str(found[0]), lambda: False

            self._env = jinja2.Environment(
                loader=Loader(),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                autoescape=False,
            )
        return self._env

    def render(self, path: Path, template_name: str, context: Mapping[str, Any],
               output: str) -> str:
        import jinja2

        env = self.env()
        filename = str(path)
        try:
            template = env.get_template(template_name)
            return template.render(context)
        except jinja2.TemplateSyntaxError as err:
            where = f"{show_path(err.filename or filename)}:{err.lineno}"
            raise TemplateError(f"{where}: {err.message}") from None
        except TemplateError:
            raise
        except RecursionError:
            raise TemplateError(f"{show_path(filename)}: templates include each other without "
                                f"end (rendering {output})") from None
        except Exception as err:  # a template runs code: 1/0, "a" + 1, ...
            line = _template_line(err.__traceback__, filename)
            where = f"{show_path(filename)}:{line}" if line else show_path(filename)
            message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            raise TemplateError(f"{where}: {message} (rendering {output})") from None

    def expand(self, value: str, base: Mapping[str, Any]) -> str:
        try:
            return self.env().from_string(value).render(base)
        except RecursionError:
            raise TemplateError(f"variable value {value!r}: nested too deeply") from None
        except Exception as err:
            message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            raise TemplateError(f"variable value {value!r}: {message}") from None


def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _fresh(value: Any) -> Any:
    """A copy of a TOML value whose tables and arrays may be changed: the nested dicts and
    lists copied, the scalars (immutable) shared."""
    if isinstance(value, dict):
        return {key: _fresh(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_fresh(item) for item in value]
    return value


def _expand(jinja: _Jinja, value: Any, base: Mapping[str, Any]) -> Any:
    """Render `{{ ... }}` inside the recipe's variable values (bootfile = "{{ kernel }}")."""
    if isinstance(value, dict):
        return {k: _expand(jinja, v, base) for k, v in value.items()}
    if isinstance(value, str) and "{" in value:
        if _PLAIN_VALUE.fullmatch(value):
            return _NAME.sub(lambda m: str(base[m.group(1)]), value)
        return jinja.expand(value, base)
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


# -- our templates, in Python ----------------------------------------------------------------
# Each returns exactly what jinja2 renders from the template file of that key, or None
# when the context is not the plain shape it expects (then jinja2 renders, errors included).


def _pairs(table: object) -> list[tuple[str, Any]] | None:
    if not isinstance(table, dict) or any(isinstance(v, dict | list) for v in table.values()):
        return None
    return [(str(k), v) for k, v in table.items()]


def _plan9_ini(context: Mapping[str, Any]) -> str | None:
    pairs = _pairs(context.get("plan9"))
    if pairs is None:
        return None
    head = ("# imagebuild demo root: the kernel and boot programs here are generated "
            "stand-ins, not 9front\n") if context["demo"] else ""
    return head + "".join(f"{k}={v}\n" for k, v in pairs)


def _config_txt(context: Mapping[str, Any]) -> str | None:
    sections = context.get("config")
    if not isinstance(sections, dict):
        return None
    out = []
    for section, keys in sections.items():
        pairs = _pairs(keys)
        if pairs is None:
            return None
        out.append(f"[{section}]\n" + "".join(f"{k}={v}\n" for k, v in pairs))
    return "".join(out)


def _cmdline_txt(context: Mapping[str, Any]) -> str | None:
    pairs = _pairs(context.get("cmdline"))
    if pairs is None:
        return None
    return " ".join(f"{k}={v}" for k, v in pairs) + "\n"


_BUILTIN: dict[tuple[int, int], Callable[[Mapping[str, Any]], str | None]] = {
    (369, 3206041817): _plan9_ini,  # templates/plan9.ini
    (237, 406512472): _config_txt,  # templates/config.txt
    (171, 1443757393): _cmdline_txt,  # templates/cmdline.txt
}
