"""Recovery of a failed run, through the REST API, with steps executed by a real worker process.

A local HTTP server stands in for an integration that fails and is then fixed (or is
called at the wrong URL, corrected with the recovery's inputs). Each worker step appends
a line to a marker file when it executes, so the tests count what ran again and what did not.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp.test_utils import TestClient

from bot import ids
from engine.api import Engine
from engine.catalog import load_folder
from engine.model import EventType, FailureCode, Run, RunStatus, StepError, StepStatus
from tests.conftest import REDIS_URL
from tests.engine_helpers import ALICE as ALICE_ACTOR
from tests.engine_helpers import BOB as BOB_ACTOR
from tests.engine_helpers import Clock, engine_for, finish_step
from tests.fake_slack import ALICE, BOB, Slack, all_text, write_workflows
from tests.test_cli import run_id_of, switchboard
from tests.test_console_http import VIEWER_ONLY, sign_in_by_link
from tests.test_worker_e2e import Harness, marker_lines
from tests.web_helpers import bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

SLOW_WRITE = "worker.actions:slow_write"


def written(path: str, needs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An action step that appends its attempt to ``{{ inputs.marker }}.<path>`` when it executes."""
    args = {"path": "{{ inputs.marker }}." + path, "seconds": 0}
    return {"id": path, "type": "action", "action": SLOW_WRITE, "needs": needs or [], "args": args, **extra}


# prepare (not idempotent) -> call (an idempotent HTTP call) -> finish
RECOVERABLE: dict[str, Any] = {
    "id": "recoverable",
    "name": "Recoverable",
    "inputs": {"marker": {"type": "string", "required": True}, "url": {"type": "string", "required": True}},
    "steps": [
        written("prepare"),
        {
            "id": "call",
            "type": "http",
            "needs": ["prepare"],
            "http": {"method": "POST", "url": "{{ inputs.url }}", "json": {"run": "{{ run.id }}"}},
            "timeout": 5,
            "retry": {"max_attempts": 2, "backoff": 0.1, "idempotent": True},
        },
        written("finish", ["call"]),
    ],
}


class Integration(BaseHTTPRequestHandler):
    """``/flaky`` answers the server's current ``code`` (503 until fixed); ``/status/<n>`` answers n."""

    def do_POST(self) -> None:
        server: IntegrationServer = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code = server.code if self.path == "/flaky" else int(self.path.rsplit("/", 1)[-1])
        server.hits.append(self.path)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class IntegrationServer(ThreadingHTTPServer):
    code = 503
    hits: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def integration() -> Iterator[IntegrationServer]:
    server = IntegrationServer(("127.0.0.1", 0), Integration)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def harness(tmp_path: Path, namespace: str, redis_conn: redis.Redis) -> Iterator[Harness]:
    """The worker harness of the end-to-end tests, with the recoverable workflow added."""
    h = Harness(tmp_path, namespace, redis_conn)
    folder = tmp_path / "workflows"
    (folder / "recoverable.yaml").write_text(yaml.safe_dump(RECOVERABLE))
    catalog = load_folder(folder)
    assert not catalog.errors, catalog.errors
    h.engine = Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)
    h.start_worker()
    yield h
    h.stop_workers()


@pytest.fixture
async def api(aiohttp_client: Any, harness: Harness, settings: WebSettings) -> TestClient:
    return await aiohttp_client(create_app(harness.engine, settings))


async def start_failing(api: TestClient, harness: Harness, marker: Path, url: str) -> str:
    """Start a run through REST and wait until its call step has failed twice and failed the run."""
    body = {"inputs": {"marker": str(marker), "url": url}}
    response = await api.post("/v1/workflows/recoverable/runs", json=body, headers=bearer("operator"))
    assert response.status == 201, await response.text()
    run_id: str = (await response.json())["run_id"]
    run = harness.wait_until_finished(run_id)
    assert run.status is RunStatus.FAILED and run.failure is not None and run.failure.step_id == "call"
    assert (run.steps["call"].attempt, run.steps["finish"].status.value) == (2, "skipped")
    return run_id


