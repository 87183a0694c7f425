"""The evidence pack over REST, with the Slack app attached as ``switchboard web`` attaches it.

A run is started from Slack and approved over REST; its pack must hold the run, the exact
workflow it ran, every event, each decision with who, when and from where, the Slack
messages' references and the step results, each file's SHA-256 in the manifest, and the
pack's own digest in the run's events.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot import ids
from bot.web import attach
from engine.api import Engine
from engine.model import EventType, RunStatus
from engine.workflow import Workflow
from tests.engine_helpers import Clock, engine_for
from tests.fake_slack import ALICE, WORKFLOWS, FakeSlack, Slack, slack_settings
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings


@pytest.fixture
async def site(
    aiohttp_client: Any,
    redis_conn: redis.Redis,
    namespace: str,
    clock: Clock,
    settings: WebSettings,
    fake_slack: FakeSlack,
) -> Slack:
    engine = engine_for(redis_conn, namespace, *WORKFLOWS.values(), clock=clock)
    app = create_app(engine, settings)
    attach(app, engine, slack_settings(fake_slack))  # as switchboard.app.build_app does
    return Slack(await aiohttp_client(app), fake_slack, engine)


def unpack(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


async def download(client: TestClient, run_id: str, role: str = "viewer") -> tuple[web.Response, bytes]:
    response = await client.get(f"/v1/runs/{run_id}/evidence", headers=bearer(role))
    assert response.status == 200, await response.text()
    return response, await response.read()  # type: ignore[return-value]


async def test_the_evidence_pack_holds_the_run_its_definition_events_decisions_and_slack_refs(
    site: Slack,
) -> None:
    engine: Engine = site.engine
    await site.command("start approve-deploy service=web", user=ALICE)
    run = engine.list_runs().runs[0]
    card = await site.fake.wait_for(lambda: site.fake.message_with(ids.TASK_APPROVE, f"{run.run_id}:approve"))
    decided = await site.client.post(
        f"/v1/runs/{run.run_id}/tasks/approve/complete",
        json={"approved": True, "comment": "ship it"},
        headers=bearer("approver"),
    )
    assert decided.status == 200, await decided.text()
    assert engine.get_run(run.run_id).status is RunStatus.COMPLETED

    response, body = await download(site.client, run.run_id)
    assert response.content_type == "application/zip"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="evidence-approve-deploy-{run.run_id}.zip"'
    )
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert response.headers["X-Evidence-Digest"] == digest

    files = unpack(body)
    assert set(files) == {
        "manifest.json",
        "run.json",
        "workflow.json",
        "events.json",
        "decisions.json",
        "steps.json",
        "slack_messages.json",
    }
    manifest = json.loads(files["manifest.json"])
    assert manifest["run_id"] == run.run_id and manifest["exported_by"]["id"] == "dash"
    listed = {entry["name"]: entry["sha256"] for entry in manifest["files"]}
    assert listed == {n: hashlib.sha256(data).hexdigest() for n, data in files.items() if n != "manifest.json"}

    # The exact definition it ran: the snapshot its digest names, byte for byte.
    assert hashlib.sha256(files["workflow.json"]).hexdigest()[:16] == run.workflow_digest
    assert manifest["workflow"]["digest"] == run.workflow_digest
    assert Workflow.model_validate_json(files["workflow.json"]).id == "approve-deploy"
    assert json.loads(files["run.json"])["status"] == "completed"
    events = json.loads(files["events.json"])
    assert [e["type"] for e in events] == [e.type.value for e in engine.events(run.run_id)][: len(events)]
    assert len(events) == len(engine.events(run.run_id)) - 1  # all but the export it was recorded by
    steps = json.loads(files["steps.json"])
    assert steps["announce"]["result"]["text"] == "Deployed web."
    assert [h["type"] for h in steps["approve"]["history"]] == ["task_opened", "task_completed", "step_completed"]

    # Who decided, when and from where.
    decisions = json.loads(files["decisions.json"])
    started = next(d for d in decisions if d["type"] == "run_queued")
    assert (started["by"], started["medium"]) == ("slack:U0ALICE", "slack")
    approval = next(d for d in decisions if d["type"] == "task_completed")
    assert (approval["by"], approval["medium"], approval["step_id"]) == ("api:lead", "api", "approve")
    assert approval["data"]["approved"] is True and approval["data"]["comment"] == "ship it"
    assert approval["at"] == next(e["at"] for e in events if e["type"] == "task_completed")

    # Where the Slack app posted: the card (and the run's first message, whose thread has the progress).
    slack_refs = json.loads(files["slack_messages.json"])
    assert slack_refs["channel"] == "#deploys"
    assert (slack_refs["messages"]["card:approve"]["channel"], slack_refs["messages"]["card:approve"]["ts"]) == card

    # The pack's digest is in the run's events, with who exported it.
    [exported] = [e for e in engine.events(run.run_id) if e.type is EventType.EVIDENCE_EXPORTED]
    assert exported.data["digest"] == digest and exported.actor.ref == "api:dash"
    assert exported.data["filename"] == f"evidence-approve-deploy-{run.run_id}.zip"

    # A later pack holds the earlier export, as any event.
    _, again = await download(site.client, run.run_id[:8], role="operator")
    later = json.loads(unpack(again)["events.json"])
    assert [e["data"]["digest"] for e in later if e["type"] == "evidence_exported"] == [digest]


async def test_evidence_needs_a_token_and_a_run(site: Slack) -> None:
    await problem(await site.client.get("/v1/runs/0123456789abcdef/evidence"), 401)
    await problem(await site.client.get("/v1/runs/0123456789abcdef/evidence", headers=bearer("viewer")), 404)
    document = await (await site.client.get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/runs/{run_id}/evidence"]["get"]
    assert "application/zip" in operation["responses"]["200"]["content"]
