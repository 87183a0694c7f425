"""The web process as `switchboard web` builds it: REST, webhooks and Slack on one app."""

from __future__ import annotations

import gc
from typing import Any

from bot.settings import SlackSettings
from engine.api import Engine
from switchboard.app import build_app
from tests.fake_slack import FakeSlack, Slack, slack_settings


async def test_the_started_process_moves_its_heap_out_of_the_collectors_sight(
    slack_engine: Engine, aiohttp_client: Any
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    await aiohttp_client(build_app(slack_engine, SlackSettings(SLACK_BOT_TOKEN=None, SLACK_APP_TOKEN=None)))
    assert gc.get_freeze_count() > 0


async def test_slack_is_mounted_beside_the_rest_api(
    fake_slack: FakeSlack, slack_engine: Engine, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(build_app(slack_engine, slack_settings(fake_slack)))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/runs")).status == 401  # the REST API is there, and wants a token
    unsigned = await client.post("/slack/events", data="command=/run&text=help")
    assert unsigned.status == 401
    reply = await Slack(client, fake_slack, slack_engine).command("help")
    assert "/run start <workflow>" in reply["text"]


async def test_without_slack_settings_the_bot_is_off(slack_engine: Engine, aiohttp_client: Any) -> None:
    client = await aiohttp_client(
        build_app(slack_engine, SlackSettings(SLACK_BOT_TOKEN=None, SLACK_APP_TOKEN=None))
    )
    assert (await client.get("/healthz")).status == 200
    assert (await client.post("/slack/events", data="x")).status == 404
