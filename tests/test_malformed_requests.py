"""Requests that once answered 500, each answered now with a clear 4xx and no traceback.

Every case here was seen failing: most need no secret or token at all. Each edge
(``/slack/events``, ``/webhooks/{source}``, ``/v1``) reads bodies through
:mod:`webhooks.inbound`, so the same malformed input gets the same answer everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bot.web import form_fields
from tests.engine_helpers import Clock
from tests.fake_slack import ALICE, SIGNING_SECRET, Slack, signed_headers
from tests.web_helpers import (
    STANDARD_SECRET,
    bearer,
    problem,
    standard_headers,
)
from webhooks.server import create_app
from webhooks.settings import WebSettings
from webhooks.signatures import Scheme, secret_key, sign_standard
from webhooks.sources import SourcesError, load_sources

FORM = "application/x-www-form-urlencoded"
DEEP = "[" * 10_000 + "]" * 10_000
HUGE_INT = "1" * 5000


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """Whatever a client sends, nothing at ERROR level is logged while it is answered (no traceback)."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


async def raw_request(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no HTTP client library would (non-UTF-8 headers); returns (status, body).

    ``head`` is the request line and headers, each ending in CRLF.
    """
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- /slack/events ---------------------------------------------------------------------------


def command_body(text: str = "help") -> str:
    return urlencode({"command": "/run", "text": text, "user_id": ALICE.id, "team_id": "T0TEAM"})


async def test_slack_non_numeric_timestamp_is_401(slack: Slack) -> None:
    body = command_body()
    for stamp in ("soon", "", "1e9", "\uff11\uff12\uff13"):
        headers = {**signed_headers(body), "X-Slack-Request-Timestamp": stamp}
        response = await slack.post(body, headers)
        assert response.status == 401, (stamp, await response.text())
    assert slack.fake.responses == []


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"command=/run&text=\xff\xfe", FORM, 400),
        (b"command=/run&text=help", f"{FORM}; charset=no-such-charset", 415),
        (b'{"type": "event_callback", "event": "\xc3\x28"}', "application/json", 400),
    ],
    ids=["invalid-utf8-form", "unknown-charset", "invalid-utf8-json"],
)
async def test_slack_undecodable_bodies_are_4xx_when_signed_401_when_not(
    slack: Slack, raw: bytes, content_type: str, status: int, signed: bool
) -> None:
    stamp = str(int(time.time()))
    headers = {**signed_bytes(raw, stamp), "Content-Type": content_type}
    if not signed:
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    response = await slack.client.post("/slack/events", data=raw, headers=headers)
    assert response.status == (status if signed else 401), await response.text()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "bogus"])
async def test_slack_false_content_encoding_is_400(slack: Slack, coding: str) -> None:
    body = command_body()
    headers = {**signed_headers(body), "Content-Encoding": coding}
    response = await slack.post(body, headers)
    assert response.status in (400, 415), await response.text()


async def test_slack_real_gzip_is_read(slack: Slack) -> None:
    body = command_body("help")
    response_url = slack.fake.response_url()
    body += "&" + urlencode({"response_url": response_url})
    headers = {**signed_headers(body), "Content-Encoding": "gzip"}
    response = await slack.client.post("/slack/events", data=gzip.compress(body.encode()), headers=headers)
    assert response.status == 200, await response.text()
    replies = await slack.fake.wait_for(lambda: slack.responses_to(response_url))
    assert "/run start" in replies[0]["text"]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(
    "payload",
    ["null", '"a string"', "42", "[1, 2]", "true", DEEP, '{"n": ' + HUGE_INT + "}", '{"team": 5}'],
    ids=["null", "string", "number", "list", "bool", "deep", "huge-int", "team-int"],
)
async def test_slack_payloads_that_are_no_object_are_400_when_signed_401_when_not(
    slack: Slack, payload: str, signed: bool
) -> None:
    body = urlencode({"payload": payload})
    headers = signed_headers(body) if signed else signed_headers(body, secret="not-the-secret")
    response = await slack.post(body, headers)
    assert response.status == (400 if signed else 401), await response.text()


@pytest.mark.parametrize("where", ["team_id", "enterprise_id"])
async def test_slack_a_team_id_too_long_for_a_url_is_400(slack: Slack, where: str) -> None:
    # bolt would send it in the URL of its first Web API call (auth.test), which the server
    # refuses for its length, and log an error instead of answering.
    fields = {"command": "/run", "text": "help", "user_id": ALICE.id, "team_id": "T0TEAM", where: "T" * 20_000}
    body = urlencode(fields)
    response = await slack.post(body, signed_headers(body))
    assert response.status == 400, await response.text()
    assert where in (await response.json())["error"]


@pytest.mark.parametrize(
    "body", ["null", "[]", '"x"', DEEP, '{"type": "event_callback", "n": ' + HUGE_INT + "}"]
)
async def test_slack_json_bodies_that_are_no_object_are_400(slack: Slack, body: str) -> None:
    headers = {**signed_headers(body), "Content-Type": "application/json"}
    response = await slack.post(body, headers)
    assert response.status == 400, await response.text()


FORM_PIECE = st.text(alphabet="ab%+#?;=é \x00\n2CEFz", max_size=8)
FORM_TEXT = st.lists(st.tuples(FORM_PIECE, st.sampled_from(["=", ""]), FORM_PIECE), max_size=6).map(
    lambda fields: "&".join(name + equals + value for name, equals, value in fields)
)


@hypothesis_settings(max_examples=500, deadline=None)
@given(FORM_TEXT | st.text(max_size=40))
def test_slack_forms_are_read_as_urllib_reads_them(form: str) -> None:
    """``form_fields`` (yarl's unquoting, in C) gives what ``parse_qsl`` gives, on any text:
    bad and partial escapes, bytes that are no UTF-8, blank and repeated names."""
    assert form_fields(form) == dict(parse_qsl(form, keep_blank_values=True))


def signed_bytes(raw: bytes, stamp: str) -> dict[str, str]:
    base = b"v0:" + stamp.encode() + b":" + raw
    digest = hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


# -- /webhooks/{source} ----------------------------------------------------------------------


async def refused_encoding(response: ClientResponse) -> None:
    """A false or unknown Content-Encoding: a 400 or 415 problem naming it.

    Codings aiohttp knows but cannot decode here (br, zstd without their libraries) are
    refused by aiohttp's own parser, before any handler: a plain 400.
    """
    assert response.status in (400, 415), await response.text()
    if response.content_type == "application/problem+json":
        assert "Content-Encoding" in (await problem(response, response.status))["detail"]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "bogus", "gzip, gzip"])
async def test_webhook_false_content_encoding_is_4xx_before_the_signature(
    client: TestClient, clock: Clock, coding: str
) -> None:
    body = b'{"service": "api"}'
    headers = {**standard_headers(body, at=clock.now), "Content-Encoding": coding}
    await refused_encoding(await client.post("/webhooks/releases", data=body, headers=headers))


async def test_signed_webhook_with_a_huge_integer_is_400_not_retried_forever(
    client: TestClient, clock: Clock
) -> None:
    body = b'{"service": "api", "replicas": ' + HUGE_INT.encode() + b"}"
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    assert "digits" in (await problem(response, 400))["detail"]


async def test_signed_webhook_nested_too_deep_is_400(client: TestClient, clock: Clock) -> None:
    body = ('{"service": "api", "extra": ' + "[" * 500 + "]" * 500 + "}").encode()
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    assert "nested" in (await problem(response, 400))["detail"]


async def test_webhook_id_header_with_non_utf8_bytes_is_400(client: TestClient) -> None:
    status, answer = await raw_request(
        client, b"POST /webhooks/releases HTTP/1.1\r\nHost: x\r\nwebhook-id: msg_\xff\r\n", b"{}"
    )
    assert status == 400 and b"webhook-id" in answer


# -- /v1 -------------------------------------------------------------------------------------


async def test_v1_authorization_with_non_utf8_bytes_is_400(client: TestClient) -> None:
    status, answer = await raw_request(
        client, b"GET /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-\xff\xfe\r\n"
    )
    assert status == 400, answer
    assert b"Authorization" in answer


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "bogus"])
async def test_v1_false_content_encoding_is_4xx(client: TestClient, coding: str) -> None:
    headers = {**bearer("operator"), "Content-Encoding": coding}
    await refused_encoding(
        await client.post("/v1/workflows/release/runs", data=b'{"inputs": {}}', headers=headers)
    )


async def test_v1_real_gzip_is_read(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"inputs": {"service": "api"}}).encode())
    headers = {**bearer("operator"), "Content-Encoding": "gzip"}
    response = await client.post("/v1/workflows/release/runs", data=body, headers=headers)
    assert response.status == 201, await response.text()


async def test_v1_huge_integer_is_400(client: TestClient) -> None:
    body = b'{"inputs": {"service": "api", "replicas": ' + HUGE_INT.encode() + b"}}"
    response = await client.post("/v1/workflows/release/runs", data=body, headers=bearer("operator"))
    assert "digits" in (await problem(response, 400))["detail"]


@pytest.mark.parametrize("charset", ["no-such-charset", "latin-1", "utf-16"])
async def test_v1_a_charset_other_than_utf8_is_415(client: TestClient, charset: str) -> None:
    headers = {**bearer("operator"), "Content-Type": f"application/json; charset={charset}"}
    response = await client.post("/v1/workflows/release/runs", data=b'{"inputs": {}}', headers=headers)
    assert "charset" in (await problem(response, 415))["detail"]


# -- whsec_ secrets without padding ----------------------------------------------------------


def test_a_standard_secret_without_padding_is_the_same_key() -> None:
    padded = "whsec_" + base64.b64encode(b"a secret of 23 bytes...").decode()
    assert padded.endswith("=")
    stripped = padded.rstrip("=")
    key = secret_key(Scheme.STANDARD, stripped)
    assert key == secret_key(Scheme.STANDARD, padded) == b"a secret of 23 bytes..."
    assert sign_standard(key, "msg_1", 1700000000, b"{}") == sign_standard(
        secret_key(Scheme.STANDARD, padded), "msg_1", 1700000000, b"{}"
    )


async def test_a_delivery_signed_with_the_padded_secret_verifies_against_the_stripped_one(
    aiohttp_client: Any,
    web_engine: Any,
    settings: WebSettings,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    padded = "whsec_" + base64.b64encode(b"rotated secret, 22 byt").decode()
    assert padded.endswith("==")
    monkeypatch.setenv("TEST_STANDARD_SECRET", padded.rstrip("="))
    monkeypatch.setenv("TEST_STANDARD_SECRET_NEW", padded.rstrip("="))
    client = await aiohttp_client(create_app(web_engine, settings))
    caplog.clear()  # the start-up log (a test source without secrets) is not a request's
    body = b'{"service": "api"}'
    signed = standard_headers(body, padded, at=clock.now)
    response = await client.post("/webhooks/releases", data=body, headers=signed)
    assert response.status == 202, await response.text()
    forged = standard_headers(body, STANDARD_SECRET, msg_id="msg_2", at=clock.now)
    await problem(await client.post("/webhooks/releases", data=body, headers=forged), 401)


def test_an_invalid_standard_secret_refuses_to_start_naming_the_source(
    settings: WebSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_STANDARD_SECRET_NEW", "whsec_not*base64!")
    with pytest.raises(SourcesError) as raised:
        load_sources(settings.sources_file, settings.body_limit)
    message = str(raised.value)
    assert "releases" in message and "TEST_STANDARD_SECRET_NEW" in message
    assert "not*base64" not in message  # the secret itself is never shown


async def test_an_expect_header_that_is_not_utf8_is_400_not_a_crash_before_the_middleware(
    client: TestClient,
) -> None:
    status, answer = await raw_request(
        client, b"POST /v1/workflows/release/runs HTTP/1.1\r\nHost: x\r\nExpect: \xff\r\n", b"{}"
    )
    assert status == 400 and b"Expect" in answer


async def test_a_path_or_method_nothing_serves_is_a_problem_even_with_an_expect_that_is_not_utf8(
    client: TestClient,
) -> None:
    for head, expected in (
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nExpect: \xff\r\n", 400),  # the header, as on any route
        (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nExpect: \xff\r\n", 400),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nExpect: nothing\r\n", 404),
        (b"PUT /v1/openapi.json HTTP/1.1\r\nHost: x\r\n", 405),
    ):
        status, answer = await raw_request(client, head)
        assert status == expected, answer
        assert json.loads(answer)["status"] == expected
    response = await client.delete("/healthz")
    assert response.status == 405 and response.headers["Allow"] == "GET,HEAD"
