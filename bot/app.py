"""The bolt app: one AsyncApp with the /run command, card and home interactions registered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse

from bot import commands, interactions
from bot.runtime import Bot

log = logging.getLogger(__name__)

# Slack retries an Events API delivery it thinks was missed three times, the last about
# five minutes after the first; an hour covers them all.
EVENT_SEEN_TTL_SECONDS = 3600


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
    once_per_event(app, bot)
    commands.register(app, bot)
    interactions.register(app, bot)
    return app


def once_per_event(app: AsyncApp, bot: Bot) -> None:
    """Each Events API event acts once, however often Slack delivers it.

    Slack retries an event it thinks was missed (``X-Slack-Retry-Num``: no 200 within
    three seconds, or an error) with the same ``event_id``. The first delivery marks the
    id in Redis (after bolt has checked the signature); a retry finds the mark and gets
    its 200 without acting, so Slack stops retrying. A delivery that fails lets the mark
    go, so the retry does what it could not.
    """

    @app.middleware
    async def skip_seen_events(
        body: dict[str, Any], next_: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        event_id = _event_id(body)
        if event_id and not await bot.redis.set(
            bot.keys.event_seen(event_id), 1, nx=True, ex=EVENT_SEEN_TTL_SECONDS
        ):
            log.info("slack event seen before", extra={"event_id": event_id})
            return BoltResponse(status=200, body="")
        await next_()
        return None

    @app.error
    async def failed(error: Exception, body: dict[str, Any]) -> None:
        log.error("slack request failed", exc_info=error, extra={"event_id": _event_id(body)})
        event_id = _event_id(body)
        if event_id:
            with contextlib.suppress(aioredis.RedisError):
                await bot.redis.delete(bot.keys.event_seen(event_id))


def _event_id(body: dict[str, Any]) -> str | None:
    if body.get("type") != "event_callback":
        return None
    return str(body.get("event_id") or "") or None
