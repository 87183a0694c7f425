"""The ``ask`` step: a question posted in Slack whose answer is the step's result.

Answered by a reply in the question's thread (an Events API ``message`` event), by the
Answer button's modal, or over REST; unanswered, it expires like a task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot import ids
from engine.api import Engine
from engine.catalog import Catalog, load_folder
from engine.model import FailureCode, RunStatus
from tests.engine_helpers import Clock, engine_for
from tests.fake_slack import ALICE, BOB, CAROL, Slack, all_text, has_buttons, write_workflows
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings


def asking(workflow_id: str, to: str, **ask: Any) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "name": "Ask for a region",
        "inputs": {"service": {"type": "string", "default": "api"}},
        "settings": {"slack_channel": "#ops"},
        "steps": [
            {
                "id": "region",
                "type": "ask",
                "ask": {"question": "Which region for {{ inputs.service }}?", "to": to, **ask},
            },
            {
                "id": "go",
                "type": "notify",
                "needs": ["region"],
                "notify": {"text": "Deploying {{ inputs.service }} to {{ steps.region.result.answer }}"},
            },
        ],
    }


WORKFLOWS = {
    "ask-carol": asking("ask-carol", f"slack:{CAROL.id}"),
    "ask-ops": asking("ask-ops", "#ops", on_expire="empty", expires_in="1h"),
}


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", WORKFLOWS))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def start(slack: Slack, workflow: str) -> str:
    reply = await slack.command(f"start {workflow} service=billing", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    return slack.engine.list_runs().runs[0].run_id


async def test_a_reply_in_the_questions_thread_is_the_answer(slack: Slack) -> None:
    run_id = await start(slack, "ask-carol")
    asked = await slack.fake.wait_for(
        lambda: [
            key for key, args in slack.fake.messages.items() if "Which region for billing?" in all_text(args)
        ]
    )
    channel, ts = asked[0]
    assert channel == "D0CAROL"  # a direct message to Carol

    def reply(user: str, text: str, thread: str | None = ts) -> dict[str, Any]:
        event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": f"{ts}1"}
        return event | ({"thread_ts": thread} if thread else {})

    await slack.event(reply(CAROL.id, "not in a thread", thread=None))
    await slack.event(reply(BOB.id, "us-east"))
    told = await slack.fake.wait_for(lambda: slack.fake.ok_calls("chat.postEphemeral"))
    assert told[0].args["user"] == BOB.id
    assert f"may not answer question 'region'; it is for slack:{CAROL.id}" in told[0].args["text"]

    await slack.event(reply(CAROL.id, " eu-west "), event_id="EvANSWER")
    await slack.event(reply(CAROL.id, " eu-west "), event_id="EvANSWER", retry=1)  # acts once
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["region"].result == {"answer": "eu-west", "answered_by": f"slack:{CAROL.id}"}
    update = (await slack.fake.wait_for(lambda: slack.fake.updates_of((channel, ts))))[0]
    assert f"*Answered* by <@{CAROL.id}>" in all_text(update.args) and not has_buttons(update.args)
    await slack.fake.wait_for(
        lambda: [
            c
            for c in slack.fake.ok_calls("chat.postMessage")
            if c.args["text"] == "Deploying billing to eu-west"
        ]
    )
    assert [c.error for c in slack.fake.calls if c.method == "chat.postEphemeral"] == [None]


async def test_the_answer_button_opens_a_modal_and_its_answer_is_the_result(slack: Slack) -> None:
    run_id = await start(slack, "ask-ops")
    value = ids.task_value(run_id, "region")
    message = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.QUESTION_ANSWER, value))
    await slack.click(ids.QUESTION_ANSWER, value, user=BOB, message=message)
    view = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]
    assert view["callback_id"] == ids.ANSWER_MODAL and "Which region for billing?" in all_text(view)
    await slack.submit(view, {ids.REASON_BLOCK: {ids.REASON_INPUT: "ap-south"}}, user=BOB)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.steps["region"].result == {"answer": "ap-south", "answered_by": f"slack:{BOB.id}"}


# -- REST and expiry -----------------------------------------------------------------------------


@pytest.fixture
async def ask_client(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine, Clock]:
    clock = Clock()
    engine = engine_for(
        redis_conn, namespace, asking("ask-fail", "#ops", expires_in="1h"), WORKFLOWS["ask-ops"], clock=clock
    )
    return await aiohttp_client(create_app(engine, settings)), engine, clock


async def test_rest_answers_once_and_an_unanswered_question_expires(
    ask_client: tuple[TestClient, Engine, Clock],
) -> None:
    client, engine, clock = ask_client
    run = await (await client.post("/v1/workflows/ask-fail/runs", json={}, headers=bearer("operator"))).json()
    answer = f"/v1/runs/{run['run_id']}/tasks/region/answer"
    await problem(await client.post(answer, json={"answer": ""}, headers=bearer("approver")), 422)
    answered = await client.post(answer, json={"answer": "eu-central"}, headers=bearer("approver"))
    assert answered.status == 200, await answered.text()
    assert (await answered.json())["steps"]["region"]["result"] == {
        "answer": "eu-central",
        "answered_by": "api:lead",
    }
    again = await client.post(answer, json={"answer": "us"}, headers=bearer("admin"))
    assert "already answered by api:lead" in (await problem(again, 409))["detail"]
    await problem(
        await client.post(
            f"/v1/runs/{run['run_id']}/tasks/nope/answer", json={"answer": "x"}, headers=bearer("approver")
        ),
        404,
    )

    failing = await (
        await client.post("/v1/workflows/ask-fail/runs", json={}, headers=bearer("operator"))
    ).json()
    empty = await (
        await client.post("/v1/workflows/ask-ops/runs", json={}, headers=bearer("operator"))
    ).json()
    clock.advance(3601)
    assert engine.fire_due_timers() == 2
    failed = engine.get_run(failing["run_id"])
    assert failed.status is RunStatus.FAILED and failed.failure.code is FailureCode.APPROVAL_EXPIRED  # type: ignore[union-attr]
    unanswered = engine.get_run(empty["run_id"])
    assert unanswered.status is RunStatus.COMPLETED
    assert unanswered.steps["region"].result == {"answer": None, "answered_by": None, "expired": True}


def test_the_sample_asks_before_it_publishes(catalog: Catalog) -> None:
    ask = catalog.get("release-review").step("audience").ask
    assert ask is not None and ask.on_expire == "empty"
