"""A value edited by a person keeps the type of what it replaces: a number stays a number.

An edited task field is merged into the step's result, which later steps read; a run's
replay input replaces the original's. A value of another type (``"two"`` for a count of
replicas, a string for a list) would break them far from where it was typed, so the
engine refuses it where it is decided (:meth:`engine.core._Transition` checks task edits),
whichever edge sent it: REST answers 422, the console shows the form again, Slack the
modal with the error on its input.

The type of a value is one of :class:`Kind`; a field whose current value is ``null`` takes
any value. Edges whose inputs are text (a form, a modal, ``--set``) turn text into a value
of the field's kind with :func:`from_text`, whose ValueError says what to enter instead.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    STRING = "string"
    INTEGER = "integer"  # a whole number
    NUMBER = "number"  # a whole or decimal number
    BOOLEAN = "boolean"
    LIST = "list"
    OBJECT = "object"


# What to enter for a value of each kind, as a form's error says it.
EXAMPLES: dict[Kind, str] = {
    Kind.STRING: "Enter text.",
    Kind.INTEGER: "Enter a whole number, like 3.",
    Kind.NUMBER: "Enter a number, like 2.5.",
    Kind.BOOLEAN: "Enter true or false.",
    Kind.LIST: "Enter a JSON list, like [1, 2].",
    Kind.OBJECT: 'Enter a JSON object, like {"key": "value"}.',
}
_WORDS: dict[Kind, str] = {
    Kind.STRING: "text",
    Kind.INTEGER: "a whole number",
    Kind.NUMBER: "a number",
    Kind.BOOLEAN: "true or false",
    Kind.LIST: "a list",
    Kind.OBJECT: "an object",
}
_BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


def kind_of(value: Any) -> Kind | None:
    """The kind of ``value``; None for ``null`` (a field that takes anything)."""
    match value:
        case None:
            return None
        case bool():
            return Kind.BOOLEAN
        case int():
            return Kind.INTEGER
        case float():
            return Kind.NUMBER
        case list():
            return Kind.LIST
        case dict():
            return Kind.OBJECT
    return Kind.STRING


def fits(original: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``original``: the same kind (a whole number fits a number)."""
    kind, given = kind_of(original), kind_of(value)
    return kind is None or given is kind or (kind is Kind.NUMBER and given is Kind.INTEGER)


def misfit(name: str, original: Any, value: Any) -> str | None:
    """Why ``value`` may not replace field ``name``'s ``original`` (a sentence), None if it may."""
    if fits(original, value):
        return None
    kind = kind_of(original)
    assert kind is not None  # anything fits a null
    return f"{name} must be {_WORDS[kind]}, like its current value {_shown(original)}, not {_shown(value)}"


def from_text(original: Any, text: str) -> Any:
    """``text`` as a value of the kind of ``original``; ValueError says what to enter instead.

    A string (or ``null``) field takes the text as it is; numbers, booleans (true, yes,
    false, no) and JSON lists or objects are parsed.
    """
    kind = kind_of(original)
    if kind in (None, Kind.STRING):
        return text
    assert kind is not None
    text = text.strip()
    value: Any
    try:
        match kind:
            case Kind.BOOLEAN:
                value = _BOOLEANS[text.lower()]
            case Kind.INTEGER:
                value = int(text)
            case Kind.NUMBER:
                value = float(text)
            case _:
                value = json.loads(text)
    except (KeyError, ValueError):
        raise ValueError(EXAMPLES[kind]) from None
    if not fits(original, value):
        raise ValueError(EXAMPLES[kind])
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"