async def recover(api: TestClient, run_id: str, **body: Any) -> Any:
    return await api.post(f"/v1/runs/{run_id}/recover", json=body, headers=bearer("operator"))


async def test_recovering_a_failed_run_continues_the_same_run_from_its_failed_step(
    api: TestClient, harness: Harness, integration: IntegrationServer, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    run_id = await start_failing(api, harness, marker, f"{integration.url}/flaky")
    assert integration.hits == ["/flaky", "/flaky"] and marker_lines(Path(f"{marker}.prepare")) == ["1"]

    await problem(await api.post(f"/v1/runs/{run_id}/recover", json={}, headers=bearer("viewer")), 403)
    integration.code = 200  # the integration is fixed
    response = await recover(api, run_id)
    assert response.status == 200, await response.text()
    document = await response.json()
    assert document["run_id"] == run_id and document["status"] == "running"

    run = harness.wait_until_finished(run_id)
    assert run.status is RunStatus.COMPLETED and run.failure is None
    assert marker_lines(Path(f"{marker}.prepare")) == ["1"], "a succeeded step ran again"
    assert marker_lines(Path(f"{marker}.finish")) == ["1"]
    assert run.steps["call"].attempt == 3 and run.steps["call"].result["status"] == 200
    assert integration.hits == ["/flaky"] * 3
    # The attempts before the recovery, and their errors, are still in the run's events.
    events = harness.engine.events(run_id)
    failures = [e for e in events if e.step_id == "call" and e.type is EventType.STEP_FAILED]
    assert [e.data["attempt"] for e in failures] == [2]
    assert failures[0].data["error"]["provider_status"] == 503
    retried = [e for e in events if e.step_id == "call" and e.type is EventType.STEP_RETRY_SCHEDULED]
    assert retried[0].data["error"]["code"] == "HTTP_REQUEST_FAILED"
    [recovered] = [e for e in events if e.type is EventType.RUN_RECOVERED]
    assert recovered.actor.ref == "api:ops-bot"
    assert recovered.data | {"previous_failure": None} == {
        "from_step": "call",
        "steps": ["call", "finish"],
        "inputs": {},
        "force": False,
        "previous_status": "failed",
        "previous_failure": None,
    }
    assert recovered.data["previous_failure"]["code"] == "HTTP_REQUEST_FAILED"
    started = [e.data["attempt"] for e in events if e.step_id == "call" and e.type is EventType.STEP_STARTED]
    assert started == [1, 2, 3]

    # A completed run has nothing to recover: 409 with the engine's sentence.
    refused = await problem(await recover(api, run_id), 409)
    assert "it completed" in refused["detail"] and "You can replay it" in refused["detail"]


async def test_recovery_from_an_earlier_step_with_corrected_inputs_needs_force_for_a_step_that_is_not_idempotent(
    api: TestClient, harness: Harness, integration: IntegrationServer, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    run_id = await start_failing(api, harness, marker, f"{integration.url}/status/500")  # the wrong URL

    bad = await problem(await recover(api, run_id, inputs={"bogus": 1}), 422)
    assert bad["errors"] == [{"field": "bogus", "message": "unknown input (this workflow takes: marker, url)"}]
    unknown = await problem(await recover(api, run_id, from_step="nope"), 422)
    assert "has no step 'nope'" in unknown["detail"]
    fixed = f"{integration.url}/status/200"
    refused = await problem(await recover(api, run_id, from_step="prepare", inputs={"url": fixed}), 409)
    assert "step 'prepare' already ran" in refused["detail"] and "not marked idempotent" in refused["detail"]
    assert harness.engine.get_run(run_id).status is RunStatus.FAILED  # the refusal changed nothing

    response = await recover(api, run_id, from_step="prepare", inputs={"url": fixed}, force=True)
    assert response.status == 200, await response.text()
    run = harness.wait_until_finished(run_id)
    assert run.status is RunStatus.COMPLETED and run.inputs["url"] == fixed
    assert marker_lines(Path(f"{marker}.prepare")) == ["1", "2"]  # named, so it ran again, as attempt 2
    assert marker_lines(Path(f"{marker}.finish")) == ["1"]
    assert integration.hits == ["/status/500", "/status/500", "/status/200"]
    [recovered] = [e for e in harness.engine.events(run_id) if e.type is EventType.RUN_RECOVERED]
    assert recovered.data["from_step"] == "prepare" and recovered.data["force"] is True
    assert recovered.data["steps"] == ["prepare", "call", "finish"]
    assert recovered.data["inputs"] == {"url": {"before": f"{integration.url}/status/500", "after": fixed}}


async def test_recover_is_in_the_openapi_document_and_under_the_workflow_path(
    api: TestClient, harness: Harness, integration: IntegrationServer, tmp_path: Path
) -> None:
    document = await (await api.get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/runs/{run_id}/recover"]["post"]
    assert operation["operationId"] == "recover_run"
    assert "/v1/workflows/{workflow_id}/runs/{run_id}/recover" in document["paths"]

    run_id = await start_failing(api, harness, tmp_path / "m", f"{integration.url}/flaky")
    elsewhere = await api.post(
        f"/v1/workflows/chain/runs/{run_id}/recover", json={}, headers=bearer("operator")
    )
    await problem(elsewhere, 404)  # a run of another workflow
    integration.code = 200
    response = await api.post(
        f"/v1/workflows/recoverable/runs/{run_id}/recover", json={}, headers=bearer("operator")
    )
    assert response.status == 200, await response.text()
    assert harness.wait_until_finished(run_id).status is RunStatus.COMPLETED


# -- Slack: the failure alert's Retry from failed step, and /run recover --------------------------
# The worker's part is played through the engine's worker API, as the other Slack tests do.


def deploy(workflow_id: str, idempotent: bool) -> dict[str, Any]:
    """build (idempotent) -> ship (its template needs the region input) in #deploys."""
    return {
        "id": workflow_id,
        "name": workflow_id.title(),
        "inputs": {"region": {"type": "string"}},
        "settings": {"slack_channel": "#deploys"},
        "steps": [
            {"id": "build", "type": "action", "action": "worker.actions:echo", "retry": {"idempotent": True}},
            {
                "id": "ship",
                "type": "action",
                "action": "worker.actions:echo",
                "needs": ["build"],
                "args": {"region": "{{ inputs.region }}"},
                "retry": {"idempotent": idempotent},
            },
        ],
    }


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    """The Slack fixture's engine, with the deploy workflows (overrides tests.fake_slack's)."""
    workflows = {w: deploy(w, idempotent=w == "deploy") for w in ("deploy", "deploy-once")}
    catalog = load_folder(write_workflows(tmp_path / "workflows", workflows))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def failed_in_slack(slack: Slack, workflow_id: str) -> tuple[Run, tuple[str, str]]:
    """Start a run from Slack whose ship step fails on the worker; the run and its failure alert."""
    await slack.command(f"start {workflow_id} region=eu", user=ALICE)
    run = finish_step(slack.engine, slack.engine.list_runs().runs[0], "build", {"built": True})
    error = StepError(code=FailureCode.STEP_FAILED, message="registry unreachable")
    run = finish_step(slack.engine, run, "ship", error=error)
    assert run.status is RunStatus.FAILED
    alert = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.RUN_RECOVER, run.run_id))
    assert "Retry from failed step" in all_text(slack.fake.messages[alert])
    return run, alert


async def test_retry_from_failed_step_on_the_alert_recovers_the_run(slack: Slack) -> None:
    run, alert = await failed_in_slack(slack, "deploy")

    answer_url = await slack.click(ids.RUN_RECOVER, run.run_id, user=BOB, message=alert)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(answer_url)))[0]
    assert f"Recovered run `{run.short_id}`: it is running again" in reply["text"]
    recovered = slack.engine.get_run(run.run_id)
    assert recovered.steps["build"].result == {"built": True}  # kept, not run again
    assert recovered.steps["build"].attempt == 1
    assert (recovered.steps["ship"].status, recovered.steps["ship"].attempt) == (StepStatus.QUEUED, 2)
    done = finish_step(slack.engine, recovered, "ship", {"shipped": True})
    assert done.status is RunStatus.COMPLETED and done.run_id == run.run_id
    [event] = [e for e in slack.engine.events(run.run_id) if e.type is EventType.RUN_RECOVERED]
    assert event.actor.ref == "slack:U0BOB" and event.data["from_step"] == "ship"

    def thread() -> list[str]:
        return [c.args["text"] for c in slack.fake.ok_calls("chat.postMessage") if "thread_ts" in c.args]

    await slack.fake.wait_for(lambda: "✅ Completed" in thread())
    assert any(line.startswith("🔁 Recovered by") and "`ship`" in line for line in thread())


