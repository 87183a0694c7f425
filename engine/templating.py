"""Render step arguments as Jinja templates in a sandbox.

Authors write ``{{ inputs.service }}`` or ``{{ steps.draft.result.text }}``. A string
that is a single expression keeps its native type (a dict stays a dict, ``true`` a
bool), so results flow between steps unchanged; anything else renders to text.
The sandbox stops templates from reaching Python internals, and undefined names are
errors rather than empty strings, so a typo fails the step instead of sending blanks.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, Undefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)
_FALSY_TEXT = {"", "false", "no", "0", "none", "null", "off"}


class RenderError(ValueError):
    """A template that could not be rendered; the message says where and why."""


def render(value: Any, context: dict[str, Any], where: str = "") -> Any:
    """Render every string inside ``value`` (recursing into dicts and lists)."""
    if isinstance(value, str):
        return _render_string(value, context, where)
    if isinstance(value, dict):
        return {k: render(v, context, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class FieldsError(RenderError):
    """Fields that could not be rendered: ``problems`` maps each (``inputs.service``) to why."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(problems.values()))  # each says where already: "inputs.service: ..."
        self.problems = problems


class Fields:
    """Named templates read once and rendered many times (a webhook source's input mapping).

    A field that is a plain path (``{{ payload.service }}``) is looked up at once, as
    :func:`render` would look it up, without going through it; any other renders as
    :func:`render` renders it. ``where`` prefixes each field's name in what errors say.
    """

    def __init__(self, templates: dict[str, Any], where: str) -> None:
        self._fields = [
            (name, f"{where}.{name}", template, _path_of(template)) for name, template in templates.items()
        ]

    def render(self, context: dict[str, Any]) -> dict[str, Any]:
        """Every field's value; :class:`FieldsError` naming every field that could not be rendered."""
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, where, template, path in self._fields:
            if path is not None:
                found, value = _lookup(path, context)
                if found:
                    values[name] = value
                    continue
            try:
                values[name] = render(template, context, where)
            except RenderError as exc:
                problems[where] = str(exc)
        if problems:
            raise FieldsError(problems)
        return values


def truthy(condition: str, context: dict[str, Any], where: str = "if") -> bool:
    """Evaluate an ``if``: a template like ``{{ steps.a.result.ok }}`` or a bare expression."""
    value = _render_string(condition_template(condition), context, where)
    if isinstance(value, str):
        return value.strip().lower() not in _FALSY_TEXT
    return bool(value)


def condition_template(condition: str) -> str:
    """An ``if`` as the template it stands for: a bare expression is one inside ``{{ }}``."""
    return condition if "{{" in condition else "{{ " + condition + " }}"


def names_read(value: Any) -> set[str]:
    """The context names the templates inside ``value`` read (``payload`` in ``{{ payload.id }}``).

    So a caller builds only the part of a context its templates use. A template that does
    not parse reads nothing here; rendering it reports the error.
    """
    if isinstance(value, dict):
        return set().union(*(names_read(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(names_read(v) for v in value))
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return set()
    try:
        return meta.find_undeclared_variables(_env.parse(value))
    except TemplateError:
        return set()


def _render_string(text: str, context: dict[str, Any], where: str) -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        expr, path = _single_expression(text)
        if expr is None:
            return _template(text).render(**context)
        if path is not None:
            found, value = _lookup(path, context)
            if found:
                return value
        value = _expression(expr)(**context)
    except TemplateError as exc:
        raise RenderError(f"{where or 'template'}: {exc.message or exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise RenderError(f"{where or 'template'}: {exc}") from exc
    # Outside the try: a RenderError is a ValueError, which the clause above would wrap,
    # saying where twice.
    if isinstance(value, Undefined):
        raise RenderError(f"{where or 'template'}: {value._undefined_message}")
    return value


_PATH = re.compile(r"^\s*[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\s*$")
# Every name hasattr(dict, name) is true of (and a few more): such names are left to Jinja.
_DICT_ATTRIBUTES = frozenset(dir(dict)) | frozenset(dir(type))


@lru_cache(maxsize=2048)
def _single_expression(text: str) -> tuple[str | None, tuple[str, ...] | None]:
    """The expression of a text that is one ``{{ }}`` (else None), and its dotted path if it is one."""
    match = _SINGLE_EXPRESSION.match(text)
    if match is None:
        return None, None
    expr = match.group("expr")
    path = tuple(expr.strip().split(".")) if _PATH.match(expr) else None
    if path is not None and not _DICT_ATTRIBUTES.isdisjoint(path[1:]):
        path = None  # Jinja reads ``payload.items`` as the dict's method: left to Jinja
    return expr, path


def _path_of(template: Any) -> tuple[str, ...] | None:
    """The dotted path ``template`` is, if it is a text that is nothing else (see :func:`_lookup`)."""
    if not isinstance(template, str) or "{{" not in template:
        return None
    return _single_expression(template)[1]


def _lookup(path: tuple[str, ...], context: dict[str, Any]) -> tuple[bool, Any]:
    """``inputs.service`` without Jinja, when plain dict lookups give what Jinja would.

    Most templates are such paths, and Jinja's per-call setup costs more than the lookup.
    Anything else (a missing key, a value that is not a dict) is left to Jinja, for the
    same value or the same error; paths through a name that is also a dict method, which
    Jinja would resolve as the attribute, never come here (:func:`_single_expression`).
    """
    value: Any = context
    for name in path:
        if type(value) is not dict or name not in value:
            return False, None
        value = value[name]
    return True, value


# Compiling is most of the cost of rendering, and the same few templates (a workflow's
# arguments, a webhook's input mapping) render over and over: compile each text once.
@lru_cache(maxsize=2048)
def _expression(expr: str) -> Any:
    return _env.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=2048)
def _template(text: str) -> Template:
    return _env.from_string(text)
