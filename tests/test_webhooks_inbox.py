"""The webhook inbox: accepted deliveries become runs, even across a dead consumer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from engine.api import Engine
from engine.model import Actor, ActorKind
from tests.engine_helpers import Clock
from tests.web_helpers import bearer, standard_headers, wait_for_runs
from webhooks.context import CONTEXT
from webhooks.inbox import GROUP, inbox_key

HOOK = Actor(kind=ActorKind.WEBHOOK, id="releases")


async def test_the_status_url_shows_the_run_once_started(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    body = json.dumps({"service": "api"}).encode()
    answer = await (
        await client.post("/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now))
    ).json()
    assert answer["status"] == "accepted"
    await wait_for_runs(web_engine, 1)
    response = await client.get(answer["status_url"], headers=bearer("viewer"))
    assert response.status == 200
    run = await response.json()
    assert run["run_id"] == answer["run_id"] and run["trigger"]["source"] == "releases"


async def test_an_accepted_run_that_cannot_start_says_why(client: TestClient) -> None:
    inbox = client.app[CONTEXT].inbox
    # The handler validates inputs before accepting; this stands for a workflow changed meanwhile.
    accepted = await inbox.accept("releases", "d-9", "release", {"replicas": 2}, HOOK, {"kind": "webhook"})
    document: dict[str, Any] = {}
    for _ in range(200):
        response = await client.get(f"/v1/runs/{accepted.run_id}", headers=bearer("viewer"))
        document = await response.json()
        if document.get("status") == "failed_to_start":
            break
        await asyncio.sleep(0.02)
    assert response.status == 202
    assert document["status"] == "failed_to_start" and "service" in document["error"]


async def test_entries_left_by_a_dead_consumer_are_claimed_and_started(
    client: TestClient, web_engine: Engine
) -> None:
    ctx = client.app[CONTEXT]
    ctx.inbox.claim_idle_ms = 50
    # A consumer that read an entry and died before starting its run.
    entry = {
        "run_id": "feedface00000001",
        "workflow_id": "release",
        "inputs": {"service": "orphan"},
        "actor": HOOK.model_dump(mode="json"),
        "trigger": {"kind": "webhook"},
        "idempotency_key": "inbox:feedface00000001",
    }
    key = inbox_key(web_engine.keys)
    await ctx.inbox.ensure_group()
    async with ctx.aredis.pipeline(transaction=True) as pipe:  # the dead one gets it, not the live one
        pipe.xadd(key, {"start": json.dumps(entry)})
        pipe.xreadgroup(GROUP, "dead-consumer", {key: ">"}, count=1)
        _, read = await pipe.execute()
    assert read, "the dead consumer must hold the entry"
    runs = await wait_for_runs(web_engine, 1)
    assert [r.run_id for r in runs] == ["feedface00000001"]
    assert await ctx.aredis.xlen(key) == 0
