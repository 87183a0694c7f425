"""The OpenAPI document: valid (openapi-spec-validator), complete (a schema for every answer,
generated from the models the handlers serialize with), and true: real answers of a served app
validate against it, statuses are the ones served, Idempotency-Key keeps its word."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.web_helpers import bearer


async def document_of(client: TestClient) -> dict[str, Any]:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


def check(document: dict[str, Any], path: str, method: str, status: int, answer: Any) -> None:
    """``answer`` is what the document says ``method path`` answers with ``status``."""
    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer)]
    assert not errors, f"{method.upper()} {path} {status}: {errors[:5]}"


async def test_the_document_is_valid_and_every_answer_has_a_schema(client: TestClient) -> None:
    document = await document_of(client)
    validate(document)  # raises on any problem, duplicate operationIds among them
    operations = [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]
    ids = Counter(op["operationId"] for _, _, op in operations)
    assert [name for name, count in ids.items() if count > 1] == []
    for path, method, op in operations:
        for status, response in op["responses"].items():
            if status.startswith("2"):
                [content] = response["content"].values()
                assert content.get("schema"), f"{method} {path} {status} has no schema"
    bodies = {
        (path, method): op["requestBody"]["required"]
        for path, method, op in operations
        if "requestBody" in op and path.startswith("/v1/")
    }
    assert bodies[("/v1/workflows/{workflow_id}/command", "post")] is True  # `command` is needed
    assert bodies[("/v1/runs/{run_id}/tasks/{task_id}/complete", "post")] is True
    assert bodies[("/v1/workflows/{workflow_id}/runs", "post")] is False  # {} starts a run without inputs
    command = document["paths"]["/v1/workflows/{workflow_id}/command"]["post"]
    assert {"200", "201"} <= set(command["responses"])  # start answers 201, the others 200
    headers = [p["name"] for p in command["parameters"] if p["in"] == "header"]
    assert headers == ["Idempotency-Key"]


async def test_served_answers_match_the_document(client: TestClient) -> None:
    document = await document_of(client)
    started = await client.post(
        "/v1/workflows/release/command",
        json={"command": "start", "params": {"inputs": {"service": "api"}}},
        headers=bearer("operator"),
    )
    assert started.status == 201
    run = await started.json()
    check(document, "/v1/workflows/{workflow_id}/command", "post", 201, run)
    run_id = run["run_id"]

    answers = {
        "/v1/runs": "/v1/runs",
        f"/v1/runs/{run_id}": "/v1/runs/{run_id}",
        f"/v1/workflows/release/runs/{run_id}": "/v1/workflows/{workflow_id}/runs/{run_id}",
        f"/v1/runs/{run_id}/events": "/v1/runs/{run_id}/events",
        f"/v1/runs/{run_id}/context": "/v1/runs/{run_id}/context",
        "/v1/tasks/pending": "/v1/tasks/pending",
        "/v1/questions": "/v1/questions",
        f"/v1/runs/{run_id}/questions": "/v1/runs/{run_id}/questions",
        "/v1/workflows": "/v1/workflows",
        "/v1/workflows/release": "/v1/workflows/{workflow_id}",
        "/v1/workflows/release/runs": "/v1/workflows/{workflow_id}/runs",
        "/v1/command-center": "/v1/command-center",
    }
    for url, path in answers.items():
        response = await client.get(url, headers=bearer("viewer"))
        assert response.status == 200, (url, await response.text())
        check(document, path, "get", 200, await response.json())

    elsewhere = await client.get(f"/v1/workflows/settle/runs/{run_id}", headers=bearer("viewer"))
    assert elsewhere.status == 404  # a run is found under its own workflow only

    decided = await client.post(
        f"/v1/runs/{run_id}/tasks/approve/complete", json={"approved": True}, headers=bearer("approver")
    )
    assert decided.status == 200
    check(document, "/v1/runs/{run_id}/tasks/{task_id}/complete", "post", 200, await decided.json())


async def test_a_retried_start_or_replay_with_an_idempotency_key_starts_nothing_twice(
    client: TestClient,
) -> None:
    async def post(url: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        response = await client.post(url, json=body, headers={**bearer("admin"), "Idempotency-Key": key})
        return response.status, await response.json()

    first = await post("/v1/workflows/release/runs", {"inputs": {"service": "api"}}, "deploy-42")
    again = await post("/v1/workflows/release/runs", {"inputs": {"service": "api"}}, "deploy-42")
    assert first[0] == again[0] == 201
    assert again[1]["run_id"] == first[1]["run_id"]
    command = await post(
        "/v1/workflows/release/command",
        {"command": "start", "params": {"inputs": {"service": "db"}}},
        "cmd-7",
    )
    command_again = await post(
        "/v1/workflows/release/command",
        {"command": "start", "params": {"inputs": {"service": "db"}}},
        "cmd-7",
    )
    assert command[1]["run_id"] == command_again[1]["run_id"] != first[1]["run_id"]
    listed = await (await client.get("/v1/runs", headers=bearer("viewer"))).json()
    assert len(listed["runs"]) == 2

    run_id = first[1]["run_id"]
    stop = {"command": "stop", "run_id": run_id}
    assert (
        await client.post("/v1/workflows/release/command", json=stop, headers=bearer("admin"))
    ).status == 200
    replay = await post(f"/v1/runs/{run_id}/replay", {}, "replay-1")
    replay_again = await post(f"/v1/runs/{run_id}/replay", {}, "replay-1")
    assert replay[0] == replay_again[0] == 201 and replay[1]["run_id"] == replay_again[1]["run_id"]
    original = await (await client.get(f"/v1/runs/{run_id}", headers=bearer("viewer"))).json()
    assert original["replays"] == [replay[1]["run_id"]]  # linked once

    bad = await client.post(
        "/v1/workflows/release/runs", json={}, headers={**bearer("admin"), "Idempotency-Key": "x" * 256}
    )
    assert bad.status == 400 and "Idempotency-Key" in (await bad.json())["detail"]


async def test_the_reference_page_is_the_document_rendered_without_scripts(client: TestClient) -> None:
    document = await document_of(client)
    page = await client.get("/v1/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert f'id="{operation["operationId"]}"' in html and path in html
    assert 'id="schema-RunDocument"' in html and "<code>short_id</code>" in html
    assert "<script" not in html and "https://" not in html  # nothing fetched from elsewhere


async def test_a_rejected_run_says_so_beside_completed(client: TestClient) -> None:
    outcomes = {}
    for service, approved in (("api", True), ("db", False)):
        started = await client.post(
            "/v1/workflows/release/runs", json={"inputs": {"service": service}}, headers=bearer("operator")
        )
        run_id = (await started.json())["run_id"]
        decided = await client.post(
            f"/v1/runs/{run_id}/tasks/approve/complete",
            json={"approved": approved},
            headers=bearer("approver"),
        )
        run = await decided.json()
        assert run["status"] == "completed"
        outcomes[run_id] = run["outcome"]
    assert sorted(outcomes.values()) == ["rejected", "succeeded"]
    listed = await (await client.get("/v1/runs", headers=bearer("viewer"))).json()
    assert {r["run_id"]: r["outcome"] for r in listed["runs"]} == outcomes
