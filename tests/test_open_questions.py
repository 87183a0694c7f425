"""Questions waiting for an answer are listed where pending tasks are (issue 14): REST, Slack's
``/run tasks`` and App Home, the CLI's ``tasks`` (local here; remote in test_remote_cli.py).

Every medium lists them from ``Engine.open_questions`` and answers them through ``Engine.answer``.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from engine.api import Engine
from engine.model import Actor, ActorKind
from tests.engine_helpers import engine_for
from tests.test_ask import asking
from tests.test_openapi import check, document_of
from tests.web_helpers import APPROVAL_WORKFLOW, bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

OPS = Actor(kind=ActorKind.API, id="ops-bot")
ASK_OPS = asking("ask-ops", "#ops", expires_in="1h")


# -- REST ----------------------------------------------------------------------------------------


@pytest.fixture
async def client_and_engine(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine]:
    engine = engine_for(redis_conn, namespace, ASK_OPS, APPROVAL_WORKFLOW)
    return await aiohttp_client(create_app(engine, settings)), engine


async def listed(client: TestClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(url, headers=bearer("viewer"))
    assert response.status == 200, await response.text()
    questions: list[dict[str, Any]] = (await response.json())["questions"]
    return questions


async def test_rest_lists_open_questions_of_all_runs_and_of_one(
    client_and_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = client_and_engine
    document = await document_of(client)
    asked = engine.start("ask-ops", {"service": "billing"}, OPS)
    task = engine.start("release", {"service": "api"}, OPS)  # a pending task is no question

    everywhere = await listed(client, "/v1/questions")
    assert [(q["run_id"], q["step_id"], q["short_id"]) for q in everywhere] == [
        (asked.run_id, "region", asked.short_id)
    ]
    [question] = everywhere
    assert question["text"] == "Which region for billing?" and question["to"] == "#ops"
    assert question["workflow_id"] == "ask-ops" and question["expires_at"] and question["answer"] is None
    check(document, "/v1/questions", "get", 200, {"questions": everywhere})

    one = await listed(client, f"/v1/runs/{asked.short_id}/questions")
    assert one == everywhere
    check(document, "/v1/runs/{run_id}/questions", "get", 200, {"questions": one})
    assert await listed(client, f"/v1/workflows/ask-ops/runs/{asked.run_id}/questions") == everywhere
    assert await listed(client, f"/v1/runs/{task.run_id}/questions") == []
    wrong = await client.get(f"/v1/workflows/release/runs/{asked.run_id}/questions", headers=bearer("viewer"))
    await problem(wrong, 404)
    await problem(await client.get("/v1/questions"), 401)

    answered = await client.post(
        f"/v1/runs/{asked.run_id}/tasks/region/answer", json={"answer": "eu-west"}, headers=bearer("approver")
    )
    assert answered.status == 200, await answered.text()
    check(document, "/v1/runs/{run_id}/tasks/{task_id}/answer", "post", 200, await answered.json())
    assert await listed(client, "/v1/questions") == []
    assert await listed(client, f"/v1/runs/{asked.run_id}/questions") == []
    operation = document["paths"]["/v1/questions"]["get"]
    assert operation["x-required-role"] == "viewer" and operation["tags"] == ["tasks"]
