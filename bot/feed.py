"""Follow the engine's global event feed and turn run events into Slack messages.

The feed is a Redis stream; reading it through a consumer group lets several web
processes share the work. But two events of one run may then be handled by two
processes in either order, and a card update would overtake the card it updates.
So a feed entry only says "this run has news": whoever handles it reads the run's own
event stream from the run's cursor, in order, appends those events' messages to the
outbox and moves the cursor, in one MULTI that WATCHes the cursor. Processes racing
on a run cannot both commit; the loser reads again from the winner's cursor. Messages
therefore reach the outbox in the order the run's events happened, exactly once, and a
crash in between loses nothing. Entries a dead process had read but not acknowledged
are claimed by the others after a while (XAUTOCLAIM).

A run's cursor is the bot's only key per run without an expiry of its own (its outbox
list empties as it is sent, its refs expire). When the run finishes, the cursor is given
one: the engine's retention for the run plus a day, so it outlives the run (a cursor gone
while the run is still there would retell the run's history on its next event, a replay
link) and then goes; later writes keep that expiry (KEEPTTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from bot import cards
from bot.home import home_view
from bot.outbox import Outbound
from bot.runtime import Bot
from engine.errors import NotFound
from engine.model import Event, EventType, FailureCode, Run, StepType
from engine.queries import FeedEntry
from engine.redis_idioms import text, texts

log = logging.getLogger(__name__)

READ_COUNT = 100
BLOCK_MS = 250
CLAIM_IDLE_MS = 60_000
CLAIM_EVERY_SECONDS = 30.0
HOME_REFRESH_SECONDS = 1.0
CURSOR_GRACE_SECONDS = 86400  # how much longer than its run a finished run's cursor is kept
PROGRESS_EVENTS = frozenset(
    {
        EventType.RUN_PAUSED,
        EventType.RUN_RESUMED,
        EventType.RUN_RECOVERED,
        EventType.RUN_DRAINING,
        EventType.RUN_COMPLETED,
        EventType.RUN_FAILED,
        EventType.RUN_STOPPED,
    }
)
TOLD_EVENTS = PROGRESS_EVENTS | {
    EventType.RUN_STARTED,
    EventType.TASK_OPENED,
    EventType.TASK_APPROVAL_RECORDED,
    EventType.TASK_CHANGES_REQUESTED,
    EventType.TASK_REMINDED,
    EventType.TASK_ESCALATED,
    EventType.QUESTION_ASKED,
    EventType.QUESTION_ANSWERED,
    EventType.TASK_COMPLETED,
    EventType.TASK_EXPIRED,
    EventType.STEP_CANCELLED,
    EventType.NOTIFICATION,
}
THREAD = "thread"


def run_key(run_id: str) -> str:
    """The outbox ordering key of a run: its messages reach Slack in the order they happened."""
    return f"run:{run_id}"


def card_ref(task_id: str) -> str:
    return f"card:{task_id}"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class FeedFollower:
    def __init__(self, bot: Bot, consumer: str | None = None) -> None:
        self.bot = bot
        self.feed = bot.engine.live_queries(bot.redis)  # the global feed and each run's events
        self.group = bot.settings.consumer_group
        self.consumer = consumer or consumer_name()
        self._stopping = False

    def stop(self) -> None:
        """Finish the current read and return from :meth:`run`."""
        self._stopping = True

    async def ensure_group(self) -> None:
        """Create the consumer group at the feed's end: a new bot starts with what happens next.

        Where the feed ended is kept too: a run without a cursor is read from there, so
        the runs already under way when the bot first started do not replay their past.
        """
        last = await self.bot.call(self.bot.engine.queries.follow_feed, self.group)
        await self.bot.redis.set(self.bot.keys.feed_since, last, nx=True)

    async def run(self) -> None:
        await self.ensure_group()
        last_claim = 0.0
        while not self._stopping:
            try:
                if time.monotonic() - last_claim > CLAIM_EVERY_SECONDS:
                    last_claim = time.monotonic()
                    await self._claim_abandoned()
                for entry in await self.feed.read_feed(self.group, self.consumer, READ_COUNT, BLOCK_MS):
                    await self.handle(entry)
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("feed cannot reach redis", extra={"error": str(exc)})
                await asyncio.sleep(1)
            except aioredis.ResponseError as exc:
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                await self.ensure_group()  # the stream was deleted under us (e.g. a test's cleanup)

    async def _claim_abandoned(self) -> None:
        for entry in await self.feed.claim_feed(self.group, self.consumer, CLAIM_IDLE_MS, READ_COUNT):
            await self.handle(entry)

    async def handle(self, entry: FeedEntry) -> None:
        try:
            event = entry.event()
        except Exception:
            log.exception("feed entry not understood", extra={"entry": entry.entry_id})
            await self.feed.ack_feed(self.group, entry.entry_id)
            return
        # News for App Home: a run's status, its tasks and questions, or a task cancelled with its run.
        news = event.type.startswith(("run_", "task_", "question_"))
        dirty = news or event.type is EventType.STEP_CANCELLED
        try:
            while not await self._catch_up(event.run_id, entry.entry_id, dirty):
                pass
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            raise  # left pending: handled again once Redis is back
        except Exception:
            # A bug must not wedge the feed: log it and move on (the run's next event tries again).
            log.exception("feed entry not handled", extra={"entry": entry.entry_id})
            await self.feed.ack_feed(self.group, entry.entry_id)
            return
        self.bot.outbox.wake()

    async def _catch_up(self, run_id: str, entry_id: str, dirty: bool) -> bool:
        """Turn the run's next events into messages; True once the run is caught up and the entry acked."""
        cursor = self.bot.keys.feed_cursor(run_id)
        async with self.bot.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(cursor)
            after: Any = await pipe.get(cursor) or await pipe.get(self.bot.keys.feed_since) or "0-0"
            events = await self.feed.run_events(run_id, text(after), count=READ_COUNT)
            messages = await self.messages_for(run_id, events)
            ended = any(event.type.ends_run for event in events)
            lifetime = await self.cursor_lifetime(run_id) if ended else None
            caught_up = len(events) < READ_COUNT
            pipe.multi()
            if events:
                pipe.set(cursor, events[-1].id or "", keepttl=True)
            if lifetime is not None:
                pipe.expire(cursor, lifetime)
            self.bot.outbox.add_to(pipe, run_key(run_id), messages)
            if caught_up:
                if dirty:
                    pipe.set(self.bot.keys.home_dirty, 1)
                self.feed.ack_feed_in(pipe, self.group, entry_id)
            try:
                await pipe.execute()
            except WatchError:
                return False  # another process moved the cursor: read on from where it got
        return caught_up

    async def cursor_lifetime(self, run_id: str) -> int:
        """Seconds a finished run's cursor is kept: as long as the engine keeps the run, and a day."""
        try:
            run = await self.bot.call(self.bot.engine.get_run, run_id)
        except NotFound:
            return CURSOR_GRACE_SECONDS  # already gone: nothing can follow it
        return int(self.bot.engine.retention_of(run.workflow_id) + CURSOR_GRACE_SECONDS)

    async def messages_for(self, run_id: str, events: list[Event]) -> list[Outbound]:
        """The Slack messages a run's events call for (none for most step events), in their order."""
        if not TOLD_EVENTS.intersection(event.type for event in events):
            return []
        try:
            run: Run | None = await self.bot.call(self.bot.engine.get_run, run_id)
        except NotFound:
            run = None
        messages: list[Outbound] = []
        for event in events:
            try:
                messages += self._messages_for_event(event, run)
            except Exception:
                # A bug must not wedge the run: log it and move on.
                log.exception("feed event not handled", extra={"run": run_id, "event": event.id})
        return messages

    def _messages_for_event(self, event: Event, run: Run | None) -> list[Outbound]:
        channel = self.bot.channel_for(run) if run is not None else None
        if event.type is EventType.NOTIFICATION:
            channel = event.data.get("channel") or channel
            text = str(event.data.get("text") or "")
            if not channel or not text:
                return []
            notice = cards.notification(text)
            return [Outbound(method="chat.postMessage", args={"channel": channel, **notice})]
        if event.type not in TOLD_EVENTS or run is None or channel is None:
            return []
        return messages_for_run(event, run, channel)