async def test_a_refused_retry_is_answered_ephemerally_and_run_recover_forces_it(slack: Slack) -> None:
    run, alert = await failed_in_slack(slack, "deploy-once")

    answer_url = await slack.click(ids.RUN_RECOVER, run.run_id, user=BOB, message=alert)
    reply = (await slack.fake.wait_for(lambda: slack.responses_to(answer_url)))[0]
    assert "step 'ship' already ran" in reply["text"] and "not marked idempotent" in reply["text"]
    assert reply.get("response_type", "ephemeral") == "ephemeral"
    assert slack.engine.get_run(run.run_id).status is RunStatus.FAILED

    typo = await slack.command(f"recover {run.short_id} --froce", user=BOB)
    assert "Did you mean `--force`?" in typo["text"]
    forced = await slack.command(f"recover {run.short_id} --force", user=BOB)
    assert f"run `{run.short_id}`" in forced["text"] and "is *running* again" in forced["text"]
    assert slack.engine.get_run(run.run_id).steps["ship"].attempt == 2


async def test_run_recover_corrects_inputs_and_starts_from_a_named_step(slack: Slack) -> None:
    await slack.command("start deploy", user=ALICE)  # no region: ship's template fails
    run = finish_step(slack.engine, slack.engine.list_runs().runs[0], "build", {"built": 1})
    assert run.status is RunStatus.FAILED and run.failure is not None
    assert run.failure.code is FailureCode.TEMPLATE_ERROR

    bad = await slack.command(f"recover {run.short_id} colour=blue", user=BOB)
    assert "unknown input" in bad["text"] and slack.engine.get_run(run.run_id).status is RunStatus.FAILED
    reply = await slack.command(f"recover {run.short_id} --from build region=us", user=BOB)
    assert "is *running* again" in reply["text"]
    recovered = slack.engine.get_run(run.run_id)
    assert recovered.inputs["region"] == "us"
    assert (recovered.steps["build"].status, recovered.steps["build"].attempt) == (StepStatus.QUEUED, 2)
    done = finish_step(slack.engine, finish_step(slack.engine, recovered, "build", {"built": 2}), "ship", "ok")
    assert done.status is RunStatus.COMPLETED and done.steps["ship"].args == {"region": "us"}
    completed = await slack.command(f"recover {run.short_id}", user=BOB)
    assert "it completed" in completed["text"] and "You can replay it" in completed["text"]


