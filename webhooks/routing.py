"""What each route needs, declared once: its role, body and query models, its status.

Handlers carry an :class:`Endpoint` (attached by :func:`endpoint`). The auth middleware
reads the role from it, the OpenAPI document is built from it and the route table, and
:func:`read_body` / :func:`read_query` validate input with its pydantic models, so a
bad request gets a 400 or 422 naming the problem and never reaches the engine.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from webhooks.auth import Role
from webhooks.problems import Problem, from_validation_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint:
    role: Role | None  # None: no token needed
    summary: str
    description: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    media_type: str = "application/json"
    tag: str = "runs"


ENDPOINTS: dict[Handler, Endpoint] = {}


def endpoint(
    role: Role | None,
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    status: int = 200,
    media_type: str = "application/json",
    tag: str = "runs",
) -> Callable[[Handler], Handler]:
    """Declare a handler's role and models; its docstring becomes the OpenAPI summary."""

    def register(handler: Handler) -> Handler:
        doc = (handler.__doc__ or handler.__name__).strip()
        summary, _, description = doc.partition("\n")
        ENDPOINTS[handler] = Endpoint(
            role, summary.strip(), description.strip(), body, query, status, media_type, tag
        )
        return handler

    return register


def endpoint_of(request: web.Request) -> Endpoint | None:
    handler = request.match_info.route.handler
    return ENDPOINTS.get(handler)


def parse_json(raw: bytes) -> Any:
    """JSON from bytes, or a 400 problem saying where and what is wrong."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Problem(
            400,
            f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.",
            "malformed-json",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except UnicodeDecodeError as exc:
        raise Problem(
            400, f"The body is not UTF-8 text: {exc.reason} at byte {exc.start}.", "malformed-json"
        ) from None
    except RecursionError:
        raise Problem(400, "The JSON body is nested too deeply.", "malformed-json") from None


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request body validated by ``model``; an empty body counts as ``{}``."""
    raw = await request.read()
    data = parse_json(raw) if raw.strip() else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, "request body") from None


def read_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise from_validation_error(exc, "query") from None
