"""Only a task's ``editable`` fields may be edited: other keys would overwrite what downstream steps read.

Refused with 422 naming the keys over REST and with a sentence naming them by the CLI;
edits of editable fields still flow into the step's result as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from engine.api import Engine
from tests import test_cli
from tests.engine_helpers import Clock, approval, engine_for
from tests.test_cli import run_id_of, switchboard
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

REVIEWS: list[dict[str, Any]] = [
    {
        "id": "plain-approval",
        "name": "Approval without edits",
        "steps": [
            approval("ok", fields={"target": "prod"}),
            {
                "id": "say",
                "type": "notify",
                "needs": ["ok"],
                "notify": {"text": "to {{ steps.ok.result.target | default('staging') }}"},
            },
        ],
    },
    {
        "id": "edit-one",
        "name": "Edit one field",
        "steps": [approval("ok", task_type="edit", fields={"body": "draft", "to": "all"}, editable=["body"])],
    },
]

# The CLI tests' workflow folder and environment, for the CLI processes below.
workflows = test_cli.workflows
env = test_cli.env


@pytest.fixture
async def review_client(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine]:
    engine = engine_for(redis_conn, namespace, *REVIEWS, clock=Clock())
    return await aiohttp_client(create_app(engine, settings)), engine


async def test_rest_refuses_keys_that_are_not_editable_with_422_naming_them(
    review_client: tuple[TestClient, Engine],
) -> None:
    client, engine = review_client
    run = await (await client.post("/v1/workflows/plain-approval/runs", json={}, headers=bearer("operator"))).json()
    complete = f"/v1/runs/{run['run_id']}/tasks/ok/complete"
    refused = await client.post(
        complete, json={"approved": True, "result": {"target": "evil", "x": 1}}, headers=bearer("approver")
    )
    document = await problem(refused, 422)
    assert "does not let you edit target, x: it has no editable fields" in document["detail"]
    assert [e["field"] for e in document["errors"]] == ["result.target", "result.x"]
    assert engine.get_run(run["run_id"]).steps["ok"].task.decided_at is None  # type: ignore[union-attr]

    approved = await client.post(complete, json={"approved": True}, headers=bearer("approver"))
    assert approved.status == 200, await approved.text()
    done = engine.get_run(run["run_id"])
    assert done.steps["ok"].result == {"approved": True}
    assert done.steps["say"].result["text"] == "to staging"  # what the workflow says, not what was sent


async def test_rest_edit_task_keeps_editable_fields_and_refuses_the_rest(
    review_client: tuple[TestClient, Engine],
) -> None:
    client, engine = review_client
    run = await (await client.post("/v1/workflows/edit-one/runs", json={}, headers=bearer("operator"))).json()
    complete = f"/v1/runs/{run['run_id']}/tasks/ok/complete"
    refused = await client.post(
        complete, json={"approved": True, "result": {"body": "final", "to": "everyone"}}, headers=bearer("approver")
    )
    document = await problem(refused, 422)
    assert "does not let you edit to: its editable fields are body" in document["detail"]
    assert [e["field"] for e in document["errors"]] == ["result.to"]

    edited = await client.post(complete, json={"approved": True, "result": {"body": "final"}}, headers=bearer("approver"))
    assert edited.status == 200, await edited.text()
    assert engine.get_run(run["run_id"]).steps["ok"].result == {"body": "final", "approved": True}


def test_cli_names_the_keys_it_may_not_edit(env: dict[str, str], workflows: Path) -> None:
    (workflows / "plain-approval.yaml").write_text(
        "id: plain-approval\nname: Plain\nsteps:\n  - id: ok\n    type: human_task\n"
        "    task: {title: Ship it, fields: {target: prod}}\n"
    )
    run_id = run_id_of(switchboard("--as", "alice", "run", "start", "plain-approval", env=env).stdout)
    refused = switchboard("--as", "bob", "approve", run_id, "ok", "--set", "target=evil", env=env)
    assert refused.returncode == 2, refused.stdout
    assert refused.stderr.strip() == (
        f"switchboard: Task 'ok' of run {run_id[:8]} does not let you edit target: it has no editable fields."
    )

    gate = run_id_of(switchboard("--as", "alice", "run", "start", "release-gate", "version=2", env=env).stdout)
    wrong = switchboard("--as", "bob", "approve", gate, "sign-off", "--set", "version=9", env=env)
    assert wrong.returncode == 2
    assert "does not let you edit version: its editable fields are notes." in wrong.stderr


def test_cli_sets_a_field_as_a_value_of_its_kind(env: dict[str, str], workflows: Path) -> None:
    (workflows / "scale.yaml").write_text(
        "id: scale\nname: Scale\nsteps:\n  - id: ok\n    type: human_task\n"
        "    task: {task_type: edit, title: Scale it, fields: {replicas: 2, canary: false}, editable: [replicas, canary]}\n"
    )
    run_id = run_id_of(switchboard("--as", "alice", "run", "start", "scale", env=env).stdout)
    wrong = switchboard("--as", "bob", "approve", run_id, "ok", "--set", "replicas=three", env=env)
    assert wrong.returncode == 2 and wrong.stderr.startswith("switchboard: --set replicas=three: ")
    done = switchboard(
        "--as", "bob", "--json", "approve", run_id, "ok", "--set", "replicas=3", "--set", "canary=yes", env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"]["ok"]["result"] == {"approved": True, "replicas": 3, "canary": True}
