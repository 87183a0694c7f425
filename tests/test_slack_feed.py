"""The feed shared by several bot processes: a run's messages reach Slack in the order its events happened."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot import feed as bot_feed
from bot.feed import FeedFollower, HomeRefresher
from bot.runtime import Bot, build_bot
from engine.api import Engine
from engine.model import Actor, ActorKind, EventType
from engine.queries import FeedEntry
from tests.fake_slack import BOB, FakeSlack, slack_settings

ALICE_CLI = Actor(kind=ActorKind.CLI, id="alice", name="alice")
BOB_SLACK = Actor(kind=ActorKind.SLACK, id=BOB.id, name=BOB.name)


@pytest.fixture
async def two_bots(fake_slack: FakeSlack, slack_engine: Engine) -> AsyncIterator[list[Bot]]:
    """Two bot processes on the same Redis namespace, as two web processes would be."""
    bots = [build_bot(slack_engine, slack_settings(fake_slack)) for _ in range(2)]
    for bot in bots:
        await bot.open()
    yield bots
    for bot in bots:
        await bot.close()


async def read(follower: FeedFollower, count: int | None = None) -> list[FeedEntry]:
    """Deliver feed entries to ``follower``'s consumer, as its own read would."""
    return await follower.feed.read_feed(follower.group, follower.consumer, count)


def types(entries: list[FeedEntry]) -> list[str]:
    return [entry.event().type for entry in entries]


async def dispatch_all(bots: list[Bot], fake: FakeSlack) -> None:
    """Run every bot's outbox until nothing is left to send."""
    workers = [asyncio.create_task(bot.outbox.run()) for bot in bots]
    try:
        for _ in range(500):
            if await bots[0].outbox.pending() == 0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"outbox not drained; calls so far: {[c.method for c in fake.calls]}")
    finally:
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker


async def test_a_decision_handled_by_another_process_first_still_updates_the_one_card(
    two_bots: list[Bot], fake_slack: FakeSlack, slack_engine: Engine
) -> None:
    first, second = FeedFollower(two_bots[0], "web-1"), FeedFollower(two_bots[1], "web-2")
    await first.ensure_group()
    run = slack_engine.start("approve-deploy", {"service": "billing"}, ALICE_CLI)
    slack_engine.complete_task(run.run_id, "approve", BOB_SLACK, approved=True)

    # web-1 reads the entries up to task_opened; web-2 reads the rest, task_completed among
    # them, and handles them before web-1 gets to task_opened.
    feed = await first.feed.feed_events(after="0-0", count=10_000)
    opened = [event.type for event in feed].index(EventType.TASK_OPENED)
    early = await read(first, count=opened + 1)
    late = await read(second)
    assert types(early)[-1] == "task_opened" and "task_completed" in types(late)
    for entry in late:
        await second.handle(entry)
    for entry in early:
        await first.handle(entry)
    await dispatch_all(two_bots, fake_slack)

    cards = [c for c in fake_slack.ok_calls("chat.postMessage") if "Deploy billing?" in c.args["text"]]
    assert len(cards) == 1, [c.args["text"] for c in cards]
    ((channel, ts),) = [k for k, m in fake_slack.messages.items() if "Deploy billing?" in m["text"]]
    updates = fake_slack.ok_calls("chat.update")
    assert [(c.args["channel"], c.args["ts"]) for c in updates] == [(channel, ts)]
    assert "*Approved* by" in fake_slack.messages[(channel, ts)]["text"]
    posted = [c.args["text"] for c in fake_slack.ok_calls("chat.postMessage") if "thread_ts" not in c.args]
    assert posted[-1] == "Deployed billing."  # the run's messages in the order they happened
    assert await first.bot.redis.xpending(slack_engine.keys.events, first.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_a_run_under_way_before_the_bot_started_does_not_replay_its_past(
    two_bots: list[Bot], fake_slack: FakeSlack, slack_engine: Engine
) -> None:
    run = slack_engine.start("approve-deploy", {"service": "billing"}, ALICE_CLI)
    follower = FeedFollower(two_bots[0], "web-1")
    await follower.ensure_group()
    slack_engine.complete_task(run.run_id, "approve", BOB_SLACK, approved=True)
    for entry in await read(follower):
        await follower.handle(entry)
    await dispatch_all(two_bots, fake_slack)

    posted = [c.args["text"] for c in fake_slack.ok_calls("chat.postMessage") if "thread_ts" not in c.args]
    assert [text.split(":")[0] for text in posted] == ["Deploy billing?", "Deployed billing.", "✅ Completed"]
    assert "*Approved* by" in posted[0]  # the decision, posted as the card it could not update


async def test_the_home_refresher_stops_when_asked_even_if_a_cancel_comes_back_as_an_outage(
    two_bots: list[Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    refresher = HomeRefresher(two_bots[0])
    waiting = asyncio.create_task(refresher.run())
    await asyncio.sleep(0.05)
    refresher.stop()  # between refreshes: it returns at once, without a cancel
    await asyncio.wait_for(waiting, 1)
    assert not waiting.cancelled()

    refreshing = asyncio.Event()

    async def cancelled_as_an_outage() -> int:
        # What redis-py may do with a cancel that lands mid-command: raise a connection error.
        refreshing.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise aioredis.ConnectionError("Connection closed by server.") from None
        return 0

    monkeypatch.setattr(bot_feed, "HOME_REFRESH_SECONDS", 0.01)
    refresher = HomeRefresher(two_bots[0])
    monkeypatch.setattr(refresher, "refresh_if_dirty", cancelled_as_an_outage)
    busy = asyncio.create_task(refresher.run())
    await asyncio.wait_for(refreshing.wait(), 1)
    refresher.stop()
    busy.cancel()  # taken for an outage by the loop, which still ends: it was asked to
    await asyncio.wait_for(busy, 1)
