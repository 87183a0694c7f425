"""Helpers for the web tests: workflows that need no worker, a sources file, tokens, signers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.api import Engine
from engine.model import Run
from webhooks.settings import WebSettings
from webhooks.signatures import Scheme, secret_key, sign_github, sign_standard, sign_stripe

# A human task first, then a notify step: both run without a worker.
APPROVAL_WORKFLOW: dict[str, Any] = {
    "id": "release",
    "name": "Release",
    "inputs": {
        "service": {"type": "string", "required": True},
        "replicas": {"type": "integer", "default": 1},
    },
    "steps": [
        {
            "id": "approve",
            "type": "human_task",
            "task": {"title": "Release {{ inputs.service }}?", "fields": {"service": "{{ inputs.service }}"}},
        },
        {"id": "announce", "type": "notify", "needs": ["approve"], "notify": {"text": "released"}},
    ],
}
WAITING_WORKFLOW: dict[str, Any] = {
    "id": "settle",
    "name": "Settle payment",
    "inputs": {"payment": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "paid",
            "type": "wait_event",
            "event": {"name": "payment.succeeded", "key": "{{ inputs.payment }}"},
        },
        {"id": "thanks", "type": "notify", "needs": ["paid"], "notify": {"text": "thanks"}},
    ],
}

STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STANDARD_SECRET_NEW = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM="
GITHUB_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_stripe_test_secret"
ENVIRONMENT = {
    "TEST_STANDARD_SECRET": STANDARD_SECRET,
    "TEST_STANDARD_SECRET_NEW": STANDARD_SECRET_NEW,
    "TEST_GITHUB_SECRET": GITHUB_SECRET,
    "TEST_STRIPE_SECRET": STRIPE_SECRET,
}
SOURCES_YAML = """
sources:
  releases:
    scheme: standard
    secrets: [TEST_STANDARD_SECRET, TEST_STANDARD_SECRET_NEW]
    start:
      workflow: release
      inputs:
        service: "{{ payload.service }}"
        replicas: "{{ payload.replicas | default(1) }}"
  vector:
    scheme: standard
    secrets: [TEST_STANDARD_SECRET]
    start:
      workflow: release
      inputs: {service: "svc-{{ payload.test }}"}
  github:
    scheme: github
    secrets: [TEST_GITHUB_SECRET]
    filter: "{{ headers['x-github-event'] == 'push' }}"
    start:
      workflow: release
      inputs: {service: "{{ payload.repository.name }}"}
  payments:
    scheme: stripe
    secrets: [TEST_STRIPE_SECRET]
    body_limit: 2048
    deliver:
      event: "{{ payload.type }}"
      key: "{{ payload.data.object.id }}"
  unset:
    scheme: github
    secrets: [TEST_SECRET_NOBODY_SET]
    start: {workflow: release}
"""

TOKENS = {
    "viewer": "tok-viewer-1234",
    "operator": "tok-operator-5678",
    "approver": "tok-approver-9012",
    "admin": "tok-admin-3456",
}
TOKEN_SETTING = ",".join(
    [
        f"dash:viewer:{TOKENS['viewer']}",
        f"ops-bot:operator:{TOKENS['operator']}",
        f"lead:approver:{TOKENS['approver']}",
        f"root:admin:{TOKENS['admin']}",
    ]
)


def web_settings(tmp_path: Path) -> WebSettings:
    sources = tmp_path / "sources.yaml"
    sources.write_text(SOURCES_YAML)
    # No workers here: the web process starts accepted runs itself, at once.
    return WebSettings(sources_file=sources, api_tokens=TOKEN_SETTING, threads=4, starts_after=0)


async def problem(response: Any, status: int) -> dict[str, Any]:
    """Assert an application/problem+json answer with ``status``; return the document."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    document: dict[str, Any] = await response.json(content_type=None)
    assert document["status"] == status and document["detail"] and document["type"] and document["title"]
    return document


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def standard_headers(
    body: bytes, secret: str = STANDARD_SECRET, msg_id: str = "msg_1", at: datetime | float | None = None
) -> dict[str, str]:
    timestamp = str(int(_seconds(at)))
    signature = sign_standard(secret_key(Scheme.STANDARD, secret), msg_id, timestamp, body)
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def github_headers(body: bytes, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    return {
        "X-Hub-Signature-256": sign_github(GITHUB_SECRET.encode(), body),
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
    }


def stripe_headers(
    body: bytes, at: datetime | float | None = None, secret: str = STRIPE_SECRET
) -> dict[str, str]:
    return {"Stripe-Signature": sign_stripe(secret.encode(), int(_seconds(at)), body)}


def _seconds(at: datetime | float | None) -> float:
    if at is None:
        return time.time()
    return at.timestamp() if isinstance(at, datetime) else at


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def wait_for_runs(engine: Engine, count: int, timeout: float = 10.0) -> list[Run]:
    """The engine's runs once ``count`` exist: accepted webhook runs start a moment after the 202."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        runs = (await asyncio.to_thread(engine.list_runs)).runs
        if len(runs) >= count or asyncio.get_running_loop().time() > deadline:
            return runs
        await asyncio.sleep(0.02)
