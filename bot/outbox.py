"""A durable outbox for Slack Web API calls, ordered per run, in Redis.

Cards and alerts are facts about runs that must reach Slack even when Slack is
rate limiting us or down for minutes. So they are not sent inline: they are appended
to a Redis list per ordering key (``run:<id>``, ``home:<user>``), and dispatchers in
any web process take turns on keys. A key is claimed with a lease (the same pattern
as the engine's timers), its head message is sent, and only then popped; a 429
reschedules the key after Retry-After, a 5xx or a connection error after a backoff.
Because a key's messages go one at a time, an update waits for the post it updates:
``chat.update`` takes the ts that ``chat.postMessage`` returned, saved under a ref.

Delivery is at least once: a process that dies between sending and popping leaves
the message to be sent again when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.keys import SlackKeys
from bot.settings import SlackSettings
from engine.redis_idioms import CLAIM_DUE_SCRIPT, text

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
IDLE_POLL_SECONDS = 0.25
REFS_TTL_SECONDS = 30 * 86400
DEAD_LETTERS_KEPT = 1000
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

# Pop the message just handled (if it is still the head) and make the key due again
# when more wait behind it; atomic, so a message appended meanwhile is never stranded.
_DONE = """
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then redis.call('LPOP', KEYS[2]) end
if redis.call('LLEN', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""


class Outbound(BaseModel):
    """One Web API call waiting in the outbox."""

    method: str
    args: dict[str, Any] = Field(default_factory=dict)
    remember: str | None = None  # save the posted message's channel and ts under this ref
    index: str | None = None  # save this under the posted message's "channel:ts" (keys.threads)
    update: str | None = None  # chat.update the message saved under this ref (post it if missing)
    thread: str | None = None  # reply in the thread of this ref (become it if missing)
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    failing_since: float | None = None


class Retry(Exception):
    """Try the key again after ``delay`` seconds; a rate limit pauses the method for everyone."""

    def __init__(self, delay: float, why: str, rate_limited: bool = False) -> None:
        self.delay = delay
        self.rate_limited = rate_limited
        super().__init__(why)


class Outbox:
    def __init__(
        self,
        connection: aioredis.Redis,
        keys: SlackKeys,
        client: AsyncWebClient,
        settings: SlackSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = connection
        self.keys = keys
        self.client = client
        self.settings = settings
        self.clock = clock
        self._claim = connection.register_script(CLAIM_DUE_SCRIPT)  # the first due key, for a lease
        self._done = connection.register_script(_DONE)
        self._wake = asyncio.Event()
        self._stopping = False

    # -- producing -----------------------------------------------------------------------

    def add_to(self, pipe: aioredis.client.Pipeline, key: str, messages: list[Outbound]) -> None:
        """Queue the append in ``pipe``, so it commits together with the caller's other writes."""
        if not messages:
            return
        pipe.rpush(self.keys.outbox(key), *(m.model_dump_json() for m in messages))
        # NX: a key waiting out a Retry-After must not be tried earlier because more arrived.
        pipe.zadd(self.keys.outbox_due, {key: self.clock()}, nx=True)

    async def put(self, key: str, *messages: Outbound) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.add_to(pipe, key, list(messages))
            await pipe.execute()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the sends under way and return from :meth:`run` (a cancelled send keeps its lease)."""
        self._stopping = True
        self._wake.set()

    async def pending(self) -> int:
        """Ordering keys with messages still to send (for health checks and tests)."""
        return int(await self.redis.zcard(self.keys.outbox_due))

    # -- dispatching ---------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch forever with ``settings.outbox_workers`` concurrent workers."""
        workers = [asyncio.create_task(self._work()) for _ in range(self.settings.outbox_workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    async def _work(self) -> None:
        while not self._stopping:
            try:
                handled = await self.dispatch_one()
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("outbox cannot reach redis", extra={"error": str(exc)})
                await asyncio.sleep(1)
                continue
            if not handled and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)

    async def dispatch_one(self) -> bool:
        """Send the head message of one due key; False when nothing is due."""
        now = self.clock()
        claimed = await self._claim(keys=[self.keys.outbox_due], args=[now, now + LEASE_SECONDS, 1])
        if not claimed:
            return False
        key = text(claimed[0])
        try:
            await self._dispatch_head(key)
        except asyncio.CancelledError:
            # Shutting down: give the key back now rather than when its lease runs out
            # (the cancellation is delivered, so this await runs to the end).
            await self.redis.zadd(self.keys.outbox_due, {key: self.clock()})
            raise
        return True

    async def _dispatch_head(self, key: str) -> None:
        queue = self.keys.outbox(key)
        raw = await self.redis.lindex(queue, 0)
        if raw is None:
            await self._done(keys=[self.keys.outbox_due, queue], args=[key, "", self.clock()])
            return
        message = Outbound.model_validate_json(raw)
        try:
            paused = await self.redis.pttl(self.keys.method_paused(message.method))
            if paused > 0:
                raise Retry(paused / 1000, f"{message.method} is rate limited")
            await self._send(key, message)
        except Retry as retry:
            await self._reschedule(key, queue, raw, message, retry)
            return
        except SlackApiError as exc:
            log.error(
                "slack refused an outbox message",
                extra={"key": key, "method": message.method, "error": exc.response.get("error")},
            )
            await self._dead_letter(message, str(exc.response.get("error")))
        await self._done(keys=[self.keys.outbox_due, queue], args=[key, raw, self.clock()])

    async def _send(self, key: str, message: Outbound) -> None:
        method, args = message.method, dict(message.args)
        remember = message.remember
        if message.update:
            ref = await self._ref(key, message.update)
            if ref is None:
                method, remember = "chat.postMessage", message.update  # the post never made it: post now
            else:
                args.update(channel=ref["channel"], ts=ref["ts"])
        if message.thread:
            ref = await self._ref(key, message.thread)
            if ref is None:
                remember = message.thread  # nothing to reply under: this message starts the thread
            else:
                args.update(channel=ref["channel"], thread_ts=ref["ts"])
        try:
            response = await self.client.api_call(method, json=args)
        except SlackApiError as exc:
            retry = self._retry_for(exc, message)
            if retry is None:
                raise
            raise retry from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retry(self._backoff(message), f"cannot reach slack: {exc!r}") from exc
        if remember and response.get("ts"):
            ref_value = json.dumps(
                {"channel": response.get("channel") or args.get("channel"), "ts": response["ts"]}
            )
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.refs(key), remember, ref_value)
                pipe.expire(self.keys.refs(key), REFS_TTL_SECONDS)
                await pipe.execute()
        if message.index and response.get("ts"):
            where = f"{response.get('channel') or args.get('channel')}:{response['ts']}"
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.threads, where, message.index)
                pipe.expire(self.keys.threads, REFS_TTL_SECONDS)
                await pipe.execute()
        log.debug("slack call sent", extra={"key": key, "method": method})

    def _retry_for(self, exc: SlackApiError, message: Outbound) -> Retry | None:
        status = exc.response.status_code
        error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
        if status == 429:
            header = exc.response.headers.get("retry-after") or exc.response.headers.get("Retry-After")
            try:
                delay = float(header) if header is not None else 1.0
            except ValueError:
                delay = 1.0
            return Retry(max(delay, 0.0), "rate limited", rate_limited=True)
        if status >= 500 or error in RETRYABLE_ERRORS:
            return Retry(self._backoff(message), f"slack answered {status} {error}")
        return None

    def _backoff(self, message: Outbound) -> float:
        base = min(self.settings.outbox_max_backoff, 0.5 * 2 ** min(message.attempts, 16))
        return base * random.uniform(0.8, 1.2)

    async def _reschedule(
        self, key: str, queue: str, raw: bytes | str, message: Outbound, retry: Retry
    ) -> None:
        now = self.clock()
        message.attempts += 1
        message.failing_since = message.failing_since or now
        if now - message.failing_since > self.settings.outbox_give_up_seconds:
            log.error(
                "outbox message gave up", extra={"key": key, "method": message.method, "why": str(retry)}
            )
            await self._dead_letter(message, f"gave up: {retry}")
            await self._done(keys=[self.keys.outbox_due, queue], args=[key, raw, now])
            return
        log.warning(
            "slack call will be retried",
            extra={
                "key": key,
                "method": message.method,
                "in_seconds": round(retry.delay, 2),
                "why": str(retry),
            },
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            if retry.rate_limited:
                pipe.set(self.keys.method_paused(message.method), 1, px=max(int(retry.delay * 1000), 1))
            pipe.lset(queue, 0, message.model_dump_json())
            pipe.zadd(self.keys.outbox_due, {key: now + retry.delay})
            await pipe.execute()

    async def _dead_letter(self, message: Outbound, error: str) -> None:
        entry = json.dumps({"message": message.model_dump(mode="json"), "error": error, "at": self.clock()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.outbox_dead, entry)
            pipe.ltrim(self.keys.outbox_dead, 0, DEAD_LETTERS_KEPT - 1)
            await pipe.execute()

    async def _ref(self, key: str, name: str) -> dict[str, str] | None:
        raw = await self.redis.hget(self.keys.refs(key), name)
        return json.loads(raw) if raw else None

    async def ref(self, key: str, name: str) -> dict[str, str] | None:
        """Where a remembered message is (channel and ts), if it was posted."""
        return await self._ref(key, name)
