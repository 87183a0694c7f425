"""The intake: accepted webhook starts become runs, once each, even across a dead starter."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from engine import intake
from engine.api import Engine
from engine.intake import GROUP, Intake, StartRequest
from engine.model import Actor, ActorKind
from tests.engine_helpers import Clock
from tests.web_helpers import ENVIRONMENT, bearer, standard_headers, wait_for_runs, web_settings
from webhooks.context import CONTEXT
from webhooks.server import create_app

HOOK = Actor(kind=ActorKind.WEBHOOK, id="releases")


async def deliver(client: TestClient, service: str, msg_id: str, clock: Clock) -> dict[str, Any]:
    body = json.dumps({"service": service}).encode()
    headers = standard_headers(body, msg_id=msg_id, at=clock.now)
    response = await client.post("/webhooks/releases", data=body, headers=headers)
    assert response.status == 202, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def test_the_status_url_shows_the_run_once_started(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    answer = await deliver(client, "api", "msg_1", clock)
    assert answer["status"] == "accepted"
    await wait_for_runs(web_engine, 1)
    response = await client.get(answer["status_url"], headers=bearer("viewer"))
    assert response.status == 200
    run = await response.json()
    assert run["run_id"] == answer["run_id"] and run["trigger"]["source"] == "releases"


async def test_concurrent_deliveries_are_accepted_together_and_each_id_starts_one_run(
    client: TestClient, web_engine: Engine, clock: Clock
) -> None:
    # 40 deliveries at once share Redis round trips; the 10 repeated ids must still dedupe,
    # also when a repeat travels in the same batch as its original.
    msg_ids = [f"msg_{i}" for i in range(30)] + [f"msg_{i}" for i in range(10)]
    answers = await asyncio.gather(*(deliver(client, f"svc-{m}", m, clock) for m in msg_ids))
    by_msg: dict[str, set[str]] = {}
    for msg_id, answer in zip(msg_ids, answers, strict=True):
        by_msg.setdefault(msg_id, set()).add(answer["run_id"])
    assert all(len(ids) == 1 for ids in by_msg.values())
    assert sum(answer["duplicate"] for answer in answers) == 10
    runs = await wait_for_runs(web_engine, 30)
    await asyncio.sleep(0.2)  # a wrongly accepted duplicate would show up as a 31st run by now
    runs = (await asyncio.to_thread(web_engine.list_runs)).runs
    assert sorted(r.run_id for r in runs) == sorted(ids.pop() for ids in by_msg.values())
    assert {r.inputs["service"] for r in runs} == {f"svc-msg_{i}" for i in range(30)}


async def test_an_accepted_run_that_cannot_start_says_why(client: TestClient) -> None:
    acceptor = client.app[CONTEXT].acceptor
    # The handler validates inputs before accepting; this stands for a workflow changed meanwhile.
    accepted = await acceptor.accept(StartRequest("release", {"replicas": 2}, HOOK, {"kind": "webhook"}))
    document: dict[str, Any] = {}
    for _ in range(200):
        response = await client.get(f"/v1/runs/{accepted.run_id}", headers=bearer("viewer"))
        document = await response.json()
        if document.get("status") == "failed_to_start":
            break
        await asyncio.sleep(0.02)
    assert response.status == 202
    assert document["status"] == "failed_to_start" and "service" in document["error"]


async def test_batches_are_cut_by_count_and_by_bytes_and_never_empty(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    acceptor = client.app[CONTEXT].acceptor
    sent: list[int] = []  # requests per Redis call
    call = acceptor._call

    async def counted(script_keys: list[str], args: list[str | bytes | int]) -> Any:
        sent.append((len(script_keys) - 1) // 2)
        return await call(script_keys, args)

    def request(service: str) -> StartRequest:
        return StartRequest("release", {"service": service}, HOOK)

    monkeypatch.setattr(acceptor, "_call", counted)
    monkeypatch.setattr(intake, "MAX_BATCH", 4)
    await asyncio.gather(*(acceptor.accept(request("a")) for _ in range(10)))
    assert sent == [4, 4, 2]
    # Two small requests fit the byte limit, a third (large) does not: it goes next, alone,
    # and so does a second large one, past the limit by itself.
    sent.clear()
    small, large = request("a"), request("b" * 600)
    monkeypatch.setattr(intake, "MAX_BATCH_BYTES", len(small.to_json()) * 2 + 10)
    requests = [small, request("a"), large, request("c" * 600)]
    answers = await asyncio.gather(*(acceptor.accept(r) for r in requests))
    assert sent == [2, 1, 1]
    assert [a.run_id for a in answers] == [r.run_id for r in requests]


def test_requests_left_by_a_dead_starter_are_claimed_and_started(web_engine: Engine) -> None:
    intake = Intake(web_engine, claim_idle_ms=50)
    intake.ensure_group()
    [accepted] = intake.accept([StartRequest("release", {"service": "orphan"}, HOOK)])
    # A starter that read the request and died before starting its run.
    read: Any = web_engine.redis.xreadgroup(GROUP, "dead-starter", {web_engine.keys.intake: ">"}, count=1)
    assert read, "the dead starter must hold the request"
    assert intake.start_next("live-starter", block_ms=0) == 0  # not idle long enough yet
    assert intake.waiting_for() == 0
    time.sleep(0.1)  # the dead starter stays silent past claim_idle_ms
    assert intake.waiting_for() >= 0.05, "a request held by a silent starter counts as waiting"
    assert intake.start_next("live-starter", block_ms=0) == 1
    assert [r.run_id for r in web_engine.list_runs().runs] == [accepted.run_id]
    assert web_engine.redis.xlen(web_engine.keys.intake) == 0
    assert intake.request(accepted.run_id) is None and intake.waiting_for() == 0


def test_starting_a_request_twice_makes_one_run(web_engine: Engine) -> None:
    intake = Intake(web_engine)
    request = StartRequest("release", {"service": "api"}, HOOK, delivery="releases:msg_7")
    intake.accept([request])
    # As if a starter started it, then died before acknowledging, and another one started it again.
    intake.ensure_group()
    web_engine.redis.xadd(web_engine.keys.intake, {"start": request.to_json()})
    assert intake.start_next("one", block_ms=0) == 2
    assert [r.run_id for r in web_engine.list_runs().runs] == [request.run_id]


async def test_with_workers_expected_the_web_process_starts_only_what_waited_too_long(
    aiohttp_client: Any, web_engine: Engine, tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    settings = web_settings(tmp_path).model_copy(update={"starts_after": 0.6})
    client = await aiohttp_client(create_app(web_engine, settings))
    answer = await deliver(client, "api", "msg_standby", clock)
    await asyncio.sleep(0.3)
    pending = await client.get(answer["status_url"], headers=bearer("viewer"))
    assert pending.status == 202 and (await pending.json())["status"] == "accepted"
    intake = client.app[CONTEXT].intake
    assert 0 < await asyncio.to_thread(intake.waiting_for) < 0.6
    assert "\nswitchboard_intake_waiting 1.0\n" in await (await client.get("/metrics")).text()
    # No worker took it: the standby starter steps in once it has waited 0.6 s.
    runs = await wait_for_runs(web_engine, 1, timeout=5)
    assert [r.run_id for r in runs] == [answer["run_id"]]
    for _ in range(100):  # the entry leaves the intake just after its run exists
        if "\nswitchboard_intake_waiting 0.0\n" in await (await client.get("/metrics")).text():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the started request stayed in the intake")


def test_a_request_that_breaks_the_starter_fails_alone_and_the_others_start(
    web_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = Intake(web_engine)
    intake.ensure_group()
    doomed, fine = (StartRequest("release", {"service": s}, HOOK) for s in ("doomed", "fine"))
    intake.accept([doomed])
    web_engine.redis.xadd(web_engine.keys.intake, {"start": "{not json"})  # unreadable: dropped
    intake.accept([fine])
    real_start = web_engine.start

    def start(workflow_id: str, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if inputs.get("service") == "doomed":
            raise RuntimeError("a bug")
        return real_start(workflow_id, inputs, *args, **kwargs)

    monkeypatch.setattr(web_engine, "start", start)
    assert intake.start_next("starter", block_ms=0) == 3
    assert [r.run_id for r in web_engine.list_runs().runs] == [fine.run_id]
    failed = intake.request(doomed.run_id)
    assert failed is not None and failed.status == "failed_to_start" and "logs" in (failed.error or "")
    assert web_engine.redis.xlen(web_engine.keys.intake) == 0 and intake.waiting_for() == 0


async def test_large_requests_are_accepted_in_calls_of_bounded_size(client: TestClient) -> None:
    acceptor = client.app[CONTEXT].acceptor
    sent: list[int] = []
    script = acceptor._script

    async def counting(keys: list[str], args: list[Any]) -> Any:
        sent.append(sum(len(str(a)) for a in args))
        return await script(keys=keys, args=args)

    acceptor._script = counting
    big = "x" * 400_000  # three of these would make a call larger than 1 MiB
    requests = [StartRequest("release", {"service": f"{i}{big}"}, HOOK) for i in range(8)]
    accepted = await asyncio.gather(*(acceptor.accept(r) for r in requests))
    assert [a.run_id for a in accepted] == [r.run_id for r in requests]
    assert len(sent) >= 4 and all(size < 1_000_000 for size in sent)
