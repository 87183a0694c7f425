"""Signed inbound webhooks over real HTTP against a real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from engine.api import Engine
from engine.model import Actor, ActorKind, RunStatus
from tests.engine_helpers import Clock, engine_for
from tests.web_helpers import (
    APPROVAL_WORKFLOW,
    GITHUB_SECRET,
    STANDARD_SECRET,
    STANDARD_SECRET_NEW,
    bearer,
    github_headers,
    problem,
    standard_headers,
    stripe_headers,
    utc,
    wait_for_runs,
)
from webhooks.server import create_app
from webhooks.settings import WebSettings
from webhooks.signatures import (
    Scheme,
    SignatureError,
    StaleTimestamp,
    Verifier,
    secret_key,
    sign_github,
    sign_standard,
    sign_stripe,
)

# Published test vectors (see the report for where each was checked).
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = "1614265330"
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
GITHUB_VECTOR_BODY = b"Hello, World!"
GITHUB_VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def body_of(data: Any) -> bytes:
    return json.dumps(data).encode()


# -- the published vectors, at the function and over HTTP ------------------------------------


def test_standard_webhooks_published_vector() -> None:
    key = secret_key(Scheme.STANDARD, STANDARD_SECRET)
    assert sign_standard(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": VECTOR_TIMESTAMP,
        "webhook-signature": VECTOR_SIGNATURE,
    }
    assert Verifier(Scheme.STANDARD, [key]).verify(headers, VECTOR_BODY, now=1614265330, tolerance=300) == VECTOR_ID
    with pytest.raises(StaleTimestamp):
        Verifier(Scheme.STANDARD, [key]).verify(headers, VECTOR_BODY, now=1614265330 + 301, tolerance=300)
    with pytest.raises(SignatureError):
        Verifier(Scheme.STANDARD, [key]).verify(headers, b'{"test": 2432232315}', now=1614265330, tolerance=300)


def test_github_published_vector() -> None:
    key = GITHUB_SECRET.encode()
    assert sign_github(key, GITHUB_VECTOR_BODY) == GITHUB_VECTOR_SIGNATURE
    headers = {"X-Hub-Signature-256": GITHUB_VECTOR_SIGNATURE}
    assert Verifier(Scheme.GITHUB, [key]).verify(headers, GITHUB_VECTOR_BODY, now=0, tolerance=300) is None
    with pytest.raises(SignatureError):
        Verifier(Scheme.GITHUB, [key]).verify(headers, b"Hello, World?", now=0, tolerance=300)


@pytest.mark.parametrize("length", [1, 32, 64, 65, 200])
def test_signatures_are_the_hmac_modules_for_keys_of_every_length(length: int) -> None:
    # Keys longer than SHA-256's 64-byte block are hashed first (RFC 2104); GitHub and
    # Stripe secrets are whatever their users typed, so every length must sign alike.
    key = bytes(range(length))
    body = b'{"event": "ping"}'

    def reference(message: bytes) -> bytes:
        return hmac.new(key, message, hashlib.sha256).digest()

    assert sign_github(key, body) == "sha256=" + reference(body).hex()
    assert sign_stripe(key, 1700000000, body) == f"t=1700000000,v1={reference(b'1700000000.' + body).hex()}"
    expected = base64.b64encode(reference(b"msg_1.1700000000." + body)).decode()
    assert sign_standard(key, "msg_1", 1700000000, body) == f"v1,{expected}"


async def test_standard_vector_over_http_starts_a_run(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> None:
    # The vector was signed in 2021: an engine whose clock reads then accepts it.
    engine = engine_for(redis_conn, namespace, APPROVAL_WORKFLOW, clock=Clock(utc(1614265330 + 60)))
    client = await aiohttp_client(create_app(engine, settings))
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": VECTOR_TIMESTAMP,
        "webhook-signature": VECTOR_SIGNATURE,
    }
    response = await client.post("/webhooks/vector", data=VECTOR_BODY, headers=headers)
    assert response.status == 202, await response.text()
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    answer = await response.json()
    assert answer["status_url"] == f"/v1/runs/{answer['run_id']}"
    assert answer["status"] == "accepted"
    (run,) = await wait_for_runs(engine, 1)
    assert run.run_id == answer["run_id"]
    assert run.inputs["service"] == "svc-2432232314"
    assert run.trigger["delivery_id"] == VECTOR_ID
    assert run.started_by.ref == "webhook:vector"


async def test_github_vector_passes_the_signature_then_is_refused_as_not_json(client: TestClient) -> None:
    headers = {"X-Hub-Signature-256": GITHUB_VECTOR_SIGNATURE, "X-GitHub-Event": "push"}
    response = await client.post("/webhooks/github", data=GITHUB_VECTOR_BODY, headers=headers)
    document = await problem(response, 400)
    assert "line 1, column 1" in document["detail"]
    assert (document["line"], document["column"]) == (1, 1)


# -- each scheme end to end -------------------------------------------------------------------


async def test_github_push_starts_a_run_and_other_events_are_ignored(
    client: TestClient, web_engine: Engine
) -> None:
    body = body_of({"repository": {"name": "billing"}, "ref": "refs/heads/main"})
    response = await client.post("/webhooks/github", data=body, headers=github_headers(body, "gh-1"))
    assert response.status == 202
    (run,) = await wait_for_runs(web_engine, 1)
    assert run.run_id == (await response.json())["run_id"]
    assert run.inputs == {"service": "billing", "replicas": 1}

    ping = body_of({"zen": "Keep it logically awesome."})
    response = await client.post(
        "/webhooks/github", data=ping, headers=github_headers(ping, "gh-2", event="ping")
    )
    assert response.status == 200
    assert (await response.json())["status"] == "ignored"
    assert len(await wait_for_runs(web_engine, 2, timeout=0.5)) == 1


async def test_stripe_delivery_wakes_the_waiting_run_once(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    waiting = web_engine.start("settle", {"payment": "pi_123"}, _api())
    assert waiting.steps["paid"].status.value == "waiting"
    body = body_of({"id": "evt_1", "type": "payment.succeeded", "data": {"object": {"id": "pi_123"}}})
    response = await client.post("/webhooks/payments", data=body, headers=stripe_headers(body, clock.now))
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["run_ids"] == [waiting.run_id] and answer["duplicate"] is False
    assert web_engine.get_run(waiting.run_id).status is RunStatus.COMPLETED

    again = await client.post("/webhooks/payments", data=body, headers=stripe_headers(body, clock.now))
    assert again.status == 202
    repeated = await again.json()
    assert repeated["duplicate"] is True and repeated["run_ids"] == [waiting.run_id]


async def test_stripe_bad_and_stale_signatures(client: TestClient, clock: Clock) -> None:
    body = body_of({"id": "evt_2", "type": "x", "data": {"object": {"id": "y"}}})
    forged = await client.post(
        "/webhooks/payments", data=body, headers=stripe_headers(body, clock.now, "other")
    )
    assert (await problem(forged, 401))["type"].endswith("bad-signature")
    old = clock.now - timedelta(minutes=6)
    stale = await client.post("/webhooks/payments", data=body, headers=stripe_headers(body, old))
    assert (await problem(stale, 401))["type"].endswith("stale-timestamp")


# -- Standard Webhooks: rotation, staleness, replays ------------------------------------------


async def test_rotation_accepts_either_secret_and_several_signatures(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    body = body_of({"service": "api"})
    for msg_id, secret in (("m-old", STANDARD_SECRET), ("m-new", STANDARD_SECRET_NEW)):
        response = await client.post(
            "/webhooks/releases", data=body, headers=standard_headers(body, secret, msg_id, clock.now)
        )
        assert response.status == 202, await response.text()
    headers = standard_headers(body, STANDARD_SECRET_NEW, "m-both", clock.now)
    headers["webhook-signature"] = "v1,bm90IGl0 v2,Zm9v " + headers["webhook-signature"]
    response = await client.post("/webhooks/releases", data=body, headers=headers)
    assert response.status == 202
    assert len(await wait_for_runs(web_engine, 3)) == 3


@pytest.mark.parametrize("skew", [-301, 301])
async def test_timestamps_more_than_five_minutes_off_are_refused(
    client: TestClient, clock: Clock, skew: int
) -> None:
    body = body_of({"service": "api"})
    headers = standard_headers(body, at=clock.now + timedelta(seconds=skew))
    document = await problem(await client.post("/webhooks/releases", data=body, headers=headers), 401)
    assert "seconds off" in document["detail"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda h: h.pop("webhook-signature"), "The webhook-signature header is missing."),
        (lambda h: h.pop("webhook-id"), "The webhook-id header is missing."),
        (lambda h: h.pop("webhook-timestamp"), "The webhook-timestamp header is missing."),
        (lambda h: h.update({"webhook-id": ""}), "The webhook-id header is missing."),
        (lambda h: h.update({"webhook-signature": "v1,AAAA"}), "does not match the body"),
        (lambda h: h.update({"webhook-id": "msg_other"}), "does not match the body"),
        (lambda h: h.update({"webhook-timestamp": "yesterday"}), "is not a Unix time in seconds"),
    ],
    ids=["no-signature", "no-id", "no-timestamp", "empty-id", "wrong-signature", "other-id", "bad-timestamp"],
)
async def test_bad_or_missing_signature_is_401(
    client: TestClient, web_engine: Engine, clock: Clock, change: Any, says: str
) -> None:
    body = body_of({"service": "api"})
    headers = standard_headers(body, at=clock.now)
    change(headers)
    document = await problem(await client.post("/webhooks/releases", data=body, headers=headers), 401)
    assert says in document["detail"]
    assert web_engine.list_runs().runs == []


async def test_tampered_body_is_401(client: TestClient, clock: Clock) -> None:
    headers = standard_headers(body_of({"service": "api"}), at=clock.now)
    response = await client.post("/webhooks/releases", data=body_of({"service": "evil"}), headers=headers)
    await problem(response, 401)


async def test_a_delivery_seen_before_answers_the_original_run(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    body = body_of({"service": "api"})
    headers = standard_headers(body, msg_id="msg_replayed", at=clock.now)
    first = await (await client.post("/webhooks/releases", data=body, headers=headers)).json()
    clock.advance(30)
    headers = standard_headers(body, msg_id="msg_replayed", at=clock.now)  # re-signed retry
    second = await client.post("/webhooks/releases", data=body, headers=headers)
    assert second.status == 202
    answer = await second.json()
    assert answer["run_id"] == first["run_id"]
    assert (first["duplicate"], answer["duplicate"]) == (False, True)
    assert [r.run_id for r in await wait_for_runs(web_engine, 2, timeout=0.5)] == [first["run_id"]]


# -- bad input ----------------------------------------------------------------------------------


async def test_a_source_starting_an_unknown_workflow_is_left_out_loudly(
    aiohttp_client: Any, web_engine: Engine, settings: WebSettings, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    settings.sources_file.write_text(
        settings.sources_file.read_text()
        + "  retired:\n    scheme: standard\n    secrets: [TEST_STANDARD_SECRET]\n"
        + "    start: {workflow: no-such-workflow}\n"
    )
    client = await aiohttp_client(create_app(web_engine, settings))
    assert any(
        r.getMessage() == "webhook source disabled: unknown workflow" and r.__dict__["source"] == "retired"
        for r in caplog.records
    )
    body = body_of({"service": "api"})
    refused = await client.post("/webhooks/retired", data=body, headers=standard_headers(body, at=clock.now))
    assert (await problem(refused, 404))["type"].endswith("unknown-source")
    served = await client.post("/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now))
    assert served.status == 202, await served.text()
    (run,) = await wait_for_runs(web_engine, 1)
    assert run.workflow_id == "release"


async def test_unknown_source_is_404(client: TestClient) -> None:
    document = await problem(await client.post("/webhooks/nobody", data=b"{}"), 404)
    assert "nobody" in document["detail"]


async def test_a_source_without_secrets_is_not_served(client: TestClient) -> None:
    await problem(await client.post("/webhooks/unset", data=b"{}"), 404)


async def test_body_over_the_limit_is_413(client: TestClient, clock: Clock) -> None:
    big = body_of({"id": "evt", "type": "t", "data": {"object": {"id": "x" * 3000}}})
    response = await client.post("/webhooks/payments", data=big, headers=stripe_headers(big, clock.now))
    await problem(response, 413)

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(3):
            yield b"x" * 1000

    response = await client.post("/webhooks/payments", data=chunks(), headers=stripe_headers(b"", clock.now))
    await problem(response, 413)


async def test_default_limit_is_one_mebibyte(client: TestClient, clock: Clock) -> None:
    big = b'{"service": "' + b"a" * (1024 * 1024) + b'"}'
    response = await client.post("/webhooks/releases", data=big, headers=standard_headers(big, at=clock.now))
    await problem(response, 413)


async def test_malformed_json_is_400_with_line_and_column(client: TestClient, clock: Clock) -> None:
    body = b'{\n  "service": "api",\n  "replicas": 2,,\n}'
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    document = await problem(response, 400)
    assert "line 3, column 17" in document["detail"]


async def test_integers_past_64_bits_reach_the_run_exactly(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    # orjson, which reads most payloads, would read this one as a float; it must not.
    body = b'{"service": "api", "replicas": 1180591620717411303424}'
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    assert response.status == 202, await response.text()
    (run,) = await wait_for_runs(web_engine, 1)
    assert run.inputs["replicas"] == 2**70


async def test_a_number_too_large_for_a_float_is_400(client: TestClient, clock: Clock) -> None:
    body = b'{"service": "api", "replicas": 1.5e400}'
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    document = await problem(response, 400)
    assert "1.5e400" in document["detail"] and "too large" in document["detail"]


async def test_payload_not_matching_the_inputs_is_422_naming_the_field(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    body = body_of({"service": "api", "replicas": "many"})
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    document = await problem(response, 422)
    assert [e["field"] for e in document["errors"]] == ["inputs.replicas"]
    assert "integer" in document["errors"][0]["message"]

    body = body_of({"name": "api"})  # the mapping reads payload.service, which is missing
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, msg_id="m2", at=clock.now)
    )
    document = await problem(response, 422)
    assert document["errors"][0]["field"] == "inputs.service"
    assert document["errors"][0]["message"] == "inputs.service: 'dict object' has no attribute 'service'"
    assert web_engine.list_runs().runs == []


async def test_deliveries_are_counted_by_outcome_in_metrics(client: TestClient, clock: Clock) -> None:
    body = body_of({"service": "api"})
    await client.post("/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now))
    await client.post("/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now))
    await client.post("/webhooks/releases", data=b"{}", headers=standard_headers(body, at=clock.now))
    await client.post("/webhooks/ghost", data=b"{}")
    text = await (await client.get("/metrics")).text()
    assert 'switchboard_webhook_deliveries_total{outcome="accepted",source="releases"} 1.0' in text
    assert 'switchboard_webhook_deliveries_total{outcome="duplicate",source="releases"} 1.0' in text
    assert 'switchboard_webhook_deliveries_total{outcome="bad_signature",source="releases"} 1.0' in text
    assert 'switchboard_webhook_deliveries_total{outcome="unknown_source",source="_unknown"} 1.0' in text


async def test_webhooks_need_no_bearer_token_and_tokens_do_not_replace_signatures(client: TestClient) -> None:
    response = await client.post("/webhooks/releases", data=b"{}", headers=bearer("admin"))
    await problem(response, 401)


def _api() -> Actor:
    return Actor(kind=ActorKind.API, id="tester")
