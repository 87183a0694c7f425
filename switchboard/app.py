"""The web process: the webhooks/REST app, with the Slack bot mounted when it is configured."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bot.settings import SlackSettings, get_slack_settings
from engine.api import Engine
from engine.factory import build_engine
from engine.settings import Settings
from webhooks.server import create_app

log = logging.getLogger(__name__)


def build_app(engine: Engine, slack: SlackSettings | None = None) -> web.Application:
    """The aiohttp app; Slack joins it over Socket Mode (SLACK_APP_TOKEN) or HTTP (/slack/events)."""
    app = create_app(engine)
    app.on_startup.append(settle_heap)
    slack = slack or get_slack_settings()
    if slack.app_token and slack.bot_token:
        app.cleanup_ctx.append(_socket_mode(engine, slack))
        log.info("slack bot connected by socket mode")
    elif slack.http_enabled:
        from bot.web import EVENTS_PATH, attach

        attach(app, engine, slack)
        log.info("slack bot mounted", extra={"path": EVENTS_PATH})
    else:
        log.info("slack bot off: set SLACK_BOT_TOKEN with SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN)")
    return app


async def settle_heap(_app: web.Application) -> None:
    """Take what starting made (modules, the app, the catalog, lasting as long as the process)
    out of the garbage collector's sight, so its full collections stop walking it.

    A full collection in a started web process took tens of milliseconds, and a wave of
    100 Slack requests that met one answered late: with this, bench/slack_ack.py's p99 fell
    from 88-92 ms to 47-74 ms (three runs each).
    """
    gc.collect()
    gc.freeze()


def _socket_mode(engine: Engine, slack: SlackSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    from bot.socket_mode import run_socket_mode

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run_socket_mode(engine, slack), name="slack-socket-mode")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return lifetime


def serve(settings: Settings, host: str, port: int, listening: Callable[[], None] | None = None) -> None:
    """Serve until stopped; ``listening`` is called once the port takes connections."""
    engine = build_engine(settings)

    def started(_message: str) -> None:  # aiohttp says it is running once its sites listen
        url = f"http://{host}:{port}"
        log.info("web listening", extra={"url": url, "workflows": len(engine.workflows())})
        if listening is not None:
            listening()

    web.run_app(build_app(engine), host=host, port=port, print=started)
