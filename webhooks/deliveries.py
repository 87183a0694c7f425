"""``POST /webhooks/{source}``: verify a signed delivery, then start a run or deliver an event.

The order matters: the source is looked up, the body read up to its limit, the
signature verified over the raw bytes, and only then is the body parsed, filtered,
mapped and its inputs validated. A valid start is accepted into the engine's intake
(:mod:`engine.intake`) and answered 202 with the run id at once; a worker starts the
run a moment later. A delivery id seen before starts nothing and is answered with the
original run id. Event deliveries are handed to the engine within the request, and
their id is remembered only once the event has reached the waiting runs
(:meth:`~engine.api.Engine.deliver_event_once`): a delivery answered 503 is delivered
by its retry, and two deliveries of one id at once take effect once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from engine.api import EventDelivery
from engine.errors import DeliveryInProgress
from engine.intake import Acceptance, StartRequest
from engine.templating import Fields, FieldsError, RenderError, truthy
from engine.workflow import InputError, validate_inputs
from webhooks.context import WebContext, context_of
from webhooks.inbound import Malformed, parse_json, read_body
from webhooks.metrics import UNKNOWN_SOURCE
from webhooks.problems import RETRY_AFTER_SECONDS, Problem, invalid_fields
from webhooks.routing import endpoint
from webhooks.signatures import Scheme, SignatureError, StaleTimestamp
from webhooks.sources import Source

log = logging.getLogger(__name__)


@endpoint(None, status=202, tag="webhooks")
async def receive_delivery(request: web.Request) -> web.StreamResponse:
    """Receive a signed webhook delivery.

    Starts the source's workflow, or delivers its event to waiting runs. Signed with the
    source's scheme (Standard Webhooks, GitHub or Stripe); no bearer token.
    """
    ctx = context_of(request)
    name = request.match_info["source"]
    source = ctx.sources.get(name)
    outcome = "error"
    try:
        if source is None:
            outcome = "unknown_source"
            raise Problem(404, f"No webhook source {name!r}.", "unknown-source")
        response, outcome = await _handle(ctx, source, request)
        return response
    except (Problem, Malformed) as problem:
        if outcome == "error":
            outcome = problem.slug.replace("-", "_")
        raise
    finally:
        ctx.deliveries.count(source.name if source else UNKNOWN_SOURCE, outcome)


async def _handle(ctx: WebContext, source: Source, request: web.Request) -> tuple[web.Response, str]:
    body = await read_body(request, source.body_limit)
    received_at = ctx.engine.clock()
    try:
        delivery_id = source.verifier.verify(
            request.headers, body, received_at.timestamp(), ctx.settings.timestamp_tolerance
        )
    except StaleTimestamp as exc:
        raise _unauthorized(str(exc), "stale-timestamp") from None
    except SignatureError as exc:
        raise _unauthorized(str(exc), "bad-signature") from None
    payload = parse_json(body)
    if delivery_id is None and source.spec.scheme is Scheme.STRIPE and isinstance(payload, dict):
        delivery_id = str(payload.get("id") or "") or None
    context: dict[str, Any] = {"payload": payload, "source": source.name, "delivery_id": delivery_id}
    if "headers" in source.names_read:  # a copy of every header costs more than the rest of the context
        context["headers"] = {k.lower(): v for k, v in request.headers.items()}
    if source.spec.filter is not None:
        reason = _filtered_out(source.spec.filter, context)
        if reason:
            return web.json_response({"status": "ignored", "reason": reason}, status=200), "ignored"
    if source.spec.start is not None:
        # Awaited here, not in a coroutine of its own: each coroutine a delivery passes through
        # is stepped again when the answer comes.
        accepted = await ctx.acceptor.accept(_start_request(source, context, delivery_id, received_at))
        return _accepted(ctx, source, accepted)
    return await _deliver(ctx, source, context, delivery_id)


def _start_request(
    source: Source, context: dict[str, Any], delivery_id: str | None, received_at: datetime
) -> StartRequest:
    """The start a delivery asks for, its inputs mapped and checked (a 422 to its sender if bad)."""
    workflow = source.workflow
    assert workflow is not None  # resolved when the app was made (webhooks.server)
    inputs = _mapped(source.inputs, context)
    try:
        validate_inputs(workflow, inputs)  # now, so a bad payload is a 422 to its sender
    except InputError as exc:
        raise invalid_fields(
            f"The payload does not give workflow {workflow.id!r} valid inputs: {exc}",
            {f"inputs.{k}": v for k, v in exc.problems.items()},
        ) from None
    return StartRequest(
        workflow.id,
        inputs,
        source.actor,
        trigger={"kind": "webhook", "source": source.name, "delivery_id": delivery_id},
        delivery=f"{source.name}:{delivery_id}" if delivery_id else None,
        accepted_at=received_at,
    )


def _accepted(ctx: WebContext, source: Source, accepted: Acceptance) -> tuple[web.Response, str]:
    """202 with the run's id and where to read it (the earlier run's, for a delivery seen before)."""
    status_url = ctx.run_url(accepted.run_id)
    body = {
        "run_id": accepted.run_id,
        "status": "accepted",
        "status_url": status_url,
        "duplicate": accepted.duplicate,
    }
    log.info(
        "webhook accepted",
        extra={"source": source.name, "run_id": accepted.run_id, "duplicate": accepted.duplicate},
    )
    outcome = "duplicate" if accepted.duplicate else "accepted"
    return _json(body, 202, {"Location": status_url}), outcome


async def _deliver(
    ctx: WebContext, source: Source, context: dict[str, Any], delivery_id: str | None
) -> tuple[web.Response, str]:
    rendered = _mapped(source.deliver_fields, context)
    event, key = str(rendered["event"]), str(rendered["key"])
    actor, payload = source.actor, context["payload"]
    if delivery_id is None:
        done = EventDelivery(await asyncio.to_thread(ctx.engine.deliver_event, event, key, payload, actor))
    else:
        # Remembered only once delivered: a delivery that fails (503) is delivered by its retry.
        delivery = f"{source.name}:{delivery_id}"
        try:
            done = await asyncio.to_thread(
                ctx.engine.deliver_event_once, event, key, payload, actor, delivery
            )
        except DeliveryInProgress as exc:
            busy = Problem(503, str(exc), "delivery-in-progress")
            busy.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            raise busy from None
    body = {
        "event": event,
        "key": key,
        "run_ids": done.run_ids,
        "status_urls": [ctx.run_url(r) for r in done.run_ids],
        "duplicate": done.duplicate,
    }
    return _json(body, 202), "duplicate" if done.duplicate else "delivered"


def _filtered_out(condition: str, context: dict[str, Any]) -> str | None:
    try:
        return None if truthy(condition, context, "filter") else "the source's filter does not match"
    except RenderError as exc:
        return f"the source's filter could not be evaluated: {exc}"


def _mapped(fields: Fields, context: dict[str, Any]) -> dict[str, Any]:
    try:
        return fields.render(context)
    except FieldsError as exc:
        raise invalid_fields("The payload lacks what the source maps from it.", exc.problems) from None


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer as web.json_response makes it, but written by orjson: several times faster."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def _unauthorized(detail: str, slug: str) -> Problem:
    return Problem(401, detail, slug)
