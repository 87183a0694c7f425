"""The REST API over real HTTP against a real Redis: happy paths, error mapping, roles."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

import engine.api
from engine.api import Engine
from engine.model import Actor, ActorKind
from tests.web_helpers import TOKENS, bearer, problem, standard_headers
from webhooks.openapi import build_openapi, documented_routes
from webhooks.settings import WebSettings

OPS = Actor(kind=ActorKind.API, id="ops-bot")


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    return await response.json()


async def start(
    client: TestClient, service: str = "api", role: str = "operator", **inputs: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v1/workflows/release/runs", json={"inputs": {"service": service, **inputs}}, headers=bearer(role)
    )
    run: dict[str, Any] = await ok(response, 201)
    return run


# -- authentication and roles ----------------------------------------------------------------


async def test_no_token_or_a_wrong_token_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKENS['admin']}"}):
        response = await client.get("/v1/runs", headers=headers)
        await problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", set()),
        ("operator", {"start"}),
        ("approver", {"complete"}),
        ("admin", {"start", "complete"}),
    ],
)
async def test_roles_decide_what_a_token_may_do(
    client: TestClient, web_engine: Engine, role: str, allowed: set[str]
) -> None:
    assert (await client.get("/v1/runs", headers=bearer(role))).status == 200
    response = await client.post(
        "/v1/workflows/release/runs", json={"inputs": {"service": "a"}}, headers=bearer(role)
    )
    if "start" in allowed:
        await ok(response, 201)
    else:
        assert (await problem(response, 403))["required_role"] == "operator"
    run = web_engine.start("release", {"service": "b"}, OPS)
    response = await client.post(
        f"/v1/runs/{run.run_id}/tasks/approve/complete", json={"approved": True}, headers=bearer(role)
    )
    if "complete" in allowed:
        await ok(response)
    else:
        assert (await problem(response, 403))["required_role"] == "approver"


async def test_actions_are_recorded_as_the_token_name(client: TestClient, web_engine: Engine) -> None:
    run = await start(client)
    assert run["started_by"] == {"kind": "api", "id": "ops-bot", "name": None}


# -- runs ------------------------------------------------------------------------------------


async def test_start_then_read_the_run_by_id_and_prefix(client: TestClient) -> None:
    run = await start(client, replicas="3")
    assert run["inputs"] == {"service": "api", "replicas": 3}
    assert run["status"] == "running" and run["steps"]["approve"]["status"] == "waiting"
    by_id = await ok(await client.get(f"/v1/runs/{run['run_id']}", headers=bearer("viewer")))
    by_prefix = await ok(await client.get(f"/v1/runs/{run['run_id'][:8]}", headers=bearer("viewer")))
    assert by_id["run_id"] == by_prefix["run_id"] == run["run_id"]


async def test_unknown_run_is_404_and_an_ambiguous_prefix_400_with_candidates(
    client: TestClient, web_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await problem(await client.get("/v1/runs/0123456789abcdef", headers=bearer("viewer")), 404)
    ids = iter(["abcdef0011111111", "abcdef0022222222"])
    monkeypatch.setattr(engine.api, "new_run_id", lambda: next(ids))
    for _ in range(2):
        web_engine.start("release", {"service": "x"}, OPS)
    document = await problem(await client.get("/v1/runs/abcdef00", headers=bearer("viewer")), 400)
    assert sorted(document["candidates"]) == ["abcdef0011111111", "abcdef0022222222"]


async def test_list_runs_filters_and_pages(client: TestClient, web_engine: Engine, clock: Any) -> None:
    runs = []
    for name in ("a", "b", "c"):
        runs.append(web_engine.start("release", {"service": name}, OPS))
        clock.advance(1)
    web_engine.stop(runs[0].run_id, OPS)
    page = await ok(await client.get("/v1/runs?limit=1&status=running", headers=bearer("viewer")))
    assert [r["run_id"] for r in page["runs"]] == [runs[2].run_id]
    page2 = await ok(await client.get(page["next"], headers=bearer("viewer")))
    assert [r["run_id"] for r in page2["runs"]] == [runs[1].run_id] and page2["next_cursor"] is None
    stopped = await ok(await client.get("/v1/runs?status=stopped&workflow=release", headers=bearer("viewer")))
    assert [r["run_id"] for r in stopped["runs"]] == [runs[0].run_id]
    since = runs[1].created_at.isoformat()
    recent = await ok(await client.get("/v1/runs", params={"since": since}, headers=bearer("viewer")))
    assert {r["run_id"] for r in recent["runs"]} == {runs[1].run_id, runs[2].run_id}
    prefixed = await ok(await client.get(f"/v1/runs?prefix={runs[0].run_id[:5]}", headers=bearer("viewer")))
    assert runs[0].run_id in [r["run_id"] for r in prefixed["runs"]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
        ("since=2026-01-01T00:00", "since"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_list_queries_are_422_naming_the_field(client: TestClient, query: str, field: str) -> None:
    document = await problem(await client.get(f"/v1/runs?{query}", headers=bearer("viewer")), 422)
    assert [e["field"] for e in document["errors"]] == [field]


async def test_events_and_context(client: TestClient) -> None:
    run = await start(client)
    events = (await ok(await client.get(f"/v1/runs/{run['run_id']}/events", headers=bearer("viewer"))))[
        "events"
    ]
    assert [e["type"] for e in events][:2] == ["run_queued", "run_started"]
    later = await ok(
        await client.get(f"/v1/runs/{run['run_id']}/events?after={events[0]['id']}", headers=bearer("viewer"))
    )
    assert later["events"] == events[1:]
    context = await ok(await client.get(f"/v1/runs/{run['run_id']}/context", headers=bearer("viewer")))
    assert context["inputs"]["service"] == "api"
    assert context["steps"]["approve"]["status"] == "waiting"


async def test_the_consoles_per_workflow_run_paths(client: TestClient) -> None:
    run_id = (await start(client))["run_id"]
    under = f"/v1/workflows/release/runs/{run_id}"
    events = (await ok(await client.get(f"{under}/events", headers=bearer("viewer"))))["events"]
    assert events[0]["type"] == "run_queued"
    context = await ok(await client.get(f"{under}/context", headers=bearer("viewer")))
    assert context["steps"]["approve"]["status"] == "waiting"
    tasks = (await ok(await client.get(f"{under}/tasks/pending", headers=bearer("viewer"))))["tasks"]
    assert [t["task_id"] for t in tasks] == ["approve"]
    for tail in ("events", "context", "tasks/pending"):
        wrong = await client.get(f"/v1/workflows/settle/runs/{run_id}/{tail}", headers=bearer("viewer"))
        await problem(wrong, 404)


# -- commands ---------------------------------------------------------------------------------


async def command(client: TestClient, body: dict[str, Any], workflow: str = "release") -> Any:
    return await client.post(f"/v1/workflows/{workflow}/command", json=body, headers=bearer("operator"))


async def test_commands_start_pause_resume_and_stop(client: TestClient) -> None:
    run = await ok(await command(client, {"command": "start", "params": {"inputs": {"service": "api"}}}), 201)
    run_id = run["run_id"]
    assert (await ok(await command(client, {"command": "pause", "run_id": run_id})))["status"] == "paused"
    assert (await ok(await command(client, {"command": "resume", "run_id": run_id[:8]})))[
        "status"
    ] == "running"
    stopped = await ok(
        await command(client, {"command": "stop", "run_id": run_id, "params": {"mode": "immediate"}})
    )
    assert stopped["status"] == "stopped" and stopped["failure"]["code"] == "RUN_STOPPED"


async def test_graceful_stop_drains(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("settle", {"payment": "p1"}, OPS)
    answer = await ok(
        await command(
            client, {"command": "stop", "run_id": run.run_id, "params": {"mode": "graceful"}}, "settle"
        )
    )
    assert answer["status"] in ("draining", "stopped")
    assert answer["stop"]["mode"] == "graceful"


async def test_a_command_that_does_not_fit_is_409_with_the_engines_sentence(client: TestClient) -> None:
    run = await start(client)
    document = await problem(await command(client, {"command": "resume", "run_id": run["run_id"]}), 409)
    assert "Cannot resume run" in document["detail"] and "You can" in document["detail"]


async def test_a_run_of_another_workflow_is_404(client: TestClient) -> None:
    run = await start(client)
    document = await problem(
        await command(client, {"command": "pause", "run_id": run["run_id"]}, "settle"), 404
    )
    assert "not of 'settle'" in document["detail"]
    await problem(await command(client, {"command": "pause", "run_id": run["run_id"]}, "ghost"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "pause"}, ""),
        ({"command": "explode", "run_id": "x"}, "command"),
        ({"command": "stop", "run_id": "x", "params": {"mode": "gentle"}}, "params.mode"),
        ({"command": "start", "params": {"inputz": {}}}, "params.inputz"),
    ],
)
async def test_bad_command_bodies_are_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    document = await problem(await command(client, body), 422)
    assert field in [e["field"] for e in document["errors"]] or (field == "" and document["errors"])


async def test_malformed_json_is_400_and_wrong_inputs_422(client: TestClient) -> None:
    response = await client.post(
        "/v1/workflows/release/runs", data=b'{"inputs": {"service": }', headers=bearer("operator")
    )
    assert "line 1, column 24" in (await problem(response, 400))["detail"]
    response = await client.post(
        "/v1/workflows/release/runs", json={"inputs": {"replicas": "x"}}, headers=bearer("operator")
    )
    document = await problem(response, 422)
    assert {e["field"] for e in document["errors"]} == {"service", "replicas"}
    response = await client.post("/v1/workflows/release/runs", json=[1, 2], headers=bearer("operator"))
    await problem(response, 422)


# -- tasks ---------------------------------------------------------------------------------------


async def test_pending_tasks_and_completing_one(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    pending = await ok(await client.get("/v1/tasks/pending", headers=bearer("viewer")))
    assert [(t["run_id"], t["task_id"]) for t in pending["tasks"]] == [(run.run_id, "approve")]
    assert (await ok(await client.get(f"/v1/runs/{run.run_id}/tasks/pending", headers=bearer("viewer"))))[
        "tasks"
    ]
    done = await ok(
        await client.post(
            f"/v1/runs/{run.short_id}/tasks/approve/complete",
            json={"approved": True, "comment": "ship it"},
            headers=bearer("approver"),
        )
    )
    assert done["status"] == "completed"
    assert done["steps"]["approve"]["task"]["decided_by"]["id"] == "lead"
    assert (await ok(await client.get("/v1/tasks/pending", headers=bearer("viewer"))))["tasks"] == []
    again = await client.post(
        f"/v1/runs/{run.run_id}/tasks/approve/complete", json={"approved": False}, headers=bearer("admin")
    )
    document = await problem(again, 409)
    assert document["decided_by"] == "api:lead" and document["decided_at"]


async def test_the_consoles_task_path_checks_the_workflow(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    wrong = await client.post(
        f"/v1/workflows/settle/runs/{run.run_id}/tasks/approve/complete",
        json={"approved": True},
        headers=bearer("approver"),
    )
    await problem(wrong, 404)
    right = await client.post(
        f"/v1/workflows/release/runs/{run.run_id}/tasks/approve/complete",
        json={"approved": False},
        headers=bearer("approver"),
    )
    assert (await ok(right))["steps"]["approve"]["task"]["approved"] is False


async def test_the_starter_may_not_approve_their_own_run(client: TestClient) -> None:
    run = await start(client, role="admin")
    response = await client.post(
        f"/v1/runs/{run['run_id']}/tasks/approve/complete", json={"approved": True}, headers=bearer("admin")
    )
    await problem(response, 403)


async def test_complete_needs_a_boolean_decision(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    for body in ({}, {"approved": "yes"}, {"approved": True, "result": "x"}):
        response = await client.post(
            f"/v1/runs/{run.run_id}/tasks/approve/complete", json=body, headers=bearer("approver")
        )
        await problem(response, 422)
    response = await client.post(
        f"/v1/runs/{run.run_id}/tasks/nope/complete", json={"approved": True}, headers=bearer("approver")
    )
    assert response.status in (404, 409)
    await problem(response, response.status)


# -- replay, workflows, inbox ----------------------------------------------------------------


async def test_replay_a_finished_run_with_new_inputs(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api", "replicas": 2}, OPS)
    document = await problem(
        await client.post(f"/v1/runs/{run.run_id}/replay", headers=bearer("operator")), 409
    )
    assert "Cannot replay" in document["detail"]
    web_engine.stop(run.run_id, OPS)
    replay = await ok(
        await client.post(
            f"/v1/runs/{run.run_id}/replay", json={"inputs": {"replicas": 5}}, headers=bearer("operator")
        ),
        201,
    )
    assert replay["replay_of"] == run.run_id and replay["inputs"] == {"service": "api", "replicas": 5}
    assert web_engine.get_run(run.run_id).replays == [replay["run_id"]]


async def test_workflows(client: TestClient) -> None:
    listed = await ok(await client.get("/v1/workflows", headers=bearer("viewer")))
    assert [w["id"] for w in listed["workflows"]] == ["release", "settle"]
    one = await ok(await client.get("/v1/workflows/release", headers=bearer("viewer")))
    assert [s["id"] for s in one["steps"]] == ["approve", "announce"]
    document = await problem(await client.get("/v1/workflows/ghost", headers=bearer("viewer")), 404)
    assert "release" in document["detail"]
    await start(client)
    runs = await ok(await client.get("/v1/workflows/release/runs", headers=bearer("viewer")))
    assert len(runs["runs"]) == 1


async def test_command_center_has_its_sections_and_counts(client: TestClient, web_engine: Engine) -> None:
    waiting = web_engine.start("release", {"service": "api"}, OPS)
    stopped = web_engine.start("release", {"service": "old"}, OPS)
    web_engine.stop(stopped.run_id, OPS)
    center = await ok(await client.get("/v1/command-center", headers=bearer("viewer")))
    assert set(center) == {
        "counts",
        "awaiting_approval",
        "awaiting_answer",
        "stopping_gracefully",
        "running_now",
        "failed_recently",
    }
    assert [t["run_id"] for t in center["awaiting_approval"]] == [waiting.run_id]
    assert [r["run_id"] for r in center["running_now"]] == [waiting.run_id]
    assert [r["run_id"] for r in center["failed_recently"]] == [stopped.run_id]
    assert center["stopping_gracefully"] == [] and center["awaiting_answer"] == []
    assert center["counts"] == {
        "pending": 1, "questions": 0, "draining": 0, "running": 1, "failed": 1, "failed_runs": 0, "stopped_runs": 1
    }


# -- the live stream ---------------------------------------------------------------------------


async def test_stream_follows_a_run_until_it_ends(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    response = await client.get(f"/v1/runs/{run.run_id}/stream", headers=bearer("viewer"))
    assert response.status == 200 and response.content_type == "text/event-stream"
    first = await response.content.readuntil(b"\n\n")
    assert b"event: run_queued" in first
    await asyncio.to_thread(
        web_engine.complete_task, run.run_id, "approve", Actor(kind=ActorKind.API, id="lead"), True
    )
    rest = await asyncio.wait_for(response.content.read(), timeout=10)  # the server ends the stream
    types = [line.split(": ", 1)[1] for line in rest.decode().splitlines() if line.startswith("event: ")]
    assert types[-1] == "run_completed" and "task_completed" in types
    data = [json.loads(line[6:]) for line in rest.decode().splitlines() if line.startswith("data: ")]
    assert {d["run_id"] for d in data} == {run.run_id}


async def test_stream_of_a_finished_run_replays_and_ends(client: TestClient, web_engine: Engine) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    web_engine.stop(run.run_id, OPS)
    response = await client.get(f"/v1/runs/{run.run_id}/stream", headers=bearer("viewer"))
    text = (await asyncio.wait_for(response.content.read(), timeout=10)).decode()
    assert "event: run_stopped" in text
    last_id = [line[4:] for line in text.splitlines() if line.startswith("id: ")][-1]
    resumed = await client.get(
        f"/v1/runs/{run.run_id}/stream", headers={**bearer("viewer"), "Last-Event-ID": last_id}
    )
    assert await asyncio.wait_for(resumed.content.read(), timeout=10) == b""
    bad = await client.get(
        f"/v1/runs/{run.run_id}/stream", headers={**bearer("viewer"), "Last-Event-ID": "x"}
    )
    await problem(bad, 400)


# -- the document, health, metrics, unknown routes ---------------------------------------------


async def test_openapi_matches_the_routes(client: TestClient) -> None:
    document = await ok(await client.get("/v1/openapi.json"))
    assert document["openapi"].startswith("3.1")
    in_document = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    registered = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical.startswith("/v1")
    }
    documented = {(method, path) for method, path, _ in documented_routes(client.app)}
    assert registered <= documented, "every /v1 route must be declared and documented"
    assert {op for op in in_document if op[1].startswith("/v1")} == registered
    assert ("POST", "/webhooks/{source}") in in_document
    complete = document["paths"]["/v1/runs/{run_id}/tasks/{task_id}/complete"]["post"]
    assert [p["name"] for p in complete["parameters"]] == ["run_id", "task_id"]
    assert complete["x-required-role"] == "approver"
    assert complete["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompleteBody")
    assert {"approved", "decision"} <= set(document["components"]["schemas"]["CompleteBody"]["properties"])
    assert build_openapi(client.app) == document


async def test_healthz_reports_redis(client: TestClient) -> None:
    assert (await ok(await client.get("/healthz")))["redis"] == "ok"


async def test_healthz_is_503_when_redis_is_unreachable(
    aiohttp_client: Any, settings: WebSettings, web_engine: Engine, namespace: str
) -> None:
    dead = Engine(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)),
        web_engine.catalog,
        key_prefix=f"{namespace}:",
    )
    from webhooks.server import create_app

    client = await aiohttp_client(create_app(dead, settings))
    document = await problem(await client.get("/healthz"), 503)
    assert "Redis" in document["detail"]
    # Every other route says so too, with a hint to retry, instead of a bare 500.
    listing = await client.get("/v1/runs", headers=bearer("viewer"))
    assert "Redis" in (await problem(listing, 503))["detail"] and listing.headers["Retry-After"] == "1"
    body = b'{"service": "api"}'
    delivery = await client.post("/webhooks/releases", data=body, headers=standard_headers(body))
    assert "nothing was done" in (await problem(delivery, 503))["detail"]


async def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    await problem(await client.get("/v1/nothing", headers=bearer("viewer")), 404)
    response = await client.delete("/v1/runs", headers=bearer("viewer"))
    await problem(response, 405)
