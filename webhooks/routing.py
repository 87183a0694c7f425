"""What each route needs, declared once: its role, body and query models, its status.

Handlers carry an :class:`Endpoint` (attached by :func:`endpoint`). The auth middleware
reads the role from it, the OpenAPI document is built from it and the route table, and
:func:`read_body` / :func:`read_query` validate input with its pydantic models, so a
bad request gets a 400 or 422 naming the problem and never reaches the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from webhooks import inbound
from webhooks.auth import Role
from webhooks.context import context_of
from webhooks.problems import from_validation_error

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
    response: type[BaseModel] | None = None  # the success answer's shape, for the OpenAPI document
    also: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)  # other success answers
    idempotent: bool = False  # honours an Idempotency-Key header


ENDPOINTS: dict[Handler, Endpoint] = {}


def endpoint(
    role: Role | None,
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    status: int = 200,
    media_type: str = "application/json",
    tag: str = "runs",
    response: type[BaseModel] | None = None,
    also: Mapping[int, type[BaseModel] | None] | None = None,
    idempotent: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare a handler's role and models; its docstring becomes the OpenAPI summary.

    ``response`` is the answer at ``status``; ``also`` other success statuses it may answer
    with theirs (a command's start answers 201); ``idempotent`` that it takes an
    ``Idempotency-Key`` header. The OpenAPI document says all of it.
    """

    def register(handler: Handler) -> Handler:
        doc = (handler.__doc__ or handler.__name__).strip()
        summary, _, description = doc.partition("\n")
        ENDPOINTS[handler] = Endpoint(
            role,
            summary.strip(),
            description.strip(),
            body,
            query,
            status,
            media_type,
            tag,
            response,
            dict(also or {}),
            idempotent,
        )
        return handler

    return register


def endpoint_of(request: web.Request) -> Endpoint | None:
    handler = request.match_info.route.handler
    return ENDPOINTS.get(handler)


async def read_body(request: web.Request, model: type[M]) -> M:
    """The request body validated by ``model``; an empty body counts as ``{}``.

    The body is read by :mod:`webhooks.inbound` (Content-Encoding, size, UTF-8, JSON guards):
    what it refuses is answered as a problem by :mod:`webhooks.problems`.
    """
    inbound.check_charset(request)
    raw = await inbound.read_body(request, context_of(request).settings.body_limit)
    data = inbound.parse_json(raw) if raw.strip() else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, "request body") from None


def read_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise from_validation_error(exc, "query") from None
