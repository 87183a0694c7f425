"""Reminders and escalation: ``remind_at`` DMs the approvers who have not decided, and
``on_expire: escalate`` hands the task to ``escalate_to`` with a new deadline.

Driven through the engine's timers with a test clock, with signed Slack clicks for the
decisions; the DMs and the card updates are asserted on the fake Slack.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from bot import ids
from engine.api import Engine
from engine.catalog import Catalog, load_folder
from engine.model import EventType, RunStatus
from engine.workflow import Workflow
from tests.engine_helpers import Clock, approval
from tests.fake_slack import ALICE, BOB, CAROL, Slack, SlackUser, all_text, has_buttons, write_workflows

DAVE = SlackUser("U0DAVE", "dave")
ESCALATING: dict[str, Any] = {
    "id": "escalating",
    "name": "Escalating approval",
    "settings": {"slack_channel": "#deploys"},
    "steps": [
        approval(
            "approve",
            approvers=[f"slack:{BOB.id}", f"slack:{CAROL.id}", "api:*"],
            min_approvals=2,
            expires_in="1h",
            remind_at=["50%", 0.9],
            on_expire="escalate",
            escalate_to=[f"slack:{DAVE.id}"],
            escalate_expires_in="30m",
        )
    ],
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path, clock: Clock) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", {"escalating": ESCALATING}))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace, clock=clock)


def dms_to(slack: Slack, user: SlackUser) -> list[str]:
    return [all_text(c.args) for c in slack.fake.ok_calls("chat.postMessage") if c.args["channel"] == user.id]


async def test_reminders_go_to_who_has_not_decided_then_the_task_escalates(slack: Slack, clock: Clock) -> None:
    reply = await slack.command("start escalating", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = slack.engine.list_runs().runs[0].run_id
    value = ids.task_value(run_id, "approve")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_APPROVE, value))
    await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    await slack.fake.wait_for(lambda: slack.fake.updates_of(card))

    clock.advance(31 * 60)
    assert slack.engine.fire_due_timers() == 1
    first = (await slack.fake.wait_for(lambda: dms_to(slack, CAROL)))[0]
    assert "was escalated" not in first and "is waiting for your decision" in first
    assert "Approvals: 1 of 2" in first
    clock.advance(24 * 60)
    assert slack.engine.fire_due_timers() == 1
    await slack.fake.wait_for(lambda: len(dms_to(slack, CAROL)) == 2)
    assert dms_to(slack, BOB) == []  # Bob decided: no reminder for him

    clock.advance(6 * 60)  # past the hour: the task passes to Dave for 30 minutes
    assert slack.engine.fire_due_timers() == 1
    told = (await slack.fake.wait_for(lambda: dms_to(slack, DAVE)))[0]
    assert "was escalated to you" in told
    update = await slack.fake.wait_for(
        lambda: [u for u in slack.fake.updates_of(card) if "Escalated" in all_text(u.args)]
    )
    assert f"*Escalated* to <@{DAVE.id}>" in all_text(update[0].args) and has_buttons(update[0].args)
    run = slack.engine.get_run(run_id)
    task = run.steps["approve"].task
    assert task is not None and task.escalated and task.approvers == [f"slack:{DAVE.id}"]
    assert task.expires_at == clock.now + timedelta(minutes=30)

    refused = await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(refused)))[0]
    assert f"may not decide task 'approve'; its approvers are slack:{DAVE.id}" in reply["text"]

    clock.advance(16 * 60)  # 50% of the escalation's 30 minutes: Dave is reminded
    assert slack.engine.fire_due_timers() == 1
    await slack.fake.wait_for(lambda: len(dms_to(slack, DAVE)) == 2)
    clock.advance(15 * 60)  # the 90% reminder, then the escalation's own deadline: rejected
    assert slack.engine.fire_due_timers() == 2
    run = slack.engine.get_run(run_id)
    assert run.status is RunStatus.COMPLETED and run.steps["approve"].task.approved is False  # type: ignore[union-attr]
    types = [e.type for e in slack.engine.events(run_id)]
    assert types.count(EventType.TASK_REMINDED) == 4 and types.count(EventType.TASK_ESCALATED) == 1
    reminded = [e.data["to"] for e in slack.engine.events(run_id) if e.type is EventType.TASK_REMINDED]
    assert reminded == [[f"slack:{CAROL.id}"]] * 2 + [[f"slack:{DAVE.id}"]] * 2
    final = await slack.fake.wait_for(
        lambda: [u for u in slack.fake.updates_of(card) if "*Expired*" in all_text(u.args)]
    )
    assert not has_buttons(final[0].args)


def test_reminders_and_escalation_need_a_deadline(catalog: Catalog) -> None:
    with pytest.raises(ValidationError, match="need expires_in"):
        Workflow.model_validate({"id": "x", "name": "x", "steps": [approval("a", remind_at=["50%"])]})
    with pytest.raises(ValidationError, match="needs escalate_to"):
        Workflow.model_validate(
            {"id": "x", "name": "x", "steps": [approval("a", expires_in="1h", on_expire="escalate")]}
        )
    with pytest.raises(ValidationError, match="between 0% and 100%"):
        Workflow.model_validate(
            {"id": "x", "name": "x", "steps": [approval("a", expires_in="1h", remind_at=["150%"])]}
        )
    spec = catalog.get("release-review").step("review").task
    assert spec is not None and spec.remind_at == [0.5, 0.9] and spec.on_expire == "escalate"
