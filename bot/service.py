"""The background work of a Slack-connected process: outbox dispatch, the feed, App Home refresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bot.feed import BLOCK_MS, FeedFollower, HomeRefresher
from bot.runtime import Bot
from engine.background import start_task

log = logging.getLogger(__name__)

STOP_SECONDS = BLOCK_MS / 1000 + 2


@contextlib.asynccontextmanager
async def running(bot: Bot) -> AsyncIterator[None]:
    """Run the bot's background tasks for the duration of the block, then stop them and close."""
    await bot.open()
    follower = FeedFollower(bot)
    await follower.ensure_group()  # before serving: events from now on are all seen
    refresher = HomeRefresher(bot)
    tasks = [
        start_task(follower.run(), "slack feed"),
        start_task(bot.outbox.run(), "slack outbox"),
        start_task(refresher.run(), "slack home refresh"),
    ]
    try:
        yield
    finally:
        # Stop by asking, not by cancelling: a blocking XREADGROUP does not always give way
        # to cancellation, a send cancelled halfway keeps its key leased for a minute, and a
        # cancel that lands inside a Redis call can come back as a connection error, which a
        # retry loop takes for an outage and goes on.
        follower.stop()
        bot.outbox.stop()
        refresher.stop()
        await asyncio.wait(tasks, timeout=STOP_SECONDS)
        for task in tasks:
            task.cancel()  # what did not stop when asked
        _, stuck = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        if stuck:
            log.warning("slack background tasks did not stop", extra={"tasks": [t.get_name() for t in stuck]})
        await bot.close()
