"""Socket Mode: the same app over the websocket Slack opens (the fake opens it here)."""

from __future__ import annotations

import asyncio
import contextlib

from bot import ids
from bot.socket_mode import run_socket_mode
from engine.api import Engine
from tests.fake_slack import ALICE, APP_TOKEN, TEAM, FakeSlack, slack_settings


async def test_a_command_over_socket_mode_is_acked_answered_and_its_card_posted(
    fake_slack: FakeSlack, slack_engine: Engine
) -> None:
    settings = slack_settings(fake_slack, SLACK_APP_TOKEN=APP_TOKEN)
    bot = asyncio.create_task(run_socket_mode(slack_engine, settings))
    try:
        await fake_slack.wait_for(lambda: fake_slack.sockets)
        response_url = fake_slack.response_url()
        command = {
            "team_id": TEAM,
            "channel_id": "C0OPS",
            "user_id": ALICE.id,
            "user_name": ALICE.name,
            "command": "/run",
            "text": "start approve-deploy service=search",
            "response_url": response_url,
            "trigger_id": "trigger-1",
            "api_app_id": "A0APP",
        }
        envelope_id = await fake_slack.send_envelope("slash_commands", command)

        await fake_slack.wait_for(
            lambda: [a for a in fake_slack.socket_acks if a.get("envelope_id") == envelope_id]
        )
        reply = await fake_slack.wait_for(
            lambda: [r for r in fake_slack.responses if r["_url"] == response_url]
        )
        assert "Started *Approve deploy* run" in reply[0]["text"]
        run = slack_engine.list_runs().runs[0]
        assert run.inputs == {"service": "search"}
        await fake_slack.wait_for(
            lambda: fake_slack.message_with(ids.TASK_APPROVE, ids.task_value(run.run_id, "approve"))
        )
    finally:
        bot.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bot
