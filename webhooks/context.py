"""What every handler shares: the engine, settings, sources, tokens and asyncio reads of Redis."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web

from engine.api import Engine
from engine.intake import Acceptor, Intake
from engine.queries import LiveQueries
from webhooks.auth import Tokens
from webhooks.metrics import DeliveryCounts
from webhooks.settings import WebSettings
from webhooks.sources import Source


@dataclass
class WebContext:
    engine: Engine
    settings: WebSettings
    sources: dict[str, Source]
    tokens: Tokens
    aredis: aioredis.Redis  # for what must not hold a thread: health, counters
    live: LiveQueries  # the engine's reads that wait without a thread: SSE, gauges, counters
    intake: Intake
    acceptor: Acceptor
    deliveries: DeliveryCounts

    def __post_init__(self) -> None:
        # Made once: every start answers with one.
        self._runs_url = f"{self.settings.public_url.rstrip('/')}/v1/runs/"

    def run_url(self, run_id: str) -> str:
        """Where a run is read (``status_url``, ``Location``): absolute under SWITCHBOARD_PUBLIC_URL."""
        return self._runs_url + run_id


CONTEXT = web.AppKey("switchboard_web", WebContext)


def context_of(request: web.Request) -> WebContext:
    return request.app[CONTEXT]
