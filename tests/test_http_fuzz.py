"""Every HTTP entry point, fuzzed: whatever a client sends, never a 5xx and never an error log.

The app is the one ``switchboard web`` serves (:func:`webhooks.server.create_app` with
the Slack bot mounted, as ``switchboard.app.build_app`` does). Each route of its router
is a test of its own (``test_every_route_is_fuzzed`` keeps the list honest), sent
requests built from: the route's own method or odd ones; path parameters that name real
runs, workflows, tasks and sources or nothing at all; tokens of every role, wrong ones
or garbage; signatures that are right or wrong; header values that are not UTF-8;
bogus Content-Type, charset and Content-Encoding (or a real gzip); and bodies of random
bytes, JSON of the wrong type at any level of a valid body, JSON nested 10,000 deep or
with a 5,000-digit integer. Requests are written to the socket as bytes, so nothing a
client library would refuse to send is out of reach.

A request fails the test when it is answered 5xx or when anything is logged at ERROR
level (or with a traceback) while it is handled.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import hashlib
import hmac
import json
import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import redis
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bot import ids
from bot.web import attach
from engine.api import Engine
from engine.model import Actor, ActorKind
from tests.console_routes import CONSOLE_ENTRY_POINTS
from tests.engine_helpers import Clock, engine_for
from tests.fake_slack import ALICE, SIGNING_SECRET, TEAM, WORKFLOWS, FakeSlack, slack_settings
from tests.web_helpers import (
    APPROVAL_WORKFLOW,
    TOKENS,
    WAITING_WORKFLOW,
    github_headers,
    standard_headers,
    stripe_headers,
)
from webhooks.server import create_app
from webhooks.settings import WebSettings

# Every route the app serves (HEAD goes with GET); a route added without fuzzing fails below.
ENTRY_POINTS = [
    ("POST", "/slack/events"),
    ("POST", "/webhooks/{source}"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run_id}"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}"),
    ("GET", "/v1/runs/{run_id}/events"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}/events"),
    ("GET", "/v1/runs/{run_id}/context"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}/context"),
    ("GET", "/v1/runs/{run_id}/tasks/pending"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}/tasks/pending"),
    ("POST", "/v1/runs/{run_id}/tasks/{task_id}/complete"),
    ("POST", "/v1/workflows/{workflow_id}/runs/{run_id}/tasks/{task_id}/complete"),
    ("POST", "/v1/runs/{run_id}/tasks/{task_id}/answer"),
    ("POST", "/v1/runs/{run_id}/replay"),
    ("POST", "/v1/runs/{run_id}/recover"),
    ("GET", "/v1/runs/{run_id}/evidence"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}/evidence"),
    ("POST", "/v1/workflows/{workflow_id}/runs/{run_id}/recover"),
    ("GET", "/v1/workflows"),
    ("GET", "/v1/workflows/{workflow_id}"),
    ("GET", "/v1/workflows/{workflow_id}/runs"),
    ("POST", "/v1/workflows/{workflow_id}/runs"),
    ("POST", "/v1/workflows/{workflow_id}/command"),
    ("GET", "/v1/tasks/pending"),
    ("GET", "/v1/questions"),
    ("GET", "/v1/runs/{run_id}/questions"),
    ("GET", "/v1/workflows/{workflow_id}/runs/{run_id}/questions"),
    ("GET", "/v1/command-center"),
    ("GET", "/v1/events"),
    ("GET", "/v1/analytics/summary"),
    ("GET", "/v1/analytics/timeseries"),
    ("GET", "/v1/runs/{run_id}/stream"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/docs"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    *CONSOLE_ENTRY_POINTS,
    ("*", "/{path}"),  # what nothing else serves: 404 or 405, through our own handlers
]
QUERY_NAMES = ["status", "workflow", "prefix", "since", "until", "limit", "cursor", "after", "before"]
QUERY_NAMES += ["type", "severity", "run", "bucket", "range", "x"]
ODD_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND", "get", "G\x01T"]

DEEP = "[" * 10_000 + "]" * 10_000
HUGE_INT = "9" * 5000


@dataclass
class Site:
    client: TestClient
    engine: Engine
    clock: Clock
    run_id: str  # a run waiting on its approval task
    finished_id: str  # a completed run (replayable)
    response_url: str  # where the fake Slack takes the app's answers to commands

    def path_values(self) -> dict[str, st.SearchStrategy[str]]:
        weird = st.text(max_size=30) | st.sampled_from(
            ["%FF", "%00", "..", "%2F", "a/b", " ", "\u00e9", "\ud800"]
        )
        return {
            "run_id": st.sampled_from([self.run_id, self.run_id[:8], self.finished_id, "0" * 8]) | weird,
            "workflow_id": st.sampled_from(["release", "settle", "approve-deploy", "nope"]) | weird,
            "task_id": st.sampled_from(["approve", "announce", "nope"]) | weird,
            "step_id": st.sampled_from(["region", "approve", "nope"]) | weird,
            "source": st.sampled_from(["releases", "github", "payments", "vector", "unset", "nope"]) | weird,
            # Paths nothing serves, and served paths (reached by a method they do not take).
            "path": st.sampled_from(["nowhere", "v1/nope", "healthz", "v1/openapi.json", "slack/events"])
            | weird,
        }


@pytest.fixture
async def site(
    aiohttp_client: Any,
    redis_conn: redis.Redis,
    namespace: str,
    clock: Clock,
    settings: WebSettings,
    fake_slack: FakeSlack,
) -> Site:
    engine = engine_for(
        redis_conn, namespace, APPROVAL_WORKFLOW, WAITING_WORKFLOW, *WORKFLOWS.values(), clock=clock
    )
    app = create_app(engine, settings)
    attach(app, engine, slack_settings(fake_slack))  # as switchboard.app.build_app does
    client = await aiohttp_client(app)
    ops = Actor(kind=ActorKind.API, id="ops-bot")
    waiting = engine.start("release", {"service": "api"}, ops)
    finished = engine.start("release", {"service": "web"}, ops)
    engine.complete_task(finished.run_id, "approve", Actor(kind=ActorKind.API, id="lead"), True)
    return Site(client, engine, clock, waiting.run_id, finished.run_id, fake_slack.response_url())


def test_every_route_is_fuzzed(site: Site) -> None:
    served = {
        (route.method, resource.canonical)
        for resource in site.client.app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }
    assert served == set(ENTRY_POINTS)


# -- what a request is made of -------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
raw_json = st.sampled_from(
    [DEEP, '{"a": ' + HUGE_INT + "}", HUGE_INT, "NaN", '{"a": Infinity}', "\ufeff{}", ""]
)


def node_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from node_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from node_paths(item, (*path, index))


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one node (any level, the whole included) replaced by a value of any type."""
    value = copy.deepcopy(base)
    path = draw(st.sampled_from(list(node_paths(value))))
    replacement = draw(json_values | raw_json.map(lambda text: RawJson(text)))
    if not path:
        return replacement
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = replacement
    return value


