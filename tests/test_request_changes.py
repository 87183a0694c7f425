"""Request changes: the third decision on a human task, with a comment the workflow acts on.

``on_changes_requested: {rerun: <upstream step>, max_rounds: N}`` runs that step again with
the comment in ``steps.<task>.changes`` and reopens the task (a new round); past N rounds
one more request ends the branch as rejected. ``end`` ends the branch at once. Shown through
signed Slack clicks and modals, REST, and the engine API with a worker's reports.
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
from engine.errors import InvalidInput
from engine.model import EventType, RunStatus, StepStatus
from engine.views import describe
from engine.workflow import Workflow
from tests.engine_helpers import ALICE, BOB, Clock, action, approval, engine_for, finish_step
from tests.fake_slack import ALICE as SLACK_ALICE
from tests.fake_slack import BOB as SLACK_BOB
from tests.fake_slack import Slack, all_text, has_buttons, write_workflows
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

REDRAFT: dict[str, Any] = {
    "id": "redraft",
    "name": "Redraft",
    "settings": {"slack_channel": "#comms"},
    "steps": [
        {
            "id": "compose",
            "type": "notify",
            "notify": {"text": "Draft: {{ steps.review.changes.comment | default('first draft') }}"},
        },
        approval(
            "review",
            ["compose"],
            fields={"text": "{{ steps.compose.result.text }}"},
            on_changes_requested={"rerun": "compose", "max_rounds": 1},
        ),
        {"id": "publish", "type": "notify", "needs": ["review"], "notify": {"text": "published"}},
    ],
}
WORKER_DRAFT: dict[str, Any] = {
    "id": "worker-draft",
    "name": "Worker draft",
    "steps": [
        action("draft", args={"note": "{{ steps.review.changes.comment | default('') }}"}),
        action("polish", ["draft"]),
        approval("review", ["polish"], on_changes_requested={"rerun": "draft", "max_rounds": 3}),
        action("send", ["review"]),
    ],
}
ENDS: dict[str, Any] = {
    "id": "ends",
    "name": "Changes end it",
    "steps": [
        approval("review", on_changes_requested="end"),
        {"id": "after", "type": "notify", "needs": ["review"], "notify": {"text": "x"}},
    ],
}
PLAIN: dict[str, Any] = {"id": "plain", "name": "Plain", "steps": [approval("review")]}


# -- Slack -------------------------------------------------------------------------------------


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", {"redraft": REDRAFT}))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def request_changes(slack: Slack, card: tuple[str, str], value: str, comment: str) -> None:
    await slack.click(ids.TASK_CHANGES, value, user=SLACK_BOB, message=card)
    opened = await slack.fake.wait_for(
        lambda: [c for c in slack.fake.ok_calls("views.open") if c.args["view"]["callback_id"] == ids.CHANGES_MODAL]
    )
    view = opened[-1].args["view"]
    await slack.submit(view, {ids.REASON_BLOCK: {ids.REASON_INPUT: comment}}, user=SLACK_BOB)


async def test_slack_request_changes_reruns_the_draft_with_the_comment_and_reopens_the_card(
    slack: Slack,
) -> None:
    reply = await slack.command("start redraft", user=SLACK_ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = slack.engine.list_runs().runs[0].run_id
    value = ids.task_value(run_id, "review")
    first = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_CHANGES, value))
    assert "Draft: first draft" in all_text(slack.fake.messages[first])

    await request_changes(slack, first, value, "Shorter, please")

    closed = (await slack.fake.wait_for(lambda: slack.fake.updates_of(first)))[0]
    assert not has_buttons(closed.args)
    assert f"*Changes requested* by <@{SLACK_BOB.id}>" in all_text(closed.args)
    assert "Shorter, please" in all_text(closed.args)
    second = await slack.fake.wait_for(
        lambda: (card := slack.fake.message_with(ids.TASK_CHANGES, value)) != first and card
    )
    text = all_text(slack.fake.messages[second])
    assert "Draft: Shorter, please" in text  # the rerun step saw the comment
    assert "Round 2 of 2" in text and f"<@{SLACK_BOB.id}> asked for changes" in text
    run = slack.engine.get_run(run_id)
    assert run.steps["compose"].attempt == 2 and run.steps["review"].task.round == 2  # type: ignore[union-attr]

    await request_changes(slack, second, value, "Still too long")  # past max_rounds: ends rejected
    ended = (await slack.fake.wait_for(lambda: slack.fake.updates_of(second)))[0]
    assert "*Changes requested*" in all_text(ended.args) and not has_buttons(ended.args)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["publish"].status is StepStatus.SKIPPED
    assert run.steps["review"].detail == "rejected: changes requested by bob after 1 rounds of changes"
    assert run.steps["review"].result["changes_requested"] is True


# -- REST --------------------------------------------------------------------------------------


@pytest.fixture
async def changes_client(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine]:
    engine = engine_for(redis_conn, namespace, ENDS, PLAIN, clock=Clock())
    return await aiohttp_client(create_app(engine, settings)), engine


async def test_rest_request_changes_needs_a_comment_and_a_workflow_that_takes_it(
    changes_client: tuple[TestClient, Engine],
) -> None:
    client, engine = changes_client
    plain = await (await client.post("/v1/workflows/plain/runs", json={}, headers=bearer("operator"))).json()
    refused = await client.post(
        f"/v1/runs/{plain['run_id']}/tasks/review/complete",
        json={"decision": "request_changes", "comment": "more"},
        headers=bearer("approver"),
    )
    assert "takes no change requests" in (await problem(refused, 409))["detail"]

    run = await (await client.post("/v1/workflows/ends/runs", json={}, headers=bearer("operator"))).json()
    complete = f"/v1/runs/{run['run_id']}/tasks/review/complete"
    both = await client.post(complete, json={"approved": True, "decision": "approve"}, headers=bearer("approver"))
    await problem(both, 422)
    neither = await client.post(complete, json={"comment": "hm"}, headers=bearer("approver"))
    await problem(neither, 422)
    bare = await client.post(complete, json={"decision": "request_changes"}, headers=bearer("approver"))
    assert "needs a comment" in (await problem(bare, 422))["detail"]

    sent_back = await client.post(
        complete, json={"decision": "request_changes", "comment": "wrong numbers"}, headers=bearer("approver")
    )
    assert sent_back.status == 200, await sent_back.text()
    done = engine.get_run(run["run_id"])
    assert done.status is RunStatus.COMPLETED and done.steps["after"].status is StepStatus.SKIPPED
    assert done.steps["review"].result == {"approved": False, "changes_requested": True, "comment": "wrong numbers"}
    assert describe(done).status_text == "completed (rejected)"
    listed = await (await client.get(f"/v1/runs/{run['run_id']}", headers=bearer("viewer"))).json()
    assert listed["steps"]["review"]["task"]["changes_requested"] is True

    approved = await client.post(
        f"/v1/runs/{plain['run_id']}/tasks/review/complete", json={"decision": "approve"}, headers=bearer("approver")
    )
    assert approved.status == 200 and engine.get_run(plain["run_id"]).status is RunStatus.COMPLETED


# -- engine, with a worker's reports -----------------------------------------------------------


def test_rerun_passes_the_comment_to_the_upstream_worker_step_and_every_step_between(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, WORKER_DRAFT)
    run = engine.start("worker-draft", {}, ALICE)
    run = finish_step(engine, run, "draft", {"text": "v1"})
    run = finish_step(engine, run, "polish", {"text": "v1!"})
    assert run.steps["draft"].args == {"note": ""}
    with pytest.raises(InvalidInput, match="needs a comment"):
        engine.request_changes(run.run_id, "review", BOB, "  ")

    run = engine.request_changes(run.run_id, "review", BOB, "add the totals")

    assert run.steps["draft"].status is StepStatus.QUEUED and run.steps["draft"].attempt == 2
    assert run.steps["draft"].args == {"note": "add the totals"}
    assert run.steps["polish"].status is StepStatus.PENDING and run.steps["review"].task is None
    assert run.steps["send"].status is StepStatus.PENDING
    types = [(e.type, e.step_id) for e in engine.events(run.run_id)]
    assert (EventType.TASK_CHANGES_REQUESTED, "review") in types
    assert {(EventType.STEP_RESET, s) for s in ("draft", "polish", "review")} <= set(types)
    assert engine.context(run.run_id)["steps"]["review"]["changes"]["comment"] == "add the totals"

    run = finish_step(engine, run, "draft", {"text": "v2"})
    run = finish_step(engine, run, "polish", {"text": "v2!"})
    task = run.steps["review"].task
    assert task is not None and task.round == 2 and task.decided_at is None
    run = engine.complete_task(run.run_id, "review", BOB, True)  # a new round: Bob may decide again
    assert run.steps["send"].status is StepStatus.QUEUED
    assert [c.comment for c in run.steps["review"].changes] == ["add the totals"]


def test_rerun_must_name_a_step_the_task_needs(catalog: Catalog) -> None:
    with pytest.raises(ValidationError, match="which is not a step it needs"):
        Workflow.model_validate(
            {
                "id": "x",
                "name": "x",
                "steps": [
                    action("a"),
                    approval("review", ["a"], on_changes_requested={"rerun": "later"}),
                    action("later", ["review"]),
                ],
            }
        )
    spec = catalog.get("release-review").step("review").task
    assert spec is not None and spec.on_changes_requested is not None


def test_the_sample_release_review_redrafts_with_the_comment(
    redis_conn: redis.Redis, namespace: str, catalog: Catalog
) -> None:
    sample = catalog.get("release-review").model_dump(mode="json", by_alias=True)
    engine = engine_for(redis_conn, namespace, sample)
    run = engine.start("release-review", {"release": "2.0"}, ALICE)
    run = finish_step(engine, run, "draft", {"subject": "s", "body": "b"})
    run = engine.request_changes(run.run_id, "review", BOB, "mention the migration")
    assert run.steps["draft"].args["topic"] == "release 2.0 (mention the migration)"
