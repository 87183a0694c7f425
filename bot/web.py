"""HTTP mode: Slack's commands, interactivity and events on one URL of the aiohttp server.

bolt verifies each request's signature (a forged or stale one gets 401). Before bolt
sees the body, :func:`to_bolt_request` works around bolt's form parser: it treats any
form body that merely *contains* the text "payload" as an interactivity payload and
returns ``{}`` when there is no ``payload`` field, so ``/run start payload-sync``
(or a user or channel named so) would be dropped as an unhandled request (404).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.app import build_app
from bot.runtime import Bot, build_bot
from bot.service import running
from bot.settings import SlackSettings, get_slack_settings
from engine.api import Engine

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
SLACK_BOT = web.AppKey("slack_bot", Bot)


def attach(app: web.Application, engine: Engine, settings: SlackSettings | None = None) -> None:
    """Serve Slack on ``app`` at ``/slack/events`` and run the bot's background tasks with it."""
    settings = settings or get_slack_settings()
    if not settings.http_enabled:
        raise ValueError("Slack over HTTP needs SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET.")
    bot = build_bot(engine, settings)
    app[SLACK_BOT] = bot
    app.router.add_post(EVENTS_PATH, events_handler(build_app(bot), settings.signing_secret or ""))

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with running(bot):
            yield

    app.cleanup_ctx.append(background)


def events_handler(bolt: AsyncApp, signing_secret: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    verifier = SignatureVerifier(signing_secret)

    async def handle(request: web.Request) -> web.Response:
        raw = await request.text()
        try:
            bolt_request = to_bolt_request(raw, request)
        except ValueError as exc:
            # bolt parses before it verifies; only a signed request deserves to hear why.
            if not verifier.is_valid_request(raw, dict(request.headers)):
                return web.json_response({"error": "invalid request signature"}, status=401)
            return web.json_response({"error": f"malformed body: {exc}"}, status=400)
        bolt_response = await bolt.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    return handle


def to_bolt_request(raw: str, request: web.Request) -> AsyncBoltRequest:
    bolt_request = AsyncBoltRequest(body=raw, query=request.query_string, headers=dict(request.headers))
    if _is_form(raw, bolt_request.content_type) and "payload" in raw:
        fields = dict(parse_qsl(raw, keep_blank_values=True))
        if "payload" not in fields:
            bolt_request.body = fields
            bolt_request.context = build_async_context(AsyncBoltContext({}), fields)
        elif not bolt_request.body:
            raise ValueError("the payload field is empty")
    return bolt_request


def _is_form(raw: str, content_type: str | None) -> bool:
    return content_type != "application/json" and not raw.startswith("{")