class RawJson(str):
    """JSON text to splice in as it is (too deep, too large or not JSON at all)."""


def dumps(value: Any) -> str:
    if isinstance(value, RawJson):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def json_body(base: Any) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(base).map(lambda b: dumps(b).encode()),
        mutated(base).map(lambda b: dumps(b).encode()),
        json_values.map(lambda v: dumps(v).encode()),
        raw_json.map(str.encode),
        st.binary(max_size=200),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
# Values as bytes: UTF-8 text, or bytes that are not UTF-8 (never CR, LF or NUL: those end a header).
header_bytes = header_text.map(str.encode) | st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x00") + b"\xff"
)
valid_tokens = st.sampled_from([f"Bearer {token}".encode() for token in TOKENS.values()])
authorizations = (
    valid_tokens
    | st.one_of(
        st.sampled_from(["Bearer nope", f"Basic {TOKENS['admin']}", "Bearer", "bearer  " + TOKENS["viewer"]]),
        header_text.map(lambda t: f"Bearer {t}"),
    ).map(str.encode)
    | header_bytes
)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=no-such-charset",
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-16",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/json; charset=",
            ";;;",
        ]
    ).map(str.encode)
    | header_bytes
)
codings = st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "bogus", "gzip, gzip", "GZIP", ""])
extra_headers = st.dictionaries(
    st.sampled_from(["Accept", "Last-Event-ID", "X-GitHub-Event", "webhook-id", "Content-Language"]),
    header_bytes,
    max_size=2,
) | st.fixed_dictionaries({"Expect": st.sampled_from([b"100-continue", b"nothing"]) | header_bytes})


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, bytes]
    body: bytes


