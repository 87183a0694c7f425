"""An edited field keeps the type of its current value, whichever edge sends the edit.

The engine refuses a value of another type (REST answers 422 naming the field); edges
whose inputs are text (the console's forms, Slack's modal) turn text into a value of the
field's type with the engine's helper, so they say the same thing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from engine.api import Engine
from engine.errors import InvalidInput
from engine.fields import EXAMPLES, fits, from_text, kind_of
from tests.engine_helpers import BOB, CAROL, Clock, approval, engine_for
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

FIELDS: dict[str, Any] = {
    "version": "1.0",
    "replicas": 2,
    "ratio": 0.5,
    "canary": False,
    "hosts": ["a", "b"],
    "limits": {"cpu": 1},
    "note": None,
}
TYPED: dict[str, Any] = {
    "id": "typed",
    "name": "Typed edits",
    "steps": [approval("ok", task_type="edit", fields=FIELDS, editable=list(FIELDS))],
}
WRONG: dict[str, Any] = {
    "version": 2,
    "replicas": "two",
    "ratio": "half",
    "canary": "yes",
    "hosts": "a,b",
    "limits": [1],
}
RIGHT: dict[str, Any] = {
    "version": "1.1",
    "replicas": 3,
    "ratio": 1,  # a whole number is a number
    "canary": True,
    "hosts": ["c"],
    "limits": {},
    "note": {"anything": "goes"},  # a field that is null takes any value
}


@pytest.fixture
def engine(redis_conn: redis.Redis, namespace: str) -> Engine:
    return engine_for(redis_conn, namespace, TYPED, clock=Clock())


@pytest.fixture
async def client(aiohttp_client: Any, engine: Engine, settings: WebSettings) -> TestClient:
    return await aiohttp_client(create_app(engine, settings))


def test_the_engine_refuses_a_value_of_another_type_naming_each_field(engine: Engine) -> None:
    run = engine.start("typed", {}, CAROL)
    with pytest.raises(InvalidInput) as refused:
        engine.complete_task(run.run_id, "ok", BOB, True, result=WRONG)
    assert set(refused.value.problems) == {f"result.{name}" for name in WRONG}
    assert 'replicas must be a whole number, like its current value 2, not "two"' in str(refused.value)
    assert engine.get_run(run.run_id).steps["ok"].task.decided_at is None  # type: ignore[union-attr]
    done = engine.complete_task(run.run_id, "ok", BOB, True, result=RIGHT)
    assert done.steps["ok"].result == {**RIGHT, "approved": True}


async def test_rest_answers_422_naming_each_field_of_the_wrong_type(
    client: TestClient, engine: Engine
) -> None:
    run = engine.start("typed", {}, CAROL)
    complete = f"/v1/runs/{run.run_id}/tasks/ok/complete"
    refused = await client.post(
        complete, json={"approved": True, "result": WRONG}, headers=bearer("approver")
    )
    document = await problem(refused, 422)
    assert "keeps the type of each field" in document["detail"]
    assert sorted(e["field"] for e in document["errors"]) == sorted(f"result.{name}" for name in WRONG)
    approved = await client.post(
        complete, json={"approved": True, "result": RIGHT}, headers=bearer("approver")
    )
    assert approved.status == 200, await approved.text()


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(original=values, value=values)
def test_text_of_a_value_of_the_fields_type_comes_back_as_that_value(original: Any, value: Any) -> None:
    """What a form shows (strings as they are, the rest as JSON) is read back as the value it showed,
    when that value fits the field; text that does not fit is refused with what to enter."""
    shown = value if isinstance(value, str) else json.dumps(value)
    if fits(original, value) and (original is not None or isinstance(value, str)):
        assert from_text(original, shown) == value
    try:
        read = from_text(original, shown)
    except ValueError as exc:
        kind = kind_of(original)
        assert kind is not None and str(exc) == EXAMPLES[kind]
    else:
        assert fits(original, read)