def messages_for_run(event: Event, run: Run, channel: str) -> list[Outbound]:
    """Cards, alerts and progress replies for one event of ``run`` (pure, so it is easy to test)."""
    post = "chat.postMessage"
    step = run.steps.get(event.step_id) if event.step_id else None
    task = step.task if step else None
    match event.type:
        case EventType.RUN_STARTED:
            header = cards.run_header(run)
            return [Outbound(method=post, args={"channel": channel, **header}, remember=THREAD)]
        case EventType.TASK_OPENED if task is not None:
            open_ = task.decided_at is None
            card = cards.approval_card(run, task) if open_ else cards.decided_card(run, task)
            return [Outbound(method=post, args={"channel": channel, **card}, remember=card_ref(task.task_id))]
        case EventType.TASK_APPROVAL_RECORDED if task is not None and task.decided_at is None:
            return [_card_update(channel, cards.approval_card(run, task), task.task_id)]
        case EventType.TASK_CHANGES_REQUESTED if step is not None:
            closed = [c.task for c in step.changes if c.round == event.data.get("round")]
            return [_card_update(channel, cards.decided_card(run, closed[0]), step.step_id)] if closed else []
        case EventType.TASK_REMINDED | EventType.TASK_ESCALATED if task and task.decided_at is None:
            escalated = event.type is EventType.TASK_ESCALATED
            dm = cards.reminder(run, task, escalated)
            users = [ref.partition(":")[2] for ref in event.data.get("to", []) if ref.startswith("slack:")]
            sent = [Outbound(method=post, args={"channel": user, **dm}) for user in users]
            if escalated:
                sent.insert(0, _card_update(channel, cards.approval_card(run, task), task.task_id))
            return sent
        case EventType.QUESTION_ASKED if step is not None and step.question is not None:
            to = step.question.to
            where = to.partition(":")[2] if to.startswith("slack:") else to
            asked = cards.question_message(run, step)
            index = f"{run.run_id}:{step.step_id}"
            ref = card_ref(step.step_id)
            return [Outbound(method=post, args={"channel": where, **asked}, remember=ref, index=index)]
        case EventType.QUESTION_ANSWERED | EventType.TASK_EXPIRED if step is not None and step.question:
            return [_card_update(channel, cards.question_message(run, step), step.step_id)]
        case EventType.TASK_COMPLETED | EventType.TASK_EXPIRED if task is not None:
            card = cards.decided_card(run, task)
            return [_card_update(channel, card, task.task_id)]
        case EventType.STEP_CANCELLED if step is not None and step.type is StepType.HUMAN_TASK and task:
            reason = step.error.message if step.error else "the run ended"
            return [_card_update(channel, cards.decided_card(run, task, cancelled=reason), task.task_id)]
    messages: list[Outbound] = []
    line = cards.progress_line(event, run)
    if line is not None:
        messages.append(Outbound(method=post, args={"channel": channel, "text": line}, thread=THREAD))
    drain_timeout = run.failure is not None and run.failure.code is FailureCode.DRAIN_TIMEOUT
    if event.type is EventType.RUN_FAILED or (event.type is EventType.RUN_STOPPED and drain_timeout):
        messages.append(Outbound(method=post, args={"channel": channel, **cards.failure_alert(run)}))
    return messages


