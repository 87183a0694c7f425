"""``/metrics``: the whole system read from Redis at scrape time (any web process answers the same),
step durations counted in Redis (a new process reports what earlier ones saw), and this process's
own figures; checked by parsing the page with prometheus_client's parser."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engine.api import Engine
from engine.model import Actor, ActorKind
from webhooks.server import create_app
from webhooks.settings import WebSettings

OPS = Actor(kind=ActorKind.API, id="ops-bot")
LEAD = Actor(kind=ActorKind.API, id="lead")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page by (name, sorted labels); the parser refuses a malformed page."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    return samples(await response.text())


async def test_metrics_describe_the_system_and_survive_a_new_process(
    client: TestClient, web_engine: Engine, settings: WebSettings, aiohttp_client: Any
) -> None:
    run = web_engine.start("release", {"service": "api"}, OPS)
    web_engine.start("release", {"service": "b"}, OPS)
    web_engine.complete_task(run.run_id, "approve", LEAD, True)  # the task, then the notify step

    found = await scrape(client)
    assert found[("switchboard_runs", (("status", "running"),))] == 1
    assert found[("switchboard_runs", (("status", "completed"),))] == 1
    assert found[("switchboard_tasks_pending", ())] == 1
    assert found[("switchboard_intake_waiting", ())] == 0
    assert found[("switchboard_queue_depth", ())] == 0  # notify and human steps take no worker
    assert found[("switchboard_workers", ())] == 0
    assert found[("switchboard_slack_outbox_backlog", ())] == 0
    human = (("outcome", "succeeded"), ("type", "human_task"), ("workflow", "release"))
    assert found[("switchboard_step_duration_seconds_count", human)] == 1
    assert found[("switchboard_step_duration_seconds_bucket", (("le", "+Inf"), *human))] == 1
    assert found[("process_resident_memory_bytes", ())] > 0  # this process's own figures

    # Another web process (a restart, or a second replica) reports the same durations:
    # they were counted in Redis when the steps finished, not in the first one's memory.
    await client.close()
    other = await aiohttp_client(create_app(web_engine, settings))
    again = await scrape(other)
    assert again[("switchboard_step_duration_seconds_count", human)] == 1
    notify = (("outcome", "succeeded"), ("type", "notify"), ("workflow", "release"))
    assert again[("switchboard_step_duration_seconds_count", notify)] == 1
