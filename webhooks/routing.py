"""What each route needs, declared once: its role, body and query models, its status.

Handlers carry an :class:`Endpoint` (attached by :func:`endpoint`). :func:`add_routes`
puts each handler behind :func:`edge`, which checks the role it declares; the OpenAPI
document is built from the endpoints and the route table, and :func:`read_body` /
:func:`read_query` validate input with its pydantic models, so a bad request gets a
400 or 422 naming the problem and never reaches the engine.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from webhooks import inbound
from webhooks.auth import Principal, Role, forbidden
from webhooks.context import context_of
from webhooks.problems import from_validation_error, refusal

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
PRINCIPAL = web.RequestKey("switchboard_principal", Principal)  # who made the request, for routes with a role


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


def endpoint_of(handler: Handler) -> Endpoint | None:
    """What ``handler`` declared with :func:`endpoint`, seen through :func:`edge`'s wrapping."""
    return ENDPOINTS.get(inspect.unwrap(handler))


def add_routes(app: web.Application, routes: Iterable[web.AbstractRouteDef]) -> None:
    """Register ``routes``, each handler behind :func:`edge` and with an ``Expect`` handler that
    cannot fail (:func:`webhooks.inbound.expect_handler`)."""
    for route in routes:
        assert isinstance(route, web.RouteDef)
        kwargs = {**route.kwargs, "expect_handler": inbound.expect_handler}
        web.RouteDef(route.method, route.path, edge(route.handler), kwargs).register(app.router)


def edge(handler: Handler) -> Handler:
    """``handler`` behind what every request passes through, as one layer.

    Headers that are not UTF-8 text are refused before any handler hashes, signs or
    stores one; then the bearer token and role the route declares are checked (routes
    without a role are public); every refusal, from here or the handler, is answered
    as a problem document (:func:`webhooks.problems.refusal`).

    A wrapper per route, not an aiohttp middleware: an app with any middleware makes
    aiohttp build and enter a chain of layers (its own ``_fix_request_current_app``
    among them) on every request, which cost more than this whole layer (3.5% of a
    signed delivery's instructions: ``bench/webhooks.py --instructions``).
    """
    spec = endpoint_of(handler)
    role = spec.role if spec is not None else None

    @functools.wraps(handler)
    async def at_the_edge(request: web.Request) -> web.StreamResponse:
        try:
            inbound.check_headers(request.headers)
            if role is not None:
                principal = context_of(request).tokens.authenticate(request.headers.get("Authorization"))
                if not principal.may(role):
                    raise forbidden(principal, role)
                request[PRINCIPAL] = principal
            return await handler(request)
        except Exception as exc:
            return refusal(request, exc)

    return at_the_edge


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
