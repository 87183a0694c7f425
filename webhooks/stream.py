"""``GET /v1/runs/{id}/stream``: a run's events, live, as Server-Sent Events.

The stream first replays the run's events (after ``Last-Event-ID`` when a client
reconnects), then follows the run's Redis stream with ``XREAD BLOCK`` on an asyncio
connection, so a waiting client holds no thread. It ends once the run is terminal.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from engine.model import Event
from webhooks.auth import Role
from webhooks.context import context_of
from webhooks.problems import Problem
from webhooks.routing import endpoint

BLOCK_MS = 15_000
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@endpoint(Role.VIEWER, media_type="text/event-stream")
async def stream_run(request: web.Request) -> web.StreamResponse:
    """Follow a run's events live (Server-Sent Events); the stream ends when the run is terminal.

    Each message has the event id, the event type as `event:` and the event as JSON
    `data:`. Reconnect with `Last-Event-ID` to continue where the stream broke off.
    """
    ctx = context_of(request)
    last = request.headers.get("Last-Event-ID") or request.query.get("after") or "0-0"
    if not _EVENT_ID.match(last):
        raise Problem(400, f"Last-Event-ID {last[:40]!r} is not an event id such as '1700000000000-0'.")
    run = await asyncio.to_thread(ctx.engine.get_run, request.match_info["run_id"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    ended = run.status.terminal
    try:
        while True:
            # Once the run is terminal, read what is left without blocking, then stop.
            events = await ctx.live.run_events(run.run_id, last, None if ended else BLOCK_MS, 200)
            if not events:
                if ended:
                    break
                await response.write(b": keep-alive\n\n")
                ended = (await asyncio.to_thread(ctx.engine.get_run, run.run_id)).status.terminal
                continue
            for event in events:
                last = event.id or last
                await response.write(_message(event))
                ended = ended or event.type.ends_run
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; nothing to tell it
    return response


def _message(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()