# -- the CLI -------------------------------------------------------------------------------------

NOTICE = {
    "id": "notice",
    "name": "Notice",
    "inputs": {"region": {"type": "string"}},
    "steps": [
        {"id": "draft", "type": "notify", "notify": {"text": "drafted"}},
        {"id": "send", "type": "notify", "needs": ["draft"], "notify": {"text": "to {{ inputs.region }}"}},
    ],
}


def test_the_cli_recovers_a_run_and_downloads_its_evidence(tmp_path: Path, namespace: str) -> None:
    env = {
        "REDIS_URL": REDIS_URL,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(write_workflows(tmp_path / "workflows", {"notice": NOTICE})),
    }
    started = switchboard("--as", "alice", "run", "start", "notice", env=env)
    run_id = run_id_of(started.stdout)
    assert "FAILED" in started.stdout and "TEMPLATE_ERROR" in started.stdout, started.stdout

    typo = switchboard("--as", "bob", "run", "recover", run_id, "colour=red", env=env)
    assert typo.returncode != 0 and "unknown input" in typo.stderr and "Traceback" not in typo.stderr
    recovered = switchboard("--as", "bob", "run", "recover", run_id[:8], "region=eu", "--wait", env=env)
    assert recovered.returncode == 0, recovered.stderr
    assert f"run {run_id}" in recovered.stdout and "COMPLETED" in recovered.stdout
    assert "runs again" not in recovered.stdout  # the reset step's note ended with its new attempt
    again = switchboard("--as", "bob", "run", "recover", run_id, env=env)
    assert again.returncode != 0 and "it completed" in again.stderr and "You can replay it" in again.stderr

    pack = tmp_path / "pack.zip"
    exported = switchboard("--as", "carol", "--json", "run", "evidence", run_id, "-o", str(pack), env=env)
    assert exported.returncode == 0, exported.stderr
    answer = json.loads(exported.stdout)
    assert answer["digest"] == f"sha256:{hashlib.sha256(pack.read_bytes()).hexdigest()}"
    with zipfile.ZipFile(pack) as archive:
        run = json.loads(archive.read("run.json"))
        decisions = json.loads(archive.read("decisions.json"))
    assert run["run_id"] == run_id and run["inputs"] == {"region": "eu"}
    recovery = next(d for d in decisions if d["type"] == "run_recovered")
    assert (recovery["by"], recovery["medium"], recovery["data"]["from_step"]) == ("cli:bob", "cli", "send")
    events = switchboard("--json", "run", "events", run_id, env=env)
    exports = [e for e in map(json.loads, events.stdout.splitlines()) if e["type"] == "evidence_exported"]
    assert [(e["actor"]["id"], e["data"]["digest"]) for e in exports] == [("carol", answer["digest"])]


