"""Events API deliveries act once: Slack's retries of an event (``X-Slack-Retry-Num``) get a 200 and do nothing.

Signed requests to the real bolt app; the visible effect is App Home being published
(``views.publish`` on the fake Slack) when a user opens it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from tests.fake_slack import BOB, Slack

OPENED = {"type": "app_home_opened", "user": BOB.id, "channel": "D0BOB", "tab": "home"}


async def settled(slack: Slack, timeout: float = 10.0) -> None:
    """Wait until the work the bot took on after its acks is done and its home messages are sent."""
    bot = slack.bot
    queue = bot.keys.outbox(f"home:{BOB.id}")
    deadline = asyncio.get_running_loop().time() + timeout
    while bot._pending or await bot.redis.llen(queue):
        assert asyncio.get_running_loop().time() < deadline, "the bot did not settle"
        await asyncio.sleep(0.02)


def publishes(slack: Slack) -> int:
    return len(slack.fake.ok_calls("views.publish"))


async def test_a_retried_event_gets_200_and_acts_no_more(slack: Slack) -> None:
    first = await slack.event(OPENED, event_id="Ev0FIRST")
    assert first.status == 200
    await slack.fake.wait_for(lambda: publishes(slack) == 1)

    for retry in (1, 2, 3):  # Slack's three retries, each signed, each with the same event_id
        response = await slack.event(OPENED, event_id="Ev0FIRST", retry=retry)
        assert response.status == 200
    await settled(slack)
    assert publishes(slack) == 1

    # Another event, even of the same kind for the same user, still acts.
    await slack.event(OPENED, event_id="Ev0SECOND")
    await slack.fake.wait_for(lambda: publishes(slack) == 2)
    await settled(slack)
    assert publishes(slack) == 2


async def test_an_event_that_failed_is_done_by_its_retry(
    slack: Slack, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = slack.bot
    hand_off = bot.after_ack
    failures: list[str] = []

    def fail_once(work: Coroutine[Any, Any, None], urgent: bool = False) -> None:
        if not failures:
            failures.append("first")
            work.close()
            raise RuntimeError("the bot could not take the work on")
        hand_off(work, urgent)

    monkeypatch.setattr(bot, "after_ack", fail_once)
    failed = await slack.post_event(OPENED, event_id="Ev0FAILED")
    assert failed.status == 500  # Slack retries it
    await settled(slack)
    assert publishes(slack) == 0

    retried = await slack.event(OPENED, event_id="Ev0FAILED", retry=1)
    assert retried.status == 200
    await slack.fake.wait_for(lambda: publishes(slack) == 1)
