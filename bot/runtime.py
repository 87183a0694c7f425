"""What every Slack listener and background task shares: the engine, Redis, the clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import aiohttp
import redis.asyncio as aioredis
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.keys import SlackKeys
from bot.outbox import Outbox
from bot.settings import SlackSettings
from engine.api import Engine
from engine.asyncio_bridge import EngineBridge
from engine.connection import async_client
from engine.model import Actor, ActorKind, Run

P = ParamSpec("P")
T = TypeVar("T")
WORK_SLOTS = 8
# How long a listener's work waits after its ack before it may start. Slack's requests come
# in bursts (a channel clicking, a flood of commands); work that starts at once takes the GIL
# and the CPU from the acks of the burst still arriving (bench/slack_ack.py: p99 80-93 ms
# -> 71-77 ms over three alternations). The answer it sends comes this much later.
ACKS_FIRST_SECONDS = 0.02
CLOSE_WAIT_SECONDS = 5.0
log = logging.getLogger(__name__)


@dataclass
class Bot:
    engine: Engine
    settings: SlackSettings
    redis: aioredis.Redis
    keys: SlackKeys
    client: AsyncWebClient  # for calls that cannot wait in the outbox (views.open needs a fresh trigger_id)
    outbox: Outbox
    http: aiohttp.ClientSession | None = None
    bridge: EngineBridge = field(init=False)
    work_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(WORK_SLOTS))
    _pending: set[asyncio.Task[None]] = field(default_factory=set)  # keeps running work referenced

    def __post_init__(self) -> None:
        # A few threads of the bot's own: every thread that wants the GIL delays the event
        # loop, and with it the acks Slack waits for.
        self.bridge = EngineBridge(ThreadPoolExecutor(self.settings.engine_threads, "slack-engine"))

    async def open(self) -> None:
        """One HTTP session for every Slack call: a session (and TLS setup) per call costs milliseconds."""
        self.http = aiohttp.ClientSession()
        self.client.session = self.http
        self.outbox.client.session = self.http

    async def respond(self, response_url: str, text: str) -> None:
        """An ephemeral answer on the response_url of a command or a click."""
        webhook = AsyncWebhookClient(response_url, session=self.http)
        await webhook.send(text=text, response_type="ephemeral", replace_original=False)

    def after_ack(self, work: Coroutine[Any, Any, None], urgent: bool = False) -> None:
        """Run a listener's work once its ack has gone back to Slack, in one of a few slots.

        Slack needs the ack within 3 s; the work can wait its turn. Starting it a moment
        later (``ACKS_FIRST_SECONDS``) and capping how much runs at once keep a burst of
        clicks from delaying each other's acks. ``urgent`` work (opening a modal: its
        trigger_id expires in 3 s) does not wait.
        """
        task = asyncio.create_task(work if urgent else self._in_slot(work))
        self._pending.add(task)
        task.add_done_callback(self._finished)

    async def _in_slot(self, work: Coroutine[Any, Any, None]) -> None:
        await asyncio.sleep(ACKS_FIRST_SECONDS)
        async with self.work_slots:
            await work

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("work after an ack failed", exc_info=task.exception())

    async def call(self, method: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a (synchronous, redis-py) engine method without blocking the event loop, types kept."""
        return await self.bridge.call(method, *args, **kwargs)

    def channel_for(self, run: Run) -> str | None:
        return run.notify_channel or self.settings.default_channel

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=CLOSE_WAIT_SECONDS)  # let answers under way finish
        if self.http is not None:
            await self.http.close()
        await self.redis.aclose()
        self.bridge.close()


def slack_actor(user: dict[str, Any] | None, user_id: str | None = None, name: str | None = None) -> Actor:
    """The engine's actor for a Slack user, from a payload's ``user`` object or a command's fields."""
    user = user or {}
    uid = user.get("id") or user_id or "unknown"
    return Actor(kind=ActorKind.SLACK, id=uid, name=user.get("username") or user.get("name") or name)


def build_bot(engine: Engine, settings: SlackSettings) -> Bot:
    connection = async_client(engine.redis)
    keys = SlackKeys(engine.keys.prefix)
    # The outbox does its own retrying; the interactive client retries a dropped connection once.
    outbox_client = AsyncWebClient(token=settings.bot_token, base_url=settings.api_url, retry_handlers=[])
    client = AsyncWebClient(token=settings.bot_token, base_url=settings.api_url)
    return Bot(
        engine=engine,
        settings=settings,
        redis=connection,
        keys=keys,
        client=client,
        outbox=Outbox(connection, keys, outbox_client, settings),
    )