# -- the console ---------------------------------------------------------------------------------


async def test_the_console_recovers_a_run_from_its_page(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> None:
    engine = engine_for(redis_conn, namespace, NOTICE)
    browser = await aiohttp_client(create_app(engine, settings))
    run = engine.start("notice", {}, ALICE_ACTOR)
    assert run.status is RunStatus.FAILED

    csrf = await sign_in_by_link(browser, engine, BOB_ACTOR)
    page = await (await browser.get(f"/runs/{run.run_id}")).text()
    assert "Recover this run" in page and f'action="/runs/{run.run_id}/recover"' in page
    form = {"csrf": csrf, "from_step": "", "input.region": "eu"}
    answer = await browser.post(f"/runs/{run.run_id}/recover", data=form)
    assert answer.status == 200 and answer.url.path == f"/runs/{run.run_id}"
    assert f"Recovered Notice run {run.short_id}: it is now completed." in await answer.text()
    recovered = engine.get_run(run.run_id)
    assert recovered.status is RunStatus.COMPLETED and recovered.inputs == {"region": "eu"}
    assert "Recover this run" not in await answer.text()  # a completed run offers replay only

    again = await browser.post(f"/runs/{run.run_id}/recover", data={"csrf": csrf})
    assert f"Cannot recover run {run.short_id}: it completed" in await again.text()


async def test_a_console_viewer_gets_no_recover_form_and_is_refused(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> None:
    engine = engine_for(redis_conn, namespace, NOTICE)
    browser = await aiohttp_client(create_app(engine, settings))
    run = engine.start("notice", {}, ALICE_ACTOR)
    csrf = await sign_in_by_link(browser, engine, BOB_ACTOR, VIEWER_ONLY)
    assert "Recover this run" not in await (await browser.get(f"/runs/{run.run_id}")).text()
    refused = await browser.post(f"/runs/{run.run_id}/recover", data={"csrf": csrf})
    assert refused.status == 403
    assert engine.get_run(run.run_id).status is RunStatus.FAILED


# -- retention -----------------------------------------------------------------------------------


def test_retention_leaves_a_recovered_run_alone_until_it_finishes_again(
    redis_conn: redis.Redis, namespace: str
) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, deploy("deploy", idempotent=True), clock=clock)
    run = finish_step(engine, engine.start("deploy", {}, ALICE_ACTOR), "build", {"built": 1})
    assert run.status is RunStatus.FAILED  # no region: ship's template fails
    clock.advance(31 * 86400)  # past the default retention of 30 days

    engine.recover(run.run_id, BOB_ACTOR, from_step="build", inputs={"region": "eu"})
    assert engine.purge_finished() == 0
    running = engine.get_run(run.run_id)
    assert running.status is RunStatus.RUNNING

    done = finish_step(engine, finish_step(engine, running, "build", {"built": 2}), "ship", "ok")
    assert done.status is RunStatus.COMPLETED
    assert engine.purge_finished() == 0  # finished again just now: kept for its retention
    clock.advance(31 * 86400)
    assert engine.purge_finished() == 1 and not engine.store.exists(run.run_id)


# -- concurrency ---------------------------------------------------------------------------------


def test_a_recovered_run_waits_for_a_slot_under_the_workflow_concurrency_limit(
    redis_conn: redis.Redis, namespace: str
) -> None:
    """A recovery is a run asking to run again: under ``concurrency: 1`` it queues behind the
    run holding the slot, and is admitted (keeping when it first started) once that run ends."""
    limited = {**deploy("deploy", idempotent=True), "settings": {"concurrency": 1}}
    clock = Clock()
    engine = engine_for(redis_conn, namespace, limited, clock=clock)
    failed = finish_step(engine, engine.start("deploy", {}, ALICE_ACTOR), "build", {"built": 1})
    assert failed.status is RunStatus.FAILED  # no region: ship's template fails
    holder = engine.start("deploy", {"region": "us"}, ALICE_ACTOR)
    assert holder.status is RunStatus.RUNNING

    clock.advance(60)
    waiting = engine.recover(failed.run_id, BOB_ACTOR, inputs={"region": "eu"})
    assert waiting.status is RunStatus.QUEUED
    assert waiting.steps["ship"].status is StepStatus.PENDING
    assert redis_conn.zscore(engine.keys.admission("deploy"), failed.run_id) is not None

    finish_step(engine, finish_step(engine, holder, "build", {"built": 2}), "ship", "ok")
    admitted = engine.get_run(failed.run_id)
    assert admitted.status is RunStatus.RUNNING
    assert admitted.started_at == failed.started_at
    assert admitted.steps["ship"].status is StepStatus.QUEUED
    events = engine.events(failed.run_id)
    recovered_at = [e.type for e in events].index(EventType.RUN_RECOVERED)
    started_again = [e for e in events[recovered_at:] if e.type is EventType.RUN_STARTED]
    assert [e.data for e in started_again] == [{"recovered": True}]
    assert started_again[0].actor.id == "admission"
    done = finish_step(engine, admitted, "ship", "ok")
    assert done.status is RunStatus.COMPLETED


def test_a_recovered_run_with_room_under_the_limit_runs_at_once(redis_conn: redis.Redis, namespace: str) -> None:
    limited = {**deploy("deploy", idempotent=True), "settings": {"concurrency": 1}}
    engine = engine_for(redis_conn, namespace, limited)
    failed = finish_step(engine, engine.start("deploy", {}, ALICE_ACTOR), "build", {"built": 1})
    running = engine.recover(failed.run_id, BOB_ACTOR, inputs={"region": "eu"})
    assert running.status is RunStatus.RUNNING
    assert running.steps["ship"].status is StepStatus.QUEUED


def test_analytics_count_a_recovered_run_started_once_and_its_recovery(
    redis_conn: redis.Redis, namespace: str
) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, deploy("deploy", idempotent=True), clock=clock)
    failed = finish_step(engine, engine.start("deploy", {}, ALICE_ACTOR), "build", {"built": 1})
    assert failed.status is RunStatus.FAILED
    clock.advance(60)
    running = engine.recover(failed.run_id, BOB_ACTOR, inputs={"region": "eu"})
    done = finish_step(engine, running, "ship", "ok")
    assert done.status is RunStatus.COMPLETED

    totals = engine.analytics_summary(since=clock.now - timedelta(hours=1), until=clock.now + timedelta(hours=1)).totals
    started_and_ended = (totals.runs_started, totals.runs_failed, totals.runs_completed, totals.runs_recovered)
    assert started_and_ended == (1, 1, 1, 1)
