"""Quorum: ``min_approvals`` distinct approvers must approve; the card shows who has so far.

Through the real entry points: signed Slack clicks (the card is updated in place after
each approval), REST (two tokens, two approvers), and the engine's command API for the
identity rules (one person counts once, whatever the case of their name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from bot import ids
from engine.api import Engine
from engine.catalog import Catalog, load_folder
from engine.errors import CommandRefused, NotAllowed
from engine.model import Actor, ActorKind, EventType, RunStatus, StepStatus
from engine.workflow import Workflow
from tests.engine_helpers import Clock, approval, engine_for
from tests.fake_slack import ALICE, BOB, CAROL, Slack, all_text, has_buttons, write_workflows
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

TWO_OF_THREE: dict[str, Any] = {
    "id": "two-keys",
    "name": "Two keys",
    "settings": {"slack_channel": "#deploys"},
    "steps": [
        approval("approve", min_approvals=2, fields={"target": "prod"}),
        {"id": "go", "type": "notify", "needs": ["approve"], "notify": {"text": "going"}},
    ],
}
PATIENT: dict[str, Any] = {
    "id": "patient",
    "name": "Two rejections end it",
    "steps": [approval("approve", min_approvals=2, reject_ends=False, max_rejections=2)],
}


def cli(name: str) -> Actor:
    return Actor(kind=ActorKind.CLI, id=name)


# -- Slack -------------------------------------------------------------------------------------


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", {"two-keys": TWO_OF_THREE}))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def test_slack_card_shows_each_approval_in_place_until_the_quorum_decides(slack: Slack) -> None:
    reply = await slack.command("start two-keys", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = slack.engine.list_runs().runs[0].run_id
    value = ids.task_value(run_id, "approve")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_APPROVE, value))
    assert "Approvals: 0 of 2* nobody yet" in all_text(slack.fake.messages[card])

    await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    first = (await slack.fake.wait_for(lambda: slack.fake.updates_of(card)))[0]
    assert f"Approvals: 1 of 2* <@{BOB.id}>" in all_text(first.args)
    assert has_buttons(first.args)  # still open: the buttons stay
    run = slack.engine.get_run(run_id)
    assert run.steps["approve"].status is StepStatus.WAITING
    assert run.steps["approve"].detail == "approved by 1 of 2 needed (bob)"

    again = await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    refusal = (await slack.fake.wait_for(lambda: slack.responses_to(again)))[0]
    assert refusal["response_type"] == "ephemeral"
    assert "You already approved task 'approve'" in refusal["text"]
    assert "one person counts once" in refusal["text"]

    starter = await slack.click(ids.TASK_APPROVE, value, user=ALICE, message=card)
    refusal = (await slack.fake.wait_for(lambda: slack.responses_to(starter)))[0]
    assert "alice started run" in refusal["text"]

    await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    updates = await slack.fake.wait_for(lambda: (u := slack.fake.updates_of(card)) and len(u) >= 2 and u)
    final = all_text(updates[-1].args)
    assert not has_buttons(updates[-1].args)
    assert f"*Approved* by <@{CAROL.id}>" in final
    assert f"Approvals: 2 of 2* <@{BOB.id}>, <@{CAROL.id}>" in final
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    result = run.steps["approve"].result
    assert result["approved"] is True
    assert [(d["by"]["id"], d["approved"]) for d in result["decisions"]] == [(BOB.id, True), (CAROL.id, True)]
    types = [e.type for e in slack.engine.events(run_id) if e.step_id == "approve"]
    assert types.count(EventType.TASK_APPROVAL_RECORDED) == 1
    assert types.index(EventType.TASK_APPROVAL_RECORDED) < types.index(EventType.TASK_COMPLETED)


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture
async def quorum_client(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine]:
    engine = engine_for(redis_conn, namespace, TWO_OF_THREE, PATIENT, clock=Clock())
    return await aiohttp_client(create_app(engine, settings)), engine


async def test_rest_one_rejection_ends_a_quorum_task_and_the_result_keeps_every_say(
    quorum_client: tuple[TestClient, Engine],
) -> None:
    client, engine = quorum_client
    run = await (await client.post("/v1/workflows/two-keys/runs", json={}, headers=bearer("operator"))).json()
    complete = f"/v1/runs/{run['run_id']}/tasks/approve/complete"

    first = await client.post(complete, json={"approved": True}, headers=bearer("approver"))
    assert first.status == 200, await first.text()
    task = (await first.json())["steps"]["approve"]["task"]
    assert task["decided_at"] is None and [d["by"]["id"] for d in task["decisions"]] == ["lead"]
    twice = await client.post(complete, json={"approved": False}, headers=bearer("approver"))
    assert "You already approved task 'approve'" in (await problem(twice, 409))["detail"]

    rejected = await client.post(complete, json={"approved": False, "comment": "not today"}, headers=bearer("admin"))
    assert rejected.status == 200, await rejected.text()
    done = engine.get_run(run["run_id"])
    assert done.steps["approve"].task.approved is False  # type: ignore[union-attr]
    assert done.steps["go"].status is StepStatus.SKIPPED
    decisions = done.steps["approve"].result["decisions"]
    assert [(d["by"]["id"], d["approved"], d["comment"]) for d in decisions] == [
        ("lead", True, None),
        ("root", False, "not today"),
    ]


# -- engine rules ------------------------------------------------------------------------------


def test_identity_is_case_insensitive_and_max_rejections_counts_rejections(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, PATIENT)
    run = engine.start("patient", {}, cli("starter"))
    engine.complete_task(run.run_id, "approve", cli("Dana"), False, comment="no")
    with pytest.raises(CommandRefused, match="You already rejected task 'approve'"):
        engine.complete_task(run.run_id, "approve", cli("dana"), True)
    with pytest.raises(NotAllowed, match="started run"):
        engine.complete_task(run.run_id, "approve", cli("STARTER"), True)
    engine.complete_task(run.run_id, "approve", cli("erin"), True)
    still = engine.get_run(run.run_id).steps["approve"]
    assert still.status is StepStatus.WAITING and still.detail == (
        "approved by 1 of 2 needed (cli:erin); rejected by cli:Dana"
    )
    done = engine.complete_task(run.run_id, "approve", cli("frank"), False)
    assert done.status is RunStatus.COMPLETED and done.steps["approve"].task.approved is False  # type: ignore[union-attr]
    assert len(done.steps["approve"].result["decisions"]) == 3


def test_a_quorum_larger_than_the_named_approvers_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_approvals is 3 but 2 approvers are named"):
        Workflow.model_validate(
            {
                "id": "x",
                "name": "x",
                "steps": [approval("a", min_approvals=3, approvers=["slack:U1", "slack:U2"])],
            }
        )
    with pytest.raises(ValidationError, match="reject_ends: true ends the task at the first rejection"):
        Workflow.model_validate(
            {"id": "x", "name": "x", "steps": [approval("a", reject_ends=True, max_rejections=2)]}
        )


def test_the_sample_release_review_asks_two_reviewers(catalog: Catalog) -> None:
    spec = catalog.get("release-review").step("review").task
    assert spec is not None and spec.min_approvals == 2 and spec.rejections_to_end == 1
