"""Webhook event deliveries take effect once: a failed delivery is not remembered, a duplicate acts never.

Signed Stripe-style deliveries over real HTTP to a run waiting for the event.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from engine.api import Engine
from engine.model import Actor, ActorKind, RunStatus
from tests.engine_helpers import Clock
from tests.web_helpers import problem, stripe_headers

PAYMENT = json.dumps(
    {"id": "evt_42", "type": "payment.succeeded", "data": {"object": {"id": "pi_42"}}}
).encode()


def waiting_run(engine: Engine) -> str:
    run = engine.start("settle", {"payment": "pi_42"}, Actor(kind=ActorKind.API, id="shop"))
    assert run.steps["paid"].status.value == "waiting"
    return run.run_id


def received(engine: Engine, run_id: str) -> int:
    return len([e for e in engine.events(run_id) if e.type == "event_received"])


async def test_a_delivery_answered_503_is_delivered_by_its_retry(
    client: TestClient, web_engine: Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = waiting_run(web_engine)
    real = web_engine.store.waiting_steps
    calls: list[str] = []

    def connection_lost_once(wait_key: str) -> list[tuple[str, str]]:
        calls.append(wait_key)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        return real(wait_key)

    monkeypatch.setattr(web_engine.store, "waiting_steps", connection_lost_once)

    first = await client.post("/webhooks/payments", data=PAYMENT, headers=stripe_headers(PAYMENT, clock.now))
    assert "nothing was done" in (await problem(first, 503))["detail"]
    assert web_engine.get_run(run_id).status is RunStatus.RUNNING  # still waiting for the event

    retry = await client.post("/webhooks/payments", data=PAYMENT, headers=stripe_headers(PAYMENT, clock.now))
    assert retry.status == 202, await retry.text()
    answer = await retry.json()
    assert answer["duplicate"] is False and answer["run_ids"] == [run_id]
    assert web_engine.get_run(run_id).status is RunStatus.COMPLETED

    again = await client.post("/webhooks/payments", data=PAYMENT, headers=stripe_headers(PAYMENT, clock.now))
    assert again.status == 202
    assert (await again.json()) | {"status_urls": []} == answer | {"duplicate": True, "status_urls": []}
    assert received(web_engine, run_id) == 1


async def test_two_deliveries_of_one_id_at_once_take_effect_once(
    client: TestClient, web_engine: Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = waiting_run(web_engine)
    real = web_engine.store.waiting_steps
    inside = threading.Event()
    go_on = threading.Event()

    def slow_first(wait_key: str) -> list[tuple[str, str]]:
        if not inside.is_set():
            inside.set()
            go_on.wait(10)  # hold the first delivery until the second has arrived
        return real(wait_key)

    monkeypatch.setattr(web_engine.store, "waiting_steps", slow_first)
    once = web_engine.deliver_event_once
    entered: list[str] = []

    def counted(*args: Any) -> Any:
        entered.append(args[-1])
        return once(*args)

    monkeypatch.setattr(web_engine, "deliver_event_once", counted)

    async def deliver() -> Any:
        response = await client.post(
            "/webhooks/payments", data=PAYMENT, headers=stripe_headers(PAYMENT, clock.now)
        )
        assert response.status == 202, await response.text()
        return await response.json()

    first = asyncio.create_task(deliver())
    await asyncio.to_thread(inside.wait, 10)
    second = asyncio.create_task(deliver())
    deadline = asyncio.get_running_loop().time() + 10
    while len(entered) < 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    go_on.set()  # the second is now up against the first's claim
    answers = await asyncio.gather(first, second)

    assert sorted(a["duplicate"] for a in answers) == [False, True]
    assert [a["run_ids"] for a in answers] == [[run_id], [run_id]]
    assert received(web_engine, run_id) == 1
    assert web_engine.get_run(run_id).status is RunStatus.COMPLETED


async def test_a_run_gone_meanwhile_does_not_stop_the_others_getting_the_event(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    gone, kept = waiting_run(web_engine), waiting_run(web_engine)
    web_engine.redis.delete(web_engine.keys.run(gone))  # removed while its wait was still listed
    response = await client.post(
        "/webhooks/payments", data=PAYMENT, headers=stripe_headers(PAYMENT, clock.now)
    )
    assert response.status == 202, await response.text()
    assert (await response.json())["run_ids"] == [kept]
    assert web_engine.get_run(kept).status is RunStatus.COMPLETED
