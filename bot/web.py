"""HTTP mode: Slack's commands, interactivity and events on one URL of the aiohttp server.

Every request is checked here before bolt sees it, in the order Slack's own advice
gives: the body is read as bytes (:mod:`webhooks.inbound`: Content-Encoding, size), the
signature and timestamp are verified over those bytes (401 when they do not match, so
an unsigned request learns nothing more), and only then is the body decoded and parsed
(400 when it is not UTF-8, not a form or JSON object, or not of the shape bolt and the
listeners read: :mod:`bot.envelope`). bolt's own parser is not used: it raises on a
``payload`` that is not an object, on a non-numeric timestamp, on deep JSON, and it
treats any form body that merely *contains* the text "payload" as an interactivity
payload, so ``/run start payload-sync`` would be dropped as an unhandled request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from yarl import URL

from bot.app import build_app
from bot.envelope import check_envelope
from bot.feed import run_key
from bot.runtime import Bot, build_bot
from bot.service import running
from bot.settings import SlackSettings, get_slack_settings
from engine.api import Engine
from engine.model import Run
from engine.redis_idioms import text
from webhooks.inbound import (
    Malformed,
    check_charset,
    parse_json,
    quiet_malformed_http,
    read_body,
    utf8_text,
)
from webhooks.rest import add_evidence_source
from webhooks.routing import add_routes

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
SLACK_BOT = web.AppKey("slack_bot", Bot)
BODY_LIMIT = 1024 * 1024  # Slack's largest payloads (a modal's state) are far below this
TOLERANCE = 300  # seconds a request's timestamp may be off, as bolt and Slack's docs say


def attach(app: web.Application, engine: Engine, settings: SlackSettings | None = None) -> None:
    """Serve Slack on ``app`` at ``/slack/events`` and run the bot's background tasks with it."""
    settings = settings or get_slack_settings()
    if not settings.http_enabled:
        raise ValueError("Slack over HTTP needs SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET.")
    bot = build_bot(engine, settings)
    app[SLACK_BOT] = bot
    quiet_malformed_http()
    handler = events_handler(build_app(bot), settings.signing_secret or "")
    add_routes(app, [web.post(EVENTS_PATH, handler)])
    add_evidence_source(app, "slack_messages.json", lambda run: message_refs(bot, run))

    async def background(_app: web.Application) -> AsyncIterator[None]:
        async with running(bot):
            yield

    app.cleanup_ctx.append(background)


async def message_refs(bot: Bot, run: Run) -> dict[str, Any]:
    """Where the bot posted a run's messages (its first message, whose thread has the progress,
    and each task's card): the references of the run's evidence pack, which the engine does not know."""
    refs = await bot.redis.hgetall(bot.keys.refs(run_key(run.run_id)))
    posted = {text(name): json.loads(value) for name, value in refs.items()}
    return {"channel": run.notify_channel, "messages": posted}


def events_handler(bolt: AsyncApp, signing_secret: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:  # behind webhooks.routing.edge, which has refused headers that are not UTF-8 text
            raw = await read_body(request, BODY_LIMIT)
            if not signed_by(signing_secret, raw, request.headers, time.time()):
                return _refusal(401, "invalid request signature")
            check_charset(request)
            text = utf8_text(raw)
            body = parse_body(text, request.content_type)
        except Malformed as exc:
            log.warning("malformed slack request refused", extra={"status": exc.status, "detail": exc.detail})
            return _refusal(exc.status, f"malformed body: {exc.detail}")
        bolt_response = await bolt.async_dispatch(to_bolt_request(text, body, request))
        return await to_aiohttp_response(bolt_response)

    return handle


def signed_by(secret: str, raw: bytes, headers: Mapping[str, str], now: float) -> bool:
    """Slack's v0 signature: HMAC-SHA256 of ``v0:<timestamp>:<body>``, the timestamp within 5 minutes."""
    stamp = headers.get("X-Slack-Request-Timestamp", "")
    given = headers.get("X-Slack-Signature", "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12) or abs(now - int(stamp)) > TOLERANCE:
        return False
    mac = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v0={mac}".encode(), given.encode())


def parse_body(text: str, content_type: str) -> dict[str, Any]:
    """The request as bolt would read it (a form, its ``payload`` field, or JSON), checked to be usable."""
    if content_type == "application/json" or text.startswith("{"):
        body = parse_json(text)
    else:
        fields = form_fields(text)
        body = parse_json(fields["payload"]) if "payload" in fields else fields
    if not isinstance(body, dict):
        raise Malformed(400, f"the body is a JSON {type(body).__name__}, not an object", "malformed-body")
    try:
        check_envelope(body)
    except ValueError as exc:
        raise Malformed(400, str(exc), "malformed-body") from None
    return body


def form_fields(text: str) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body's fields, the last of a repeated name winning.

    What ``dict(urllib.parse.parse_qsl(text, keep_blank_values=True))`` gives, by yarl's
    unquoting in C: a click's payload is a whole JSON document percent-encoded, which
    urllib unquotes in Python at ~40 us a request, yarl at ~1 us.
    """
    return dict(URL.build(query_string=text, encoded=True).query.items())


def to_bolt_request(text: str, body: dict[str, Any], request: web.Request) -> AsyncBoltRequest:
    """A bolt request with the body parsed here (its signature verified before, by :func:`events_handler`).

    Built empty and then given the text and the body: given the text, bolt would parse
    it all over again (a second form and JSON parse on the ack's path) only to have it replaced.
    """
    bolt_request = AsyncBoltRequest(body="", query=request.query_string, headers=dict(request.headers))
    bolt_request.raw_body = text
    bolt_request.body = body
    bolt_request.context = build_async_context(AsyncBoltContext({}), body)
    return bolt_request


def _refusal(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)
