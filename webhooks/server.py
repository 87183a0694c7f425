"""The web process: build the aiohttp application and run it.

``create_app`` wires the engine to every route: the signed webhooks, the REST API,
``/healthz`` and ``/metrics``. Other parts (the Slack bot) may add their routes to the
returned app before it starts. ``run_web`` serves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from aiohttp import web

from engine.api import Engine
from engine.background import start_task
from engine.connection import async_client
from engine.intake import Acceptor, Intake, Starter
from webhooks import console, deliveries, reference, rest
from webhooks.auth import Tokens
from webhooks.context import CONTEXT, WebContext, context_of
from webhooks.inbound import quiet_malformed_http
from webhooks.keys import WebKeys
from webhooks.metrics import DeliveryCounts, exposition, snapshot
from webhooks.openapi import build_openapi
from webhooks.problems import RETRY_AFTER_SECONDS, Problem
from webhooks.routing import add_routes, endpoint
from webhooks.settings import WebSettings, get_web_settings
from webhooks.sources import Source, load_sources
from webhooks.stream import stream_run

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0


async def no_route(request: web.Request) -> web.StreamResponse:
    """A path or method nothing serves: 404, or 405 with ``Allow``, as a problem document.

    What aiohttp answers itself, but through a route of ours, so the request has our
    ``Expect`` handler and edge (:func:`webhooks.routing.edge`): aiohttp answers an
    unrouted request after running its own ``Expect`` handler, which fails with a 500 on
    a value that is not UTF-8.
    """
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


@endpoint(None, tag="operations")
async def healthz(request: web.Request) -> web.StreamResponse:
    """Health: 200 when Redis answers a PING, 503 when it does not."""
    ctx = context_of(request)
    try:
        await asyncio.wait_for(ctx.aredis.ping(), HEALTH_TIMEOUT)
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        unhealthy = Problem(503, f"Redis is not reachable: {exc or type(exc).__name__}.", "unhealthy")
        unhealthy.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)  # as every other route says then
        raise unhealthy from None
    return web.json_response({"status": "ok", "redis": "ok"})


@endpoint(None, media_type="text/plain", tag="operations")
async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics of the whole system, read from Redis (see webhooks.metrics), and this process's."""
    ctx = context_of(request)
    body = exposition(await snapshot(ctx.engine, ctx.live, ctx.aredis, ctx.deliveries))
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@endpoint(None, tag="operations")
async def openapi(request: web.Request) -> web.StreamResponse:
    """This API's OpenAPI 3.1 document."""
    return web.json_response(build_openapi(request.app))


def create_app(engine: Engine, settings: WebSettings | None = None) -> web.Application:
    """The application serving ``engine``: webhooks, ``/v1``, ``/healthz`` and ``/metrics``.

    Sources and tokens are read here, once; a malformed sources file or token setting
    raises now rather than at the first request.
    """
    settings = settings or get_web_settings()
    sources = _startable(load_sources(settings.sources_file, settings.body_limit), engine)
    tokens = Tokens.parse(settings.api_tokens.get_secret_value())
    if not len(tokens):
        log.warning("no API tokens configured: every /v1 request will be refused (SWITCHBOARD_API_TOKENS)")
    largest_body = max([settings.body_limit, *(s.body_limit for s in sources.values())])
    app = web.Application(client_max_size=largest_body)
    quiet_malformed_http()
    aredis = async_client(engine.redis)
    ctx = WebContext(
        engine,
        settings,
        sources,
        tokens,
        aredis,
        engine.live_queries(aredis),
        Intake(engine),
        Acceptor(async_client(engine.redis, socket_timeout=None), engine.keys),
        DeliveryCounts(aredis, WebKeys(engine.keys.prefix)),
    )
    app[CONTEXT] = ctx
    routes = [
        web.post("/webhooks/{source}", deliveries.receive_delivery),
        *rest.routes,
        web.get("/v1/runs/{run_id}/stream", stream_run),
        *console.routes,
        web.get("/v1/openapi.json", openapi),
        web.get("/v1/docs", reference.api_reference),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
        # Matched last (more specific paths win); any character, a decoded newline too, or
        # aiohttp would answer the request itself (see no_route).
        web.route("*", r"/{path:[\s\S]*}", no_route),
    ]
    add_routes(app, routes)
    app.cleanup_ctx.append(_background)
    log.info("web app ready", extra={"sources": sorted(sources), "tokens": len(tokens)})
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Threads for engine calls, the standby starter, the metrics feed follower; closed with the app."""
    ctx = app[CONTEXT]
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=ctx.settings.threads, thread_name_prefix="switchboard-web")
    loop.set_default_executor(executor)
    stop = asyncio.Event()
    tasks = [
        start_task(ctx.deliveries.flush_every(stop), "delivery-counts"),
    ]
    starter = Starter(ctx.intake, f"web-{socket.gethostname()}-{os.getpid()}", ctx.settings.starts_after)
    starter.start()
    yield
    await asyncio.to_thread(starter.stop)
    # Both the flag and a cancel: redis-py may swallow a cancel that lands mid-command,
    # and then the flag ends the loop at its next turn.
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5)
    await ctx.aredis.aclose()
    await ctx.acceptor.redis.aclose()
    executor.shutdown(wait=False)


def _startable(sources: dict[str, Source], engine: Engine) -> dict[str, Source]:
    """Sources with the workflow they start resolved; those starting one that does not exist are
    left out, loudly."""
    usable = {}
    for name, source in sources.items():
        resolved = source.with_workflow(engine.catalog)
        if resolved is None:
            workflow = source.spec.start.workflow if source.spec.start else None
            log.error(
                "webhook source disabled: unknown workflow", extra={"source": name, "workflow": workflow}
            )
            continue
        usable[name] = resolved
    return usable


def run_web(host: str, port: int, engine: Engine, settings: WebSettings | None = None) -> None:
    """Serve the web app until interrupted (the ``switchboard web`` process)."""
    app = create_app(engine, settings)
    web.run_app(app, host=host, port=port, print=lambda text: log.info(text.strip()), access_log=log)
