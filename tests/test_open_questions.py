"""Questions waiting for an answer are listed where pending tasks are (issue 14): REST, Slack's
``/run tasks`` and App Home, the CLI's ``tasks`` (local here; remote in test_remote_cli.py).

Every medium lists them from ``Engine.open_questions`` and answers them through ``Engine.answer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from bot import ids
from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, ActorKind, RunStatus
from tests.engine_helpers import engine_for
from tests.fake_slack import ALICE, BOB, CAROL, WORKFLOWS, Slack, all_text, write_workflows
from tests.test_ask import asking
from tests.test_openapi import check, document_of
from tests.web_helpers import APPROVAL_WORKFLOW, bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

OPS = Actor(kind=ActorKind.API, id="ops-bot")
ASK_OPS = asking("ask-ops", "#ops", expires_in="1h")
# The answer is followed by a step for a worker (none runs here): answering changes no run status.
ASK_THEN_BUILD: dict[str, Any] = {
    "id": "ask-then-build",
    "name": "Ask then build",
    "steps": [
        {"id": "region", "type": "ask", "ask": {"question": "Build in which region?", "to": "#ops"}},
        {"id": "build", "type": "action", "action": "worker.actions:echo", "needs": ["region"]},
    ],
}


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


async def test_the_command_center_counts_and_lists_open_questions(
    client_and_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = client_and_engine
    document = await document_of(client)
    asked = engine.start("ask-ops", {"service": "billing"}, OPS)
    center = await (await client.get("/v1/command-center", headers=bearer("viewer"))).json()
    check(document, "/v1/command-center", "get", 200, center)
    assert center["counts"]["questions"] == 1
    assert [(q["run_id"], q["step_id"]) for q in center["awaiting_answer"]] == [(asked.run_id, "region")]
    engine.answer(asked.run_id, "region", OPS, "eu-west")
    center = await (await client.get("/v1/command-center", headers=bearer("viewer"))).json()
    assert center["counts"]["questions"] == 0 and center["awaiting_answer"] == []
    operation = document["paths"]["/v1/questions"]["get"]
    assert operation["x-required-role"] == "viewer" and operation["tags"] == ["tasks"]


# -- Slack ---------------------------------------------------------------------------------------


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(
        write_workflows(
            tmp_path / "workflows", {**WORKFLOWS, "ask-ops": ASK_OPS, "ask-then-build": ASK_THEN_BUILD}
        )
    )
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


def buttons_of(view: dict[str, Any], action_id: str) -> list[str]:
    return [
        element["value"]
        for block in view["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
        if element["action_id"] == action_id
    ]


async def test_run_pending_lists_questions_beside_tasks(slack: Slack) -> None:
    typo = await slack.command("pendng")
    assert "Unknown command `pendng`. Did you mean `/run tasks`?" in typo["text"]
    empty = await slack.command("pending")
    assert empty["text"] == "No task is waiting for a decision.\nNo question is waiting for an answer."
    await slack.command("start approve-deploy service=web", user=ALICE)
    await slack.command("start ask-ops service=<!channel>", user=ALICE)
    asked = slack.engine.list_runs(workflow_id="ask-ops").runs[0]

    for verb in ("pending", "tasks"):
        text = (await slack.command(verb))["text"]
        tasks, _, questions = text.partition("*1 question is waiting for an answer*")
        assert "*1 pending*" in tasks and "Deploy web?" in tasks and "Which region" not in tasks
        assert "❓ *Which region for &lt;!channel&gt;?* · step `region`" in questions
        assert f"Ask for a region run `{asked.short_id}` · asked #ops" in questions

    slack.engine.answer(asked.run_id, "region", OPS, "eu-west")
    after = (await slack.command("pending"))["text"]
    assert "*1 pending*" in after and after.endswith("No question is waiting for an answer.")


async def test_app_home_shows_open_questions_with_the_answer_button(slack: Slack) -> None:
    await slack.event({"type": "app_home_opened", "user": BOB.id, "channel": "D0BOB", "tab": "home"})

    def latest_home(user: str = BOB.id) -> dict[str, Any]:
        calls = [c for c in slack.fake.ok_calls("views.publish") if c.args["user_id"] == user]
        view: dict[str, Any] = calls[-1].args["view"] if calls else {"blocks": []}
        return view

    await slack.fake.wait_for(lambda: "Waiting for an answer · 0 open*" in all_text({"view": latest_home()}))
    assert "No question is waiting for an answer." in all_text({"view": latest_home()})

    await slack.command("start ask-then-build", user=ALICE)
    run = slack.engine.list_runs().runs[0]
    value = ids.task_value(run.run_id, "region")
    # The question appears on the open home by itself, refreshed as the run's events come.
    await slack.fake.wait_for(lambda: buttons_of(latest_home(), ids.QUESTION_ANSWER) == [value])
    home = all_text({"view": latest_home()})
    assert "Waiting for an answer · 1 open*" in home and "❓ *Build in which region?*" in home
    assert f"*Ask then build* · run `{run.short_id}` · step `region` · asked #ops" in home

    # The home's button opens the question's answer modal; its answer is the step's result.
    await slack.click(ids.QUESTION_ANSWER, value, user=BOB)
    view = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]
    assert view["callback_id"] == ids.ANSWER_MODAL and "Build in which region?" in all_text(view)
    await slack.submit(view, {ids.REASON_BLOCK: {ids.REASON_INPUT: "ap-south"}}, user=BOB)
    answered = await slack.fake.wait_for(
        lambda: (r := slack.engine.get_run(run.run_id)).steps["region"].result and r
    )
    assert answered.steps["region"].result == {"answer": "ap-south", "answered_by": f"slack:{BOB.id}"}
    assert answered.status is RunStatus.RUNNING  # the build waits for a worker: no run event
    # The answer alone refreshes the open home: the question is gone from it.
    await slack.fake.wait_for(lambda: "Waiting for an answer · 0 open*" in all_text({"view": latest_home()}))
    assert buttons_of(latest_home(), ids.QUESTION_ANSWER) == []

    # The same modal submitted again (a stale home): the engine's refusal is a notice on the home.
    await slack.submit(view, {ids.REASON_BLOCK: {ids.REASON_INPUT: "us-east"}}, user=CAROL)
    await slack.fake.wait_for(lambda: "already answered by" in all_text({"view": latest_home(CAROL.id)}))
    assert slack.engine.get_run(run.run_id).steps["region"].result["answer"] == "ap-south"