def compress(coding: str, body: bytes) -> bytes:
    if coding.lower() == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    return body


@st.composite
def requests(
    draw: st.DrawFn, site: Site, method: str, template: str, bodies: st.SearchStrategy[bytes]
) -> Request:
    values = site.path_values()
    if method == "*":  # the route for what nothing else serves: any method
        method = draw(st.sampled_from(ODD_METHODS))
    path = template
    for name, strategy in values.items():
        if "{" + name + "}" in path:
            value = draw(strategy)
            path = path.replace(
                "{" + name + "}",
                quote(value, safe="%")
                if value.startswith("%")
                else quote(value.encode("utf-8", "surrogatepass"), safe=""),
            )
    query = draw(
        st.dictionaries(
            st.sampled_from(QUERY_NAMES),
            st.text(max_size=12)
            | st.sampled_from(["-1", "0", "99999999999", "2026-01-01", "running", "%ZZ"])
            | st.sampled_from(["error", "step_failed,run_failed", "day", "1-0", "24h", "2026-11-23T09:00Z"]),
            max_size=3,
        )
    )
    target = path + ("?" + urlencode(query, encoding="utf-8", errors="surrogatepass") if query else "")
    body = draw(bodies)
    if draw(st.booleans()):
        # A well-formed request (the route's method, a fitting Content-Type, a valid token of
        # some role): only its body and parameters are fuzzed, so they reach the handler.
        kind = b"application/json" if body[:1] in (b"{", b"[") else b"application/x-www-form-urlencoded"
        headers = {"Content-Type": kind, "Authorization": draw(valid_tokens)}
        return Request(method, target, headers, body)
    headers = {}
    if draw(st.booleans()):
        headers["Authorization"] = draw(authorizations)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(content_types)
    coding = draw(st.none() | codings)
    if coding is not None:
        headers["Content-Encoding"] = coding.encode()
        if draw(st.booleans()):
            body = compress(coding, body)  # really encoded, as it says
    headers.update(draw(extra_headers))
    odd = draw(st.integers(0, 4)) == 0
    return Request(draw(st.sampled_from(ODD_METHODS)) if odd else method, target, headers, body)


# -- sending and judging -------------------------------------------------------------------


