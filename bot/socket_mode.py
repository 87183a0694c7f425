"""Socket Mode: the same bolt app over a websocket Slack opens, for hosts Slack cannot reach."""

from __future__ import annotations

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bot.app import build_app
from bot.runtime import build_bot
from bot.service import running
from bot.settings import SlackSettings, get_slack_settings
from engine.api import Engine


async def run_socket_mode(engine: Engine, settings: SlackSettings | None = None) -> None:
    """Connect with ``SLACK_APP_TOKEN`` and serve until cancelled, with the background tasks."""
    settings = settings or get_slack_settings()
    if not (settings.app_token and settings.bot_token):
        raise ValueError("Socket Mode needs SLACK_APP_TOKEN and SLACK_BOT_TOKEN.")
    bot = build_bot(engine, settings.model_copy(update={"signing_secret": None}))
    handler = AsyncSocketModeHandler(build_app(bot), settings.app_token)
    async with running(bot):
        try:
            await handler.start_async()
        finally:
            await handler.close_async()
