"""Socket Mode: the same app over the websocket Slack opens (the fake opens it here)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import ids
from bot.socket_mode import run_socket_mode
from engine.api import Engine
from tests.fake_slack import (
    ALICE,
    APP_TOKEN,
    BOB,
    TEAM,
    FakeSlack,
    all_text,
    click_payload,
    slack_settings,
    submission_payload,
)


@pytest.fixture
async def connected(fake_slack: FakeSlack, slack_engine: Engine) -> AsyncIterator[FakeSlack]:
    """The bot connected over Socket Mode to the fake Slack."""
    settings = slack_settings(fake_slack, SLACK_APP_TOKEN=APP_TOKEN)
    bot = asyncio.create_task(run_socket_mode(slack_engine, settings))
    try:
        await fake_slack.wait_for(lambda: fake_slack.sockets)
        yield fake_slack
    finally:
        bot.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bot


async def send_acked(fake: FakeSlack, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Push an envelope and return the app's ack of it."""
    envelope_id = await fake.send_envelope(kind, payload)
    acks = await fake.wait_for(lambda: [a for a in fake.socket_acks if a.get("envelope_id") == envelope_id])
    ack: dict[str, Any] = acks[0]
    return ack


async def start_over_socket(fake: FakeSlack, engine: Engine, text: str) -> tuple[str, dict[str, Any]]:
    response_url = fake.response_url()
    command = {
        "team_id": TEAM,
        "channel_id": "C0OPS",
        "user_id": ALICE.id,
        "user_name": ALICE.name,
        "command": "/run",
        "text": text,
        "response_url": response_url,
        "trigger_id": "trigger-1",
        "api_app_id": "A0APP",
    }
    await send_acked(fake, "slash_commands", command)
    reply = await fake.wait_for(lambda: [r for r in fake.responses if r["_url"] == response_url])
    return engine.list_runs().runs[0].run_id, reply[0]


async def open_modal(fake: FakeSlack, action_id: str, value: str) -> tuple[tuple[str, str], dict[str, Any]]:
    """Bob clicks ``action_id`` on the task's card over the socket; the card and the modal it opened."""
    card = await fake.wait_for(lambda: fake.message_with(action_id, value))
    await send_acked(fake, "interactive", click_payload(fake, action_id, value, BOB, card))
    opened = await fake.wait_for(lambda: fake.ok_calls("views.open"))
    view: dict[str, Any] = opened[0].args["view"]
    return card, view


async def test_a_command_over_socket_mode_is_acked_answered_and_its_card_posted(
    connected: FakeSlack, slack_engine: Engine
) -> None:
    run_id, reply = await start_over_socket(connected, slack_engine, "start approve-deploy service=search")
    assert "Started *Approve deploy* run" in reply["text"]
    assert slack_engine.get_run(run_id).inputs == {"service": "search"}
    await connected.wait_for(
        lambda: connected.message_with(ids.TASK_APPROVE, ids.task_value(run_id, "approve"))
    )


async def test_reject_button_and_its_modal_over_socket_mode(
    connected: FakeSlack, slack_engine: Engine
) -> None:
    run_id, _ = await start_over_socket(connected, slack_engine, "start approve-deploy")
    card, view = await open_modal(connected, ids.TASK_REJECT, ids.task_value(run_id, "approve"))
    assert view["callback_id"] == ids.REJECT_MODAL

    reason = {ids.REASON_BLOCK: {ids.REASON_INPUT: "Freeze until Monday"}}
    await send_acked(connected, "interactive", submission_payload(view, reason, BOB))
    update = (await connected.wait_for(lambda: connected.updates_of(card)))[0]
    assert f"*Rejected* by <@{BOB.id}>" in all_text(update.args)
    task = slack_engine.get_run(run_id).steps["approve"].task
    assert task is not None and task.approved is False and task.comment == "Freeze until Monday"


async def test_a_modal_error_travels_back_in_the_socket_ack(
    connected: FakeSlack, slack_engine: Engine
) -> None:
    run_id, _ = await start_over_socket(connected, slack_engine, "start edit-typed")
    _, view = await open_modal(connected, ids.TASK_EDIT, ids.task_value(run_id, "review"))

    ack = await send_acked(
        connected, "interactive", submission_payload(view, {"field:count": {ids.FIELD_INPUT: "many"}}, BOB)
    )
    assert ack["payload"] == {
        "response_action": "errors",
        "errors": {"field:count": "Enter a whole number, like 3."},
    }
    task = slack_engine.get_run(run_id).steps["review"].task
    assert task is not None and task.decided_at is None
