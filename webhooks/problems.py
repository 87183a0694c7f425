"""Errors as ``application/problem+json`` (RFC 9457), and what maps each refusal to one.

Every refusal a client can get, from a forged signature to a command that does not fit
the run's state, leaves as a problem document with ``type``, ``title``, ``status`` and
a ``detail`` sentence; extra members say more (``errors`` for invalid fields,
``candidates`` for an ambiguous run id, ``decided_by`` for a task decided already).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import (
    AlreadyDecided,
    AmbiguousRunId,
    CommandRefused,
    InvalidInput,
    NotAllowed,
    NotFound,
    SwitchboardError,
)
from webhooks.inbound import Malformed

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(self, status: int, detail: str, slug: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or HTTPStatus(status).phrase.lower().replace(" ", "-")
        self.extra = extra
        self.headers: dict[str, str] = {}

    def response(self) -> web.Response:
        body = {
            "type": f"urn:switchboard:problem:{self.slug}",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        return web.Response(
            status=self.status,
            text=json.dumps(body, default=str),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def invalid_fields(detail: str, errors: dict[str, Any]) -> Problem:
    """422 naming each invalid field and what is wrong with it."""
    listed = [{"field": name, "message": str(why)} for name, why in errors.items()]
    return Problem(422, detail, "invalid-input", errors=listed)


def from_validation_error(exc: ValidationError, where: str) -> Problem:
    errors = {".".join(str(p) for p in err["loc"]) or where: err["msg"] for err in exc.errors()}
    detail = "; ".join(f"{name}: {why}" for name, why in errors.items())
    return invalid_fields(f"The {where} is not valid: {detail}.", errors)


def from_engine_error(exc: SwitchboardError) -> Problem:
    """The status each engine error means over HTTP; the engine's sentence is the detail."""
    detail = str(exc)
    if isinstance(exc, NotFound):
        return Problem(404, detail, "not-found")
    if isinstance(exc, AmbiguousRunId):
        return Problem(400, detail, "ambiguous-run-id", candidates=exc.candidates)
    if isinstance(exc, InvalidInput):
        return invalid_fields(detail, exc.problems) if exc.problems else Problem(422, detail, "invalid-input")
    if isinstance(exc, NotAllowed):
        return Problem(403, detail, "not-allowed")
    if isinstance(exc, AlreadyDecided):
        return Problem(
            409,
            detail,
            "already-decided",
            decided_by=exc.decided_by,
            decided_at=exc.decided_at.isoformat(),
            approved=exc.approved,
        )
    if isinstance(exc, CommandRefused):
        return Problem(409, detail, "command-refused")
    return Problem(400, detail, "bad-request")


def refusal(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The problem document that answers ``exc``; anything unforeseen is a 500, logged once.

    A request :mod:`webhooks.inbound` could not read (its encoding, size, text or JSON) is
    the client's doing: a 4xx and one warning line. Only what no input should reach (a
    bug) gets the 500 and the traceback. aiohttp's redirects (an ``HTTPException`` below
    400) are not refusals: they are raised again, for aiohttp to answer.
    """
    if isinstance(exc, Problem):
        return exc.response()
    if isinstance(exc, Malformed):
        where = {"path": request.path, "method": request.method}
        log.warning("malformed request refused", extra={**where, "status": exc.status, "detail": exc.detail})
        return Problem(exc.status, exc.detail, exc.slug, **exc.extra).response()
    if isinstance(exc, SwitchboardError):
        return from_engine_error(exc).response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        if exc.status == 404:
            detail = f"There is nothing at {request.path}; see /v1/openapi.json for the routes."
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}."
        mapped = Problem(exc.status, detail or exc.reason)
        for name in ("Allow", "WWW-Authenticate"):
            if name in exc.headers:
                mapped.headers[name] = exc.headers[name]
        return mapped.response()
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        # Nothing was accepted or changed: the client should retry (webhook senders do on 5xx).
        log.warning("redis unreachable", extra={"path": request.path, "error": str(exc)})
        unavailable = Problem(503, "The store (Redis) is unreachable; nothing was done. Try again shortly.")
        unavailable.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return unavailable.response()
    log.error("unhandled error", extra={"path": request.path, "method": request.method}, exc_info=exc)
    return Problem(500, "Something went wrong on our side; it has been logged.").response()
