"""Failure alerts (a failed run, a drain timeout) with Replay and Details, and the Command Center home."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot import cards, ids
from bot.home import home_view
from bot.outbox import Outbound
from bot.runtime import slack_actor
from engine.model import FailureCode, Question, Run, RunStatus, StepState, StepStatus, Task
from engine.queries import CommandCenter, OpenQuestion
from engine.workflow import StepType
from tests.fake_slack import (
    ALICE,
    BOB,
    MESSAGE_BLOCKS,
    VIEW_BLOCKS,
    Slack,
    all_text,
    block_errors,
    has_buttons,
)


def alerts(slack: Slack) -> list[tuple[tuple[str, str], dict[str, object]]]:
    return [
        (key, m)
        for key, m in slack.fake.messages.items()
        if str(m.get("text", "")).startswith(("Run failed", "Drain"))
    ]


async def test_a_failed_run_raises_an_alert_with_replay_and_details(slack: Slack) -> None:
    await slack.command("start broken", user=ALICE)
    run = slack.engine.list_runs().runs[0]
    assert run.status is RunStatus.FAILED

    [(alert, message)] = await slack.fake.wait_for(lambda: alerts(slack))
    text = all_text(message)
    for expected in (
        "Run failed: Broken template",
        f"`{run.run_id}`",
        "`TEMPLATE_ERROR`",
        "A step's template referred to something that does not exist.",
        "*Failed step*\n`build`",
        "*Retryable*\nno",
        "nope",
    ):
        assert expected in text, expected
    assert slack.fake.message_with(ids.RUN_REPLAY, run.run_id) == alert

    details_url = await slack.click(ids.RUN_DETAILS, run.run_id, user=BOB, message=alert)
    modal = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open")))[0].args["view"]
    assert modal["title"]["text"] == f"Run {run.short_id}"
    timeline = all_text({"view": modal})
    assert "🔴 `build` action *failed*\n`TEMPLATE_ERROR`" in timeline
    assert "⏭️ `deploy` action *skipped (blocked)*\nblocked: step 'build' failed" in timeline
    assert slack.responses_to(details_url) == []

    replay_url = await slack.click(ids.RUN_REPLAY, run.run_id, user=BOB, message=alert)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(replay_url)))[0]
    replay_id = slack.engine.get_run(run.run_id).replays[0]
    assert f"Replaying as run `{replay_id[:8]}`" in reply["text"]
    assert slack.engine.get_run(replay_id).replay_of == run.run_id
    await slack.fake.wait_for(lambda: len(alerts(slack)) == 2)  # the replay fails the same way


async def test_a_drain_timeout_raises_an_alert(slack: Slack) -> None:
    await slack.command("start slow-build")
    run = slack.engine.list_runs().runs[0]
    step = run.steps["build"]
    # Stand in for the RQ worker picking the job up, so there is something to drain.
    assert slack.engine.step_started(run.run_id, "build", step.attempt, step.dispatch, "worker-1").proceed

    reply = await slack.command(f"stop {run.short_id} --graceful", user=BOB)
    assert "gracefully" in reply["text"]
    assert slack.engine.get_run(run.run_id).status is RunStatus.DRAINING
    slack.engine.fire_due_timers(now=slack.engine.clock() + timedelta(seconds=5))

    [(_alert, message)] = await slack.fake.wait_for(lambda: alerts(slack))
    text = all_text(message)
    assert "Drain timeout: Slow build" in text and "`DRAIN_TIMEOUT`" in text
    assert "did not finish within the drain timeout" in text
    stopped = slack.engine.get_run(run.run_id)
    assert stopped.failure is not None and stopped.failure.code is FailureCode.DRAIN_TIMEOUT
    assert stopped.steps["build"].status is StepStatus.CANCELLED
    replies = [c.args["text"] for c in slack.fake.ok_calls("chat.postMessage") if "thread_ts" in c.args]
    assert replies[0].startswith("🛑 Stopping gracefully")


async def test_app_home_is_the_command_center_refreshed_while_open(slack: Slack) -> None:
    await slack.event({"type": "app_home_opened", "user": BOB.id, "channel": "D0BOB", "tab": "home"})
    first = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.publish")))[0]
    assert first.args["user_id"] == BOB.id
    assert "*0 pending*" in all_text(first.args)

    await slack.command("start approve-deploy service=web", user=ALICE)
    run = slack.engine.list_runs().runs[0]

    def latest_home() -> str:
        calls = slack.fake.ok_calls("views.publish")
        return all_text(calls[-1].args) if calls else ""

    await slack.fake.wait_for(lambda: "*1 pending*" in latest_home())
    home = latest_home()
    assert "Awaiting approval* · 1 pending" in home and "Deploy web?" in home
    assert "Running now · 1 active" in home

    # A refused click in App Home comes back as a notice at the top of the home.
    await slack.click(ids.TASK_APPROVE, ids.task_value(run.run_id, "approve"), user=ALICE)
    await slack.fake.wait_for(lambda: "may not decide its tasks" in latest_home())

    await slack.click(ids.TASK_APPROVE, ids.task_value(run.run_id, "approve"), user=BOB)
    await slack.fake.wait_for(lambda: "*0 pending*" in latest_home())
    assert slack.engine.get_run(run.run_id).status is RunStatus.COMPLETED


async def test_home_row_actions_pause_and_stop(slack: Slack) -> None:
    await slack.command("start approve-deploy", user=ALICE)
    run = slack.engine.list_runs().runs[0]
    await slack.click(ids.RUN_PAUSE, run.run_id, user=BOB)
    await slack.fake.wait_for(lambda: slack.engine.get_run(run.run_id).status is RunStatus.PAUSED)
    await slack.click(ids.RUN_STOP_NOW, run.run_id, user=BOB)
    await slack.fake.wait_for(lambda: slack.engine.get_run(run.run_id).status is RunStatus.STOPPED)


async def test_run_buttons_on_a_message_do_and_say_what_their_labels_say(slack: Slack) -> None:
    """Pause, Resume and Stop gracefully, clicked on a message: the engine acts as the clicking
    user and the answer names the run (every button goes through one listener's table)."""
    await slack.command("start approve-deploy", user=ALICE)
    run = slack.engine.list_runs().runs[0]
    on_message = ("C0OPS", "1700000000.000100")

    async def click(action_id: str) -> str:
        url = await slack.click(action_id, run.run_id, user=BOB, message=on_message)
        return str((await slack.fake.wait_for(lambda: slack.responses_to(url)))[0]["text"])

    assert await click(ids.RUN_PAUSE) == f"Paused run `{run.short_id}`."
    assert slack.engine.get_run(run.run_id).status is RunStatus.PAUSED
    assert await click(ids.RUN_RESUME) == f"Resumed run `{run.short_id}`."
    assert slack.engine.get_run(run.run_id).status is RunStatus.RUNNING
    said = await click(ids.RUN_STOP_GRACEFUL)
    stopped = slack.engine.get_run(run.run_id)
    assert stopped.status in (RunStatus.DRAINING, RunStatus.STOPPED)
    state = "stopping gracefully" if stopped.status is RunStatus.DRAINING else "stopped"
    assert said == f"Run `{run.short_id}` is {state}."
    events = [e for e in slack.engine.events(run.run_id) if e.type in ("run_paused", "run_resumed")]
    assert [e.actor.id for e in events] == [BOB.id, BOB.id]


async def test_home_view_stays_within_block_kit_limits_on_large_inputs(slack: Slack) -> None:
    long = "x" * 5000
    for index in range(30):
        await slack.command(f"start approve-deploy service={long}{index}", user=ALICE)
    for run in slack.engine.list_runs(limit=10).runs:
        slack.engine.pause(run.run_id, slack_actor({"id": BOB.id, "username": BOB.name}))
    center = slack.engine.command_center()
    assert len(center.awaiting_approval) == 25
    now = datetime.now(UTC)
    question = Question(text=long, to="#ops", asked_at=now, expires_at=now + timedelta(hours=1))
    big = CommandCenter(
        awaiting_approval=center.awaiting_approval * 40,
        awaiting_answer=[OpenQuestion(center.running_now[0], "region", question)] * 25,
        stopping_gracefully=center.running_now * 10,
        running_now=center.running_now * 10,
        failed_recently=center.running_now * 10,
        counts={"pending": 1000, "questions": 300, "draining": 250, "running": 250, "failed": 250},
    )
    view = home_view(big, long)

    assert block_errors(view["blocks"], VIEW_BLOCKS) == []
    text = all_text({"view": view})
    assert "… and 992 more pending" in text and "… and 240 more" in text
    assert "Waiting for an answer · 300 open*" in text and "… and 295 more" in text
    assert "blocks not shown" not in text  # every section fits whole, the failed runs last
    assert "*1000 pending* · *250 draining*" in text
    # and Slack accepts it
    await slack.bot.outbox.put(
        "home:U0BIG", Outbound(method="views.publish", args={"user_id": "U0BIG", "view": view})
    )
    await slack.fake.wait_for(
        lambda: [c for c in slack.fake.ok_calls("views.publish") if c.args["user_id"] == "U0BIG"]
    )


def test_an_empty_command_center_says_so() -> None:
    view = home_view(CommandCenter(counts={}))
    text = all_text({"view": view})
    assert "No task is waiting for a decision." in text and "No run is active." in text
    assert "No question is waiting for an answer." in text
    assert not any(has_buttons({"blocks": [b]}) for b in view["blocks"])


def test_an_approval_card_with_a_huge_payload_stays_within_limits() -> None:
    now = datetime.now(UTC)
    task = Task(
        task_id="approve",
        task_type="approval",
        title="T" * 500,
        description="D" * 10_000,
        fields={f"field{i}": "v" * 5000 for i in range(40)},
        editable=[f"field{i}" for i in range(40)],
        opened_at=now,
        expires_at=now + timedelta(hours=1),
    )
    run = Run(
        run_id="0123456789abcdef",
        workflow_id="big",
        workflow_name="N" * 300,
        workflow_version=1,
        workflow_digest="d",
        started_by=slack_actor({"id": ALICE.id}),
        created_at=now,
        updated_at=now,
        steps={"approve": StepState(step_id="approve", type=StepType.HUMAN_TASK, task=task)},
    )
    for message in (cards.approval_card(run, task), cards.decided_card(run, task)):
        assert block_errors(message["blocks"], MESSAGE_BLOCKS) == []
        assert "… 30 more fields" in all_text(message)
    modal = cards.edit_modal(run, task, cards.origin_metadata(run.run_id, "approve", "C1"))
    assert block_errors(modal["blocks"], VIEW_BLOCKS) == []
