"""The bolt app: one AsyncApp with the /run command, card and home interactions registered."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from slack_bolt.async_app import AsyncApp

from bot import commands, interactions
from bot.runtime import Bot

log = logging.getLogger(__name__)


def build_app(bot: Bot) -> AsyncApp:
    """A bolt app bound to ``bot``.

    bolt does not check Slack's signature again: over HTTP, :func:`bot.web.events_handler`
    verifies it over the raw body before bolt sees a request (a second check cost every
    request an HMAC and bolt's parsing of the headers); Socket Mode's requests are not signed.
    """
    app = AsyncApp(
        client=bot.client,
        signing_secret=bot.settings.signing_secret,
        # Listeners ack and hand their work to Bot.after_ack, so bolt can answer as soon
        # as they return, without polling for the ack.
        process_before_response=True,
        request_verification_enabled=False,
        logger=logging.getLogger("bot.bolt"),
    )
    commands.register(app, bot)
    interactions.register(app, bot)
    forget_failed_events(app, bot)
    return app


def forget_failed_events(app: AsyncApp, bot: Bot) -> None:
    """An event whose handling failed loses its "seen" mark, so Slack's retry does what it could not
    (the mark: :func:`bot.interactions.once_per_event`)."""

    @app.error
    async def failed(error: Exception, body: dict[str, Any]) -> None:
        event_id = interactions.event_id_of(body)
        log.error("slack request failed", exc_info=error, extra={"event_id": event_id})
        if event_id:
            with contextlib.suppress(aioredis.RedisError):
                await bot.redis.delete(bot.keys.event_seen(event_id))