async def send(client: TestClient, request: Request) -> tuple[int, bytes]:
    """Write ``request`` to the server as bytes; the status, and the body unless it is a stream."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        head = f"{request.method} {request.target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".encode(
            "utf-8", "surrogatepass"
        )
        head += b"Content-Length: %d\r\n" % len(request.body)
        for name, value in request.headers.items():
            head += name.encode() + b": " + value + b"\r\n"
        writer.write(head + b"\r\n" + request.body)
        status = 100
        while status < 200:  # an interim answer (100 Continue) comes before the real one
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = int(answer.split(b" ", 2)[1])
        if b"text/event-stream" in answer.lower():
            return status, b""  # a live stream: the status is the answer
        return status, await asyncio.wait_for(reader.read(), 30)  # Connection: close ends it
    finally:
        writer.close()


async def judge(site: Site, caplog: pytest.LogCaptureFixture, request: Request) -> None:
    seen = len(caplog.records)
    status, body = await send(site.client, request)
    assert status < 500, (request, status, body[:300])
    await asyncio.sleep(0.01)  # let work the request started after its answer log what it logs
    bad = [r for r in caplog.records[seen:] if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, (request, [f"{r.name}: {r.getMessage()}" for r in bad])


FUZZ = hypothesis_settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_MORE = hypothesis_settings(FUZZ, max_examples=150)  # one route, many kinds of payload


# -- /v1, /healthz, /metrics --------------------------------------------------------------------

REST_BODIES: dict[str, Any] = {
    "complete": {"approved": True, "result": {"service": "x"}, "comment": "ok"},
    "answer": {"answer": "eu-west"},
    "replay": {"inputs": {"service": "api", "replicas": 2}},
    "recover": {"from_step": "approve", "inputs": {"replicas": 2}, "force": True},
    "runs": {"inputs": {"service": "api", "replicas": 2}},
    "command": {"command": "stop", "run_id": "00000000", "params": {"mode": "graceful", "inputs": {}}},
}


def rest_bodies(template: str) -> st.SearchStrategy[bytes]:
    for suffix, base in REST_BODIES.items():
        if template.endswith(suffix):
            return json_body(base)
    return json_body({}) | st.just(b"")


@pytest.mark.parametrize(
    ("method", "template"), [e for e in ENTRY_POINTS if not e[1].startswith(("/slack", "/webhooks"))]
)
@FUZZ
@given(data=st.data())
async def test_rest_entry_points(
    site: Site, caplog: pytest.LogCaptureFixture, method: str, template: str, data: st.DataObject
) -> None:
    caplog.set_level(logging.WARNING)
    await judge(site, caplog, data.draw(requests(site, method, template, rest_bodies(template))))


async def test_a_path_with_a_newline_and_a_method_it_does_not_take_is_answered_by_us(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzz: a decoded newline in a path once escaped the catch-all route, and
    aiohttp's own answer failed on an ``Expect`` value that is not UTF-8."""
    caplog.set_level(logging.WARNING)
    target = f"/v1/workflows/%0A/runs/{site.run_id}/evidence"
    await judge(site, caplog, Request("POST", target, {"Expect": b"\xff"}, b"{}"))
    status, _ = await send(site.client, Request("POST", target, {}, b"{}"))
    assert status == 405


# -- /webhooks/{source} ----------------------------------------------------------------------

WEBHOOK_PAYLOAD = {
    "service": "api",
    "replicas": 2,
    "repository": {"name": "api"},
    "type": "payment.succeeded",
    "data": {"object": {"id": "pay_1"}},
    "id": "evt_1",
}


def signed_webhook(site: Site, source: str, body: bytes, delivery: str) -> dict[str, bytes]:
    if source == "github":
        headers = github_headers(body, delivery)
    elif source == "payments":
        headers = stripe_headers(body, site.clock.now)
    else:
        headers = standard_headers(body, msg_id=delivery, at=site.clock.now)
    return {name: value.encode() for name, value in headers.items()}


@FUZZ_MORE
@given(data=st.data(), sign=st.booleans(), delivery=header_text.filter(bool))
async def test_webhook_entry_point(
    site: Site, caplog: pytest.LogCaptureFixture, data: st.DataObject, sign: bool, delivery: str
) -> None:
    caplog.set_level(logging.WARNING)
    request = data.draw(requests(site, "POST", "/webhooks/{source}", json_body(WEBHOOK_PAYLOAD)))
    source = request.target.split("/")[2].split("?")[0]
    if sign:  # signed over the bytes sent, so the body reaches parsing, filters and the engine
        request.headers.update(signed_webhook(site, source, request.body, delivery))
    await judge(site, caplog, request)


