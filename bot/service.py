"""The background work of a Slack-connected process: outbox dispatch, the feed, App Home refresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from bot.feed import BLOCK_MS, FeedFollower, HomeRefresher
from bot.runtime import Bot

log = logging.getLogger(__name__)

FEED_STOP_SECONDS = BLOCK_MS / 1000 + 1


@contextlib.asynccontextmanager
async def running(bot: Bot) -> AsyncIterator[None]:
    """Run the bot's background tasks for the duration of the block, then stop them and close."""
    follower = FeedFollower(bot)
    await follower.ensure_group()  # before serving: events from now on are all seen
    feed = _task(follower.run(), "slack feed")
    tasks = [
        feed,
        _task(bot.outbox.run(), "slack outbox"),
        _task(HomeRefresher(bot).run(), "slack home refresh"),
    ]
    try:
        yield
    finally:
        # A blocking XREADGROUP does not always give way to cancellation: let the feed
        # finish its read and stop by itself, then cancel what is left.
        follower.stop()
        await asyncio.wait([feed], timeout=FEED_STOP_SECONDS)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bot.close()


def _task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_report_crash)
    return task


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task died", extra={"task": task.get_name()}, exc_info=task.exception())
