"""Templates render as Jinja would: the fast path for plain paths must never change an answer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.templating import Fields, FieldsError, RenderError, _expression, render, truthy

NAMES = st.sampled_from(["service", "items", "keys", "get", "a", "b", "upper", "0x", "payload", "range"])
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)
)
CONTEXTS = st.dictionaries(
    NAMES,
    st.recursive(LEAVES, lambda inner: st.dictionaries(NAMES, inner, max_size=3), max_leaves=6),
    max_size=4,
)


def jinja(expression: str, context: dict[str, Any]) -> tuple[str, Any]:
    """What Jinja itself answers: ('value', v) or ('error', None)."""
    try:
        value = _expression(expression)(**context)
    except Exception:
        return "error", None
    if type(value).__name__ == "StrictUndefined":
        return "error", None
    return "value", value


def ours(expression: str, context: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "value", render("{{ " + expression + " }}", context)
    except RenderError:
        return "error", None


def mapped(expression: str, context: dict[str, Any]) -> tuple[str, Any]:
    """The same expression as a field of a mapping read once (a webhook source's inputs)."""
    try:
        return "value", Fields({"x": "{{ " + expression + " }}"}, "inputs").render(context)["x"]
    except FieldsError:
        return "error", None


@given(CONTEXTS, st.data())
def test_a_path_renders_exactly_as_jinja_does(context: dict[str, Any], data: st.DataObject) -> None:
    # Walk into the context (so most paths exist), then maybe one name further.
    path: list[str] = []
    value: Any = context
    while isinstance(value, dict) and value and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(sorted(value)))
        path.append(name)
        value = value[name]
    path += data.draw(st.lists(NAMES, min_size=0 if path else 1, max_size=1))
    expression = ".".join(path)
    expected = jinja(expression, context)
    for got in (ours(expression, context), mapped(expression, context)):
        if expected[0] == "value" and callable(expected[1]):
            # A dict method or a global such as `range`: the same object, not an equal one.
            assert got[0] == "value" and got[1] == expected[1]
        else:
            assert got == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ payload.service }}", "api"),
        ("{{ payload.replicas }}", 3),  # a single expression keeps its type
        ("{{payload.nested.flag}}", True),
        ("deploy {{ payload.service }} x{{ payload.replicas }}", "deploy api x3"),
        ("{{ payload.replicas + 1 }}", 4),
        ("{{ payload.tags[1] }}", "b"),
        ("no template", "no template"),
    ],
)
def test_templates_render(template: str, expected: Any) -> None:
    context = {"payload": {"service": "api", "replicas": 3, "nested": {"flag": True}, "tags": ["a", "b"]}}
    assert render(template, context) == expected


def test_a_dict_method_name_resolves_as_jinja_resolves_it() -> None:
    # Jinja reads `x.items` as the attribute first; a payload key named "items" does not win.
    assert callable(render("{{ payload.items }}", {"payload": {"items": [1, 2]}}))
    assert render("{{ payload['items'] }}", {"payload": {"items": [1, 2]}}) == [1, 2]


def test_a_missing_name_is_an_error_that_says_where() -> None:
    with pytest.raises(RenderError, match=r"inputs\.service: .*'dict object' has no attribute 'servce'") as missing:
        render({"service": "{{ payload.servce }}"}, {"payload": {"service": "api"}}, "inputs")
    assert str(missing.value) == "inputs.service: 'dict object' has no attribute 'servce'"  # said once
    with pytest.raises(RenderError, match="'nothing' is undefined"):
        render("{{ nothing.here }}", {})


def test_conditions() -> None:
    context = {"payload": {"ref": "refs/heads/main", "draft": False}}
    assert truthy("payload.ref == 'refs/heads/main'", context)
    assert not truthy("{{ payload.draft }}", context)
    assert not truthy("{{ 'no' }}", context)


def test_a_mapping_renders_every_field_and_names_every_one_it_cannot() -> None:
    fields = Fields(
        {
            "service": "{{ payload.service }}",
            "title": "Deploy {{ payload.service }}",
            "replicas": "{{ payload.replicas + 1 }}",
            "fixed": 7,
            "items": "{{ payload.items }}",  # a dict method's name: Jinja's answer, not the key
        },
        "inputs",
    )
    values = fields.render({"payload": {"service": "api", "replicas": 2, "items": [1]}})
    assert {k: v for k, v in values.items() if k != "items"} == {
        "service": "api",
        "title": "Deploy api",
        "replicas": 3,
        "fixed": 7,
    }
    assert callable(values["items"])
    with pytest.raises(FieldsError) as refused:
        fields.render({"payload": {"replicas": 2}})
    assert sorted(refused.value.problems) == ["inputs.service", "inputs.title"]
    assert refused.value.problems["inputs.service"] == "inputs.service: 'dict object' has no attribute 'service'"