# -- /slack/events ---------------------------------------------------------------------------


def slack_bases(site: Site) -> dict[str, Any]:
    user = {"id": ALICE.id, "username": ALICE.name, "team_id": TEAM}
    origin = json.dumps({"run": site.run_id, "task": "approve", "channel": "C0OPS"})
    return {
        "command": {
            "command": "/run",
            "text": "status " + site.run_id[:8],
            "user_id": ALICE.id,
            "user_name": ALICE.name,
            "team_id": TEAM,
            "channel_id": "C0OPS",
            "response_url": site.response_url,
            "trigger_id": "t-1",
        },
        "click": {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "switchboard"},
            "user": user,
            "api_app_id": "A0APP",
            "trigger_id": "t-1",
            "container": {"type": "view", "view_id": "VHOME"},
            "view": {"id": "VHOME", "type": "home"},
            "actions": [
                {"type": "button", "action_id": ids.RUN_DETAILS, "block_id": "b", "value": site.run_id},
                {
                    "type": "button",
                    "action_id": ids.TASK_APPROVE,
                    "value": ids.task_value(site.run_id, "nope"),
                },
            ],
        },
        "submission": {
            "type": "view_submission",
            "team": {"id": TEAM},
            "user": user,
            "trigger_id": "t-1",
            "view": {
                "id": "VMODAL",
                "type": "modal",
                "callback_id": ids.EDIT_MODAL,
                "private_metadata": origin,
                "state": {"values": {"field:service": {"value": {"type": "plain_text_input", "value": "x"}}}},
            },
        },
        "event": {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A0APP",
            "type": "event_callback",
            "event_id": "Ev1",
            "event_time": 1,
            "event": {"type": "app_home_opened", "user": ALICE.id, "tab": "messages"},
            "authorizations": [{"team_id": TEAM, "user_id": "U0BOT", "is_bot": True}],
        },
    }


def slack_signature(body: bytes, stamp: str) -> dict[str, bytes]:
    mac = hmac.new(SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp.encode(), "X-Slack-Signature": f"v0={mac}".encode()}


@st.composite
def slack_bodies(draw: st.DrawFn, site: Site) -> bytes:
    bases = slack_bases(site)
    kind = draw(st.sampled_from(["command", "click", "submission", "event", "raw"]))
    if kind == "command":
        fields = draw(mutated(bases["command"]))
        if isinstance(fields, dict):
            return urlencode(
                {str(k): v if isinstance(v, str) else dumps(v) for k, v in fields.items()}
            ).encode()
        return dumps(fields).encode()
    if kind in ("click", "submission"):
        payload = dumps(draw(mutated(bases[kind])))
        return urlencode({"payload": payload}).encode() if draw(st.booleans()) else payload.encode()
    if kind == "event":
        return dumps(draw(mutated(bases["event"]))).encode()
    return draw(json_body({}) | st.text(max_size=40).map(lambda t: ("payload=" + t).encode()))


@FUZZ_MORE
@given(data=st.data(), sign=st.sampled_from(["now", "now", "none", "stale", "garbage"]), garbage=header_bytes)
async def test_slack_entry_point(
    site: Site, caplog: pytest.LogCaptureFixture, data: st.DataObject, sign: str, garbage: bytes
) -> None:
    caplog.set_level(logging.WARNING)
    request = data.draw(requests(site, "POST", "/slack/events", slack_bodies(site)))
    if sign == "now":  # signed over the bytes sent, so the body reaches parsing, bolt and the listeners
        request.headers.update(slack_signature(request.body, str(int(time.time()))))
    elif sign == "stale":
        request.headers.update(slack_signature(request.body, str(int(time.time()) - 600)))
    elif sign == "garbage":
        request.headers.update({"X-Slack-Request-Timestamp": garbage, "X-Slack-Signature": garbage})
    await judge(site, caplog, request)
