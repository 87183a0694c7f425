"""What every handler shares: the engine, settings, sources, tokens and an async Redis."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from aiohttp import web

from engine.api import Engine
from webhooks.auth import Tokens
from webhooks.inbox import Inbox
from webhooks.metrics import DeliveryCounts, StepDurations
from webhooks.settings import WebSettings
from webhooks.sources import Source


@dataclass
class WebContext:
    engine: Engine
    settings: WebSettings
    sources: dict[str, Source]
    tokens: Tokens
    aredis: aioredis.Redis  # for what must not hold a thread: SSE, health, counters
    durations: StepDurations
    inbox: Inbox
    deliveries: DeliveryCounts

    def url(self, path: str) -> str:
        return f"{self.settings.public_url.rstrip('/')}{path}"


CONTEXT = web.AppKey("switchboard_web", WebContext)


def context_of(request: web.Request) -> WebContext:
    return request.app[CONTEXT]


def async_redis_like(client: redis.Redis) -> aioredis.Redis:
    """An asyncio client for the server ``client`` talks to (TCP, TLS or a Unix socket)."""
    kwargs = client.connection_pool.connection_kwargs
    common = {
        "db": kwargs.get("db", 0),
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
    }
    if "path" in kwargs:
        return aioredis.Redis(unix_socket_path=kwargs["path"], **common)
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    return aioredis.Redis(
        host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), ssl=tls, **common
    )
