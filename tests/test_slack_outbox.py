"""The outbox: retried on 429 (after Retry-After) and 5xx, ordered per run, kept across restarts."""

from __future__ import annotations

import asyncio
import contextlib

from bot.outbox import Outbound, Outbox
from engine.connection import async_client
from tests.fake_slack import Slack, slack_settings


def post(text: str, remember: str | None = None) -> Outbound:
    return Outbound(method="chat.postMessage", args={"channel": "#ops", "text": text}, remember=remember)


def update(text: str, ref: str) -> Outbound:
    return Outbound(method="chat.update", args={"channel": "#ops", "text": text}, update=ref)


async def test_a_429_is_retried_after_retry_after_and_the_update_waits_for_its_post(slack: Slack) -> None:
    fake = slack.fake
    fake.fail("chat.postMessage", 429, times=1, retry_after=1)
    outbox = slack.bot.outbox
    await outbox.put("run:r1", post("card", remember="card:approve"), update("decided", "card:approve"))

    updated = (await fake.wait_for(lambda: fake.ok_calls("chat.update")))[0]
    limited, posted = [c for c in fake.calls if c.method == "chat.postMessage"]
    assert (limited.status, limited.error) == (429, "ratelimited")
    assert posted.ok and posted.at - limited.at >= 1.0  # honoured Retry-After: 1
    ((channel, ts),) = [key for key, m in fake.messages.items() if m["text"] == "decided"]
    assert updated.args["ts"] == ts and updated.args["channel"] == channel and channel.startswith("C")
    assert updated.at > posted.at
    assert await outbox.ref("run:r1", "card:approve") == {"channel": channel, "ts": ts}


async def test_messages_of_a_run_keep_their_order_through_server_errors(slack: Slack) -> None:
    fake = slack.fake
    fake.fail("chat.postMessage", 500, times=3)
    texts = [f"step {n}" for n in range(6)]
    await slack.bot.outbox.put("run:r2", *(post(t) for t in texts))
    await fake.wait_for(lambda: len(fake.ok_calls("chat.postMessage")) == 6)
    assert [c.args["text"] for c in fake.ok_calls("chat.postMessage")] == texts
    assert len([c for c in fake.calls if c.status == 500]) == 3


async def test_nothing_is_lost_while_slack_is_down_and_the_process_restarts(slack: Slack) -> None:
    fake = slack.fake
    fake.fail("chat.postMessage", 503, times=10_000)  # Slack is down
    first = slack.bot.outbox
    await first.put("run:r3", post("one"), post("two"))
    await fake.wait_for(lambda: len([c for c in fake.calls if c.status == 503]) >= 3)

    # This process goes away; another one starts with its own outbox on the same Redis.
    await slack.client.close()
    fake.failures.clear()  # Slack is back
    assert await first.pending() == 1
    connection = async_client(slack.engine.redis)
    second = Outbox(connection, first.keys, first.client, slack_settings(fake))
    worker = asyncio.create_task(second.run())
    try:
        await fake.wait_for(lambda: len(fake.ok_calls("chat.postMessage")) == 2, timeout=15)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await connection.aclose()
    assert [c.args["text"] for c in fake.ok_calls("chat.postMessage")] == ["one", "two"]


async def test_a_message_slack_refuses_is_dead_lettered_and_the_next_one_still_goes(slack: Slack) -> None:
    fake = slack.fake
    too_many = [{"type": "divider"}] * 51
    refused = Outbound(method="chat.postMessage", args={"channel": "#ops", "text": "x", "blocks": too_many})
    await slack.bot.outbox.put("run:r4", refused, post("after"))
    await fake.wait_for(lambda: fake.ok_calls("chat.postMessage"))
    assert [c.error for c in fake.calls if c.method == "chat.postMessage"] == ["invalid_blocks", None]
    dead = await slack.bot.redis.lrange(slack.bot.keys.outbox_dead, 0, -1)
    assert len(dead) == 1 and b"invalid_blocks" in dead[0]


async def test_an_update_whose_post_never_happened_is_posted(slack: Slack) -> None:
    await slack.bot.outbox.put("run:r5", update("late card", "card:never"))
    posted = (await slack.fake.wait_for(lambda: slack.fake.ok_calls("chat.postMessage")))[0]
    assert posted.args["text"] == "late card"
    assert await slack.bot.outbox.ref("run:r5", "card:never") is not None
