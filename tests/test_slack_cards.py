"""Approval cards: posted when a task opens, decided by clicks, updated in place (chat.update)."""

from __future__ import annotations

from datetime import timedelta

from bot import ids
from bot.interactions import edits_from
from bot.runtime import slack_actor
from engine.model import FailureCode, RunStatus, StepStatus
from tests.fake_slack import ALICE, BOB, CAROL, Slack, all_text, has_buttons


async def start(slack: Slack, text: str) -> str:
    """Start a run with /run as Alice and return its id."""
    reply = await slack.command(f"start {text}", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    return slack.engine.list_runs().runs[0].run_id


async def card_of(slack: Slack, run_id: str, task_id: str) -> tuple[str, str]:
    value = ids.task_value(run_id, task_id)
    return await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_APPROVE, value))


async def test_task_opens_a_card_and_approve_updates_it_in_place(slack: Slack) -> None:
    run_id = await start(slack, "approve-deploy service=billing")
    card = await card_of(slack, run_id, "approve")
    text = all_text(slack.fake.messages[card])
    for expected in (
        "Deploy billing?",
        "Roll billing out to production.",
        "*Approve deploy* (`approve-deploy`)",
        f"run `{run_id[:8]}`",
        "approval · step `approve`",
        "*service*\nbilling",
        "*replicas*\n3",
        f"Started by <@{ALICE.id}>",
        "expires <!date^",
    ):
        assert expected in text, expected
    channel, _ts = card
    assert channel.startswith("C")  # posted to "#deploys", updated by the id Slack answered with

    response_url = await slack.click(
        ids.TASK_APPROVE, ids.task_value(run_id, "approve"), user=BOB, message=card
    )

    update = (await slack.fake.wait_for(lambda: slack.fake.updates_of(card)))[0]
    assert not has_buttons(update.args)
    assert f"*Approved* by <@{BOB.id}>" in all_text(update.args)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["approve"].result == {"approved": True}
    assert run.steps["approve"].task.decided_by.ref == f"slack:{BOB.id}"
    assert slack.responses_to(response_url) == []  # nothing to say: the card says it
    notice = await slack.fake.wait_for(
        lambda: [
            c for c in slack.fake.ok_calls("chat.postMessage") if c.args.get("text") == "Deployed billing."
        ]
    )
    assert notice[0].args["channel"] == "#deploys"


async def test_a_second_click_is_told_who_decided(slack: Slack) -> None:
    run_id = await start(slack, "approve-deploy")
    card = await card_of(slack, run_id, "approve")
    value = ids.task_value(run_id, "approve")
    await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    await slack.fake.wait_for(lambda: slack.fake.updates_of(card))

    late = await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(late)))[0]
    assert reply["response_type"] == "ephemeral" and reply["replace_original"] is False
    assert "Task 'approve' was already approved by bob at" in reply["text"]

    late_reject = await slack.click(ids.TASK_REJECT, value, user=CAROL, message=card)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(late_reject)))[0]
    assert "already approved by bob" in reply["text"]
    assert slack.fake.ok_calls("views.open") == []  # no modal for a decided task


async def test_the_starter_may_not_approve_their_own_run(slack: Slack) -> None:
    run_id = await start(slack, "approve-deploy")
    card = await card_of(slack, run_id, "approve")
    refused = await slack.click(ids.TASK_APPROVE, ids.task_value(run_id, "approve"), user=ALICE, message=card)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(refused)))[0]
    assert reply["response_type"] == "ephemeral"
    assert f"alice started run {run_id[:8]} and so may not decide its tasks" in reply["text"]
    assert slack.engine.get_run(run_id).steps["approve"].status is StepStatus.WAITING
    assert slack.fake.updates_of(card) == []


async def test_reject_asks_for_a_reason_in_a_modal(slack: Slack) -> None:
    run_id = await start(slack, "approve-deploy")
    card = await card_of(slack, run_id, "approve")
    await slack.click(ids.TASK_REJECT, ids.task_value(run_id, "approve"), user=BOB, message=card)
    opened = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0]
    view = opened.args["view"]
    assert view["callback_id"] == ids.REJECT_MODAL and opened.args["trigger_id"].startswith("trigger-")

    await slack.submit(view, {ids.REASON_BLOCK: {ids.REASON_INPUT: "Freeze until Monday"}}, user=BOB)

    update = (await slack.fake.wait_for(lambda: slack.fake.updates_of(card)))[0]
    assert f"*Rejected* by <@{BOB.id}>" in all_text(update.args)
    assert "Freeze until Monday" in all_text(update.args)
    task = slack.engine.get_run(run_id).steps["approve"].task
    assert task is not None and task.approved is False and task.comment == "Freeze until Monday"


async def test_edit_modal_submits_the_edits_as_the_task_result(slack: Slack) -> None:
    run_id = await start(slack, "edit-note")
    value = ids.task_value(run_id, "review")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_EDIT, value))
    await slack.click(ids.TASK_EDIT, value, user=BOB, message=card)
    view = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]
    inputs = {
        b["block_id"]: b["element"].get("initial_value") for b in view["blocks"] if b["type"] == "input"
    }
    assert inputs == {"field:subject": "Hello", "field:body": "First draft", "field:count": "2"}

    edits = {"field:subject": "Hi all", "field:body": "Final text", "field:count": "5"}
    await slack.submit(view, {block: {ids.FIELD_INPUT: text} for block, text in edits.items()}, user=BOB)

    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.steps["review"].result == {
        "subject": "Hi all",
        "body": "Final text",
        "count": 5,
        "approved": True,
    }
    sent = await slack.fake.wait_for(
        lambda: [
            c
            for c in slack.fake.ok_calls("chat.postMessage")
            if c.args.get("text") == "Sent Hi all: Final text"
        ]
    )
    assert sent[0].args["channel"] == "#comms"
    assert "*Approved* by" in all_text(slack.fake.updates_of(card)[0].args)


