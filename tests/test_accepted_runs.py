"""A run accepted from a webhook and not started yet: REST, Slack and the CLI answer for it alike.

The webhook is answered with the run id before any worker starts the run; until one does,
asking about that id is not "No run": every edge says it was accepted and has not started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from bot.web import attach
from engine.api import Engine
from engine.catalog import load_folder
from tests.conftest import REDIS_URL
from tests.engine_helpers import Clock
from tests.fake_slack import FakeSlack, Slack, slack_settings, write_workflows
from tests.web_helpers import APPROVAL_WORKFLOW, ENVIRONMENT, bearer, standard_headers, web_settings
from webhooks.server import create_app


@pytest.fixture
def workflows(tmp_path: Path) -> Path:
    return write_workflows(tmp_path / "workflows", {"release": APPROVAL_WORKFLOW})


@pytest.fixture
def engine(redis_conn: redis.Redis, namespace: str, workflows: Path, clock: Clock) -> Engine:
    catalog = load_folder(workflows)
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace, clock=clock)


@pytest.fixture
async def slack_and_web(
    aiohttp_client: Any,
    engine: Engine,
    fake_slack: FakeSlack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Slack:
    """The web app with Slack attached, as ``switchboard web`` serves them; no worker runs, and the
    web's standby starter waits an hour, so an accepted run stays not started."""
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    settings = web_settings(tmp_path).model_copy(update={"starts_after": 3600})
    app: web.Application = create_app(engine, settings)
    attach(app, engine, slack_settings(fake_slack))
    return Slack(await aiohttp_client(app), fake_slack, engine)


async def accept_by_webhook(slack: Slack, clock: Clock) -> str:
    body = json.dumps({"service": "api"}).encode()
    response = await slack.client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, msg_id="msg_accepted", at=clock.now)
    )
    assert response.status == 202, await response.text()
    run_id: str = (await response.json())["run_id"]
    return run_id


async def test_every_edge_says_an_accepted_run_has_not_started_yet(
    slack_and_web: Slack, clock: Clock, namespace: str, workflows: Path
) -> None:
    run_id = await accept_by_webhook(slack_and_web, clock)
    said = f"Run {run_id[:8]} of release was accepted at 2026-11-23 09:00:00 UTC and has not started yet."

    rest = await slack_and_web.client.get(f"/v1/runs/{run_id}", headers=bearer("viewer"))
    assert rest.status == 202
    document = await rest.json()
    assert document["status"] == "accepted" and document["run_id"] == run_id
    assert document["workflow_id"] == "release" and document["inputs"] == {"service": "api", "replicas": 1}
    assert document["accepted_at"] == "2026-11-23T09:00:00+00:00"

    reply = await slack_and_web.command(f"status {run_id}")
    assert reply["text"] == said

    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(workflows),
    }
    cli = subprocess.run(
        [sys.executable, "-m", "switchboard", "run", "status", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == said

    # Nothing started it: it is still only accepted, and an unknown id is still "No run".
    assert (await slack_and_web.command("status 0123456789abcdef"))["text"] == "No run '0123456789abcdef'."
    assert (await slack_and_web.client.get(f"/v1/runs/{run_id}", headers=bearer("viewer"))).status == 202