def _card_update(channel: str, card: dict[str, Any], task_id: str) -> Outbound:
    """Update the task's card in place (posted anew if its post is not known)."""
    return Outbound(method="chat.update", args={"channel": channel, **card}, update=card_ref(task_id))


class HomeRefresher:
    """Republishes App Home for users who opened it recently, at most once a second."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Return from :meth:`run` at once if it waits, else after the current refresh.

        A cancel alone is not enough: one that lands inside a Redis call can come back as
        a connection error, which the loop below takes for an outage and goes on.
        """
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HOME_REFRESH_SECONDS)
                return
            try:
                await self.refresh_if_dirty()
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("home refresh cannot reach redis", extra={"error": str(exc)})

    async def refresh_if_dirty(self) -> int:
        # GETDEL: of all the processes following the feed, one refreshes.
        if not await self.bot.redis.getdel(self.bot.keys.home_dirty):
            return 0
        viewers = await self.viewers()
        for user in viewers:
            await publish_home(self.bot, user)
        return len(viewers)

    async def viewers(self) -> list[str]:
        since = time.time() - self.bot.settings.home_active_seconds
        await self.bot.redis.zremrangebyscore(self.bot.keys.home_viewers, "-inf", since)
        users: list[Any] = await self.bot.redis.zrange(self.bot.keys.home_viewers, 0, -1)
        return texts(users)


async def publish_home(bot: Bot, user: str, notice: str | None = None) -> None:
    center = await bot.call(bot.engine.command_center)
    view = home_view(center, notice)
    await bot.outbox.put(
        f"home:{user}", Outbound(method="views.publish", args={"user_id": user, "view": view})
    )