async def test_expiry_updates_the_card(slack: Slack) -> None:
    rejecting = await start(slack, "approve-deploy")
    failing = await start(slack, "edit-note")
    card = await card_of(slack, rejecting, "approve")
    edit_card = await card_of(slack, failing, "review")

    slack.engine.fire_due_timers(now=slack.engine.clock() + timedelta(hours=2))

    update = (await slack.fake.wait_for(lambda: slack.fake.updates_of(card)))[0]
    assert "*Expired*" in all_text(update.args) and "rejected automatically" in all_text(update.args)
    assert not has_buttons(update.args)
    edit_update = (await slack.fake.wait_for(lambda: slack.fake.updates_of(edit_card)))[0]
    assert "nobody decided, so the run failed" in all_text(edit_update.args)
    failure = slack.engine.get_run(failing).failure
    assert failure is not None and failure.code is FailureCode.APPROVAL_EXPIRED


async def test_progress_goes_in_a_thread_and_a_stop_cancels_the_card(slack: Slack) -> None:
    run_id = await start(slack, "approve-deploy")
    card = await card_of(slack, run_id, "approve")
    for command in ("pause", "resume", "stop"):
        await slack.command(f"{command} {run_id[:8]}", user=BOB)

    def replies() -> list[str]:
        return [c.args["text"] for c in slack.fake.ok_calls("chat.postMessage") if "thread_ts" in c.args]

    await slack.fake.wait_for(lambda: len(replies()) >= 3)
    assert replies()[0] == f"⏸️ Paused by <@{BOB.id}>"
    assert replies()[1] == f"▶️ Resumed by <@{BOB.id}>"
    assert replies()[2].startswith("⏹️ Stopped: `RUN_STOPPED` Stopped immediately by bob")
    header = f"Approve deploy run {run_id[:8]} started"
    ((_channel, header_ts),) = [key for key, m in slack.fake.messages.items() if m.get("text") == header]
    thread_ts = {
        c.args["thread_ts"] for c in slack.fake.ok_calls("chat.postMessage") if "thread_ts" in c.args
    }
    assert thread_ts == {header_ts}
    update = (await slack.fake.wait_for(lambda: slack.fake.updates_of(card)))[0]
    assert "*Cancelled*" in all_text(update.args) and not has_buttons(update.args)


def test_edits_keep_field_types_and_leave_fields_the_modal_did_not_show() -> None:
    view = {
        "state": {
            "values": {
                "field:subject": {"value": {"type": "plain_text_input", "value": "New"}},
                "field:count": {"value": {"type": "plain_text_input", "value": "7"}},
                "field:body": {"value": {"type": "plain_text_input", "value": None}},
            }
        }
    }
    fields = {"subject": "Old", "count": 2, "body": "text", "hidden": "keep"}
    edits = edits_from(view, fields, ["subject", "count", "body", "hidden"])
    assert edits == {"subject": "New", "count": 7, "body": ""}


async def test_an_edit_of_the_wrong_type_is_shown_on_its_input_and_decides_nothing(slack: Slack) -> None:
    run = slack.engine.start("edit-typed", {}, slack_actor({"id": ALICE.id, "name": ALICE.name}))
    value = ids.task_value(run.run_id, "review")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_EDIT, value))
    await slack.click(ids.TASK_EDIT, value, user=BOB, message=card)
    view = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]

    wrong = {"count": "five", "urgent": "maybe", "tags": '{"not": "a list"}', "notes": "fine"}
    response = await slack.submit(view, {f"field:{k}": {ids.FIELD_INPUT: v} for k, v in wrong.items()})
    assert await response.json() == {
        "response_action": "errors",
        "errors": {
            "field:count": "Enter a whole number, like 3.",
            "field:urgent": "Enter true or false.",
            "field:tags": "Enter a JSON list, like [1, 2].",
        },
    }
    task = slack.engine.get_run(run.run_id).steps["review"].task
    assert task is not None and task.decided_at is None  # nothing was decided

    right = {"count": " 5 ", "urgent": "yes", "tags": '["a", "b"]', "notes": "fine"}
    response = await slack.submit(view, {f"field:{k}": {ids.FIELD_INPUT: v} for k, v in right.items()})
    assert response.status == 200 and not await response.text()  # a plain ack closes the modal
    done = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run.run_id)).status.terminal and r)
    assert done.steps["review"].result == {
        "count": 5,
        "urgent": True,
        "tags": ["a", "b"],
        "notes": "fine",
        "approved": True,
    }


async def test_a_field_too_long_for_a_slack_input_is_kept_not_cut(slack: Slack) -> None:
    notes = "x" * 3500
    run = slack.engine.start(
        "edit-typed", {"notes": notes}, slack_actor({"id": ALICE.id, "name": ALICE.name})
    )
    value = ids.task_value(run.run_id, "review")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_EDIT, value))
    await slack.click(ids.TASK_EDIT, value, user=BOB, message=card)
    view = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]
    inputs = {b["block_id"] for b in view["blocks"] if b["type"] == "input"}
    assert inputs == {"field:count", "field:urgent", "field:tags"}
    assert "*notes* is too long to edit here (3,500 characters)" in all_text({"blocks": view["blocks"]})

    await slack.submit(view, {"field:count": {ids.FIELD_INPUT: "3"}})
    done = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run.run_id)).status.terminal and r)
    assert done.steps["review"].result["notes"] == notes and done.steps["review"].result["count"] == 3
