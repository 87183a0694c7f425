"""Logs and analytics over HTTP: the console's /logs and /analytics, and /v1/events and /v1/analytics/*.

Runs are made through the engine with a settable clock, so every figure checked is the
clock's arithmetic: three runs completed and one failed is a success rate of 0.75, an
approval decided 90 s after its task opened is a 90 s wait.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from engine import analytics, queries
from engine.analytics import Summary, Timeseries
from engine.api import Engine
from engine.model import Actor, ActorKind, EventType, FailureCode, Run, RunStatus, StepError
from tests.engine_helpers import Clock, action, engine_for, start_step
from tests.web_helpers import APPROVAL_WORKFLOW, TOKENS
from webhooks.auth import Role
from webhooks.console import mint_sign_in_link, pages
from webhooks.rest import EventSearchAnswer
from webhooks.server import create_app
from webhooks.settings import WebSettings

OPS = Actor(kind=ActorKind.API, id="ops-bot")
LEAD = Actor(kind=ActorKind.SLACK, id="U0LEAD", name="lead")
VIEWER = Actor(kind=ActorKind.SLACK, id="U0VIEW", name="vera")
BUILD_WORKFLOW: dict[str, Any] = {"id": "build", "name": "Build", "steps": [action("compile")]}
WAIT = 90  # seconds each approval waits
COMPILE = 30  # seconds the failing build runs


@dataclass
class History:
    """Three released runs (each approved after WAIT seconds) and one failed build."""

    completed: list[Run]
    failed: Run
    started_at: datetime  # the clock when the history began


@pytest.fixture
def engine(redis_conn: Any, namespace: str, clock: Clock) -> Engine:
    return engine_for(redis_conn, namespace, APPROVAL_WORKFLOW, BUILD_WORKFLOW, clock=clock)


@pytest.fixture
def history(engine: Engine, clock: Clock) -> History:
    began = clock.now
    completed = []
    for service in ("api", "web", "db"):
        run = engine.start("release", {"service": service}, OPS)
        clock.advance(WAIT)
        completed.append(engine.complete_task(run.run_id, "approve", LEAD, True))
        clock.advance(60)
    build = start_step(engine, engine.start("build", {}, OPS), "compile")
    clock.advance(COMPILE)
    failed = engine.step_finished(
        build.run_id, "compile", 1, error=StepError(code=FailureCode.STEP_FAILED, message="compiler crashed")
    )
    assert [r.status for r in completed] == [RunStatus.COMPLETED] * 3 and failed.status is RunStatus.FAILED
    return History(completed, failed, began)


@pytest.fixture
async def web(aiohttp_client: Any, engine: Engine, settings: WebSettings) -> TestClient:
    return await aiohttp_client(create_app(engine, settings))


def zulu(moment: datetime) -> str:
    """A moment as a query parameter takes it (no ``+``, which a query reads as a space)."""
    return moment.isoformat().replace("+00:00", "Z")


def bearer(role: str = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


async def sign_in(
    client: TestClient, engine: Engine, roles: frozenset[Role] = frozenset({Role.VIEWER})
) -> None:
    link = mint_sign_in_link(engine, VIEWER, roles)
    confirm = await (await client.get(link)).text()
    nonce = re.search(r'name="nonce" value="([^"]+)"', confirm)
    assert nonce
    answer = await client.post(link, data={"nonce": nonce.group(1)}, allow_redirects=False)
    assert answer.status == 303


# -- GET /v1/events ----------------------------------------------------------------------------


async def search(web: TestClient, query: str) -> EventSearchAnswer:
    answer = await web.get(f"/v1/events?{query}", headers=bearer())
    assert answer.status == 200, await answer.text()
    return EventSearchAnswer.model_validate(await answer.json())


async def test_events_by_severity_type_workflow_and_run(web: TestClient, history: History) -> None:
    errors = await search(web, "severity=error")
    assert [(e.type, e.run_id) for e in errors.events] == [
        (EventType.RUN_FAILED, history.failed.run_id),
        (EventType.STEP_FAILED, history.failed.run_id),
    ]
    assert all(e.severity == "error" and e.workflow_id == "build" for e in errors.events)
    assert errors.next_before is None and not errors.budget_reached

    decided = await search(web, "type=task_completed,run_completed")
    newest_first = [r.run_id for r in reversed(history.completed) for _ in range(2)]
    assert [e.run_id for e in decided.events] == newest_first
    assert {e.type for e in decided.events} == {EventType.TASK_COMPLETED, EventType.RUN_COMPLETED}

    builds = await search(web, "workflow=build")
    assert builds.events and {e.run_id for e in builds.events} == {history.failed.run_id}
    one_run = await search(web, f"run={history.completed[1].run_id[:6]}&severity=info")
    assert {e.run_id for e in one_run.events} == {history.completed[1].run_id}
    assert (
        one_run.events[0].type is EventType.RUN_COMPLETED and one_run.events[-1].type is EventType.RUN_QUEUED
    )


async def test_events_by_time_and_in_pages(web: TestClient, history: History) -> None:
    everything = await search(web, "limit=200")
    assert len(everything.events) > 10 and everything.next is None
    times = [e.at for e in everything.events]
    assert times == sorted(times, reverse=True)
    # The failed build began COMPILE seconds before the clock stopped: since then, only its events.
    assert history.failed.started_at is not None
    recent = await search(web, f"since={zulu(history.failed.started_at)}")
    assert {e.run_id for e in recent.events} == {history.failed.run_id}
    first = await search(web, f"until={zulu(history.started_at + timedelta(seconds=WAIT))}")
    assert {e.run_id for e in first.events} == {history.completed[0].run_id}
    assert EventType.TASK_COMPLETED not in {e.type for e in first.events}  # decided at the until: excluded

    paged: list[str] = []
    url = "/v1/events?limit=3"
    while url:
        answer = await web.get(url, headers=bearer())
        page = EventSearchAnswer.model_validate(await answer.json())
        assert len(page.events) <= 3
        paged += [e.id for e in page.events if e.id]
        url = page.next or ""
    assert paged == [e.id for e in everything.events]


async def test_a_search_stops_at_its_budget_and_says_so(
    web: TestClient, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "SEARCH_BUDGET", 5)
    # The build's failure is the newest: found at once, then the search looks for a third error
    # until its budget is spent, and says so.
    errors = await search(web, "severity=error")
    assert [e.run_id for e in errors.events] == [history.failed.run_id] * 2
    assert errors.budget_reached and errors.searched == 5 and errors.next is not None
    approvals = await search(web, "type=task_opened")  # the newest is 10+ events back
    assert approvals.events == [] and approvals.budget_reached and approvals.searched == 5
    assert approvals.next is not None and "before=" in approvals.next
    found: list[str] = []
    url = approvals.next
    while url:
        page = EventSearchAnswer.model_validate(await (await web.get(url, headers=bearer())).json())
        found += [e.run_id for e in page.events]
        url = page.next or ""
    assert found == [r.run_id for r in reversed(history.completed)]


async def test_bad_event_filters_are_refused_naming_the_filter(web: TestClient) -> None:
    for query, field in [
        ("severity=loud", "severity"),
        ("type=step_failed,exploded", "type"),
        ("run=not-hex", "run"),
        ("before=yesterday", "before"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
    ]:
        answer = await web.get(f"/v1/events?{query}", headers=bearer())
        assert answer.status == 422, query
        problem = await answer.json()
        assert problem["detail"].startswith("The query is not valid") and problem["errors"][0][
            "field"
        ].startswith(field)
    assert (await web.get("/v1/events")).status == 401


# -- GET /v1/analytics/* -----------------------------------------------------------------------


async def test_the_summary_counts_what_happened(web: TestClient, history: History) -> None:
    answer = await web.get("/v1/analytics/summary", headers=bearer())
    assert answer.status == 200
    summary = Summary.model_validate(await answer.json())
    totals = summary.totals
    assert (totals.runs_started, totals.runs_completed, totals.runs_failed, totals.runs_stopped) == (
        4,
        3,
        1,
        0,
    )
    assert totals.success_rate == 0.75
    assert totals.steps_executed == 3 * 2 + 1  # approve and announce of each release, compile
    releases, builds = (
        next(w for w in summary.workflows if w.workflow_id == wf) for wf in ("release", "build")
    )
    assert (releases.name, releases.runs_completed, releases.success_rate) == ("Release", 3, 1.0)
    assert (builds.runs_failed, builds.success_rate) == (1, 0.0)
    assert releases.durations.count == 3 and releases.durations.median_seconds == WAIT
    assert builds.durations.median_seconds == COMPILE
    assert summary.durations.mean_seconds == (3 * WAIT + COMPILE) / 4
    wait = summary.approvals.wait
    assert summary.approvals.decided == 3 and summary.approvals.expired == 0
    assert wait.median_seconds == wait.p95_seconds == wait.mean_seconds == WAIT
    assert [(f.code.value, f.count) for f in summary.failures] == [("STEP_FAILED", 1)]
    assert summary.failures[0].meaning.startswith("A step raised an error")


async def test_the_timeseries_puts_each_run_in_its_hour_and_day(
    web: TestClient, engine: Engine, history: History, clock: Clock
) -> None:
    hourly = Timeseries.model_validate(
        await (await web.get("/v1/analytics/timeseries?bucket=hour", headers=bearer())).json()
    )
    assert len(hourly.points) == 7 * 24 + 1  # the window's whole hours, empty ones too
    busy = [p for p in hourly.points if p.runs_started]
    assert [p.start for p in busy] == [history.started_at.replace(minute=0)]
    assert (busy[0].runs_completed, busy[0].runs_failed, busy[0].approvals_decided) == (3, 1, 3)
    # A run finishing in a later hour counts there; a window of the last two days, per day.
    clock.advance(3600)
    later = engine.start("release", {"service": "late"}, OPS)
    engine.complete_task(later.run_id, "approve", LEAD, False)
    since = zulu(clock.now - timedelta(days=2))
    daily = Timeseries.model_validate(
        await (await web.get(f"/v1/analytics/timeseries?bucket=day&since={since}", headers=bearer())).json()
    )
    assert [p.start.day for p in daily.points] == [21, 22, 23]
    assert (daily.points[-1].runs_started, daily.points[-1].runs_completed) == (5, 4)
    assert sum(p.steps_executed for p in daily.points) == 7 + 1  # a rejection skips announce


async def test_analytics_windows_are_bounded(web: TestClient, clock: Clock) -> None:
    old = zulu(clock.now - timedelta(days=91))
    answer = await web.get(f"/v1/analytics/summary?since={old}", headers=bearer())
    assert answer.status == 422
    assert "Analytics go back 90 days" in (await answer.json())["detail"]
    backwards = f"since={zulu(clock.now)}&until={old}"
    answer = await web.get(f"/v1/analytics/timeseries?{backwards}", headers=bearer())
    assert answer.status == 422 and "must end after it starts" in (await answer.json())["detail"]
    answer = await web.get("/v1/analytics/timeseries?bucket=week", headers=bearer())
    assert answer.status == 422 and (await answer.json())["errors"][0]["field"] == "bucket"


async def test_the_openapi_document_describes_the_answers(web: TestClient) -> None:
    document = await (await web.get("/v1/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for path, model in [
        ("/v1/events", "EventSearchAnswer"),
        ("/v1/analytics/summary", "Summary"),
        ("/v1/analytics/timeseries", "Timeseries"),
    ]:
        operation = document["paths"][path]["get"]
        assert operation["x-required-role"] == "viewer"
        success = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert success == {"$ref": f"#/components/schemas/{model}"}
        assert model in schemas
    assert "success_rate" in schemas["Outcomes"]["properties"]
    names = {p["name"] for p in document["paths"]["/v1/events"]["get"]["parameters"]}
    assert {"type", "severity", "workflow", "run", "since", "until", "before", "limit"} <= names


# -- the console's pages ---------------------------------------------------------------------------


async def test_the_logs_page_filters_pages_and_links_to_runs(
    web: TestClient, engine: Engine, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await web.get("/logs", allow_redirects=False)).status == 303  # sign in first
    await sign_in(web, engine)  # a viewer reads the logs
    page = await web.get("/logs?severity=error")
    html = await page.text()
    assert page.status == 200
    rows = re.findall(r'<tr data-type="([a-z_]+)" data-severity="([a-z]+)">', html)
    assert rows == [("run_failed", "error"), ("step_failed", "error")]
    assert f'href="/runs/{history.failed.run_id}#events"' in html
    assert '<option value="error" selected>' in html and "Build" in html
    assert 'href="/logs"' in html and 'class="here"' in html  # in the navigation, as this page

    first = await (await web.get("/logs?type=task_completed")).text()
    assert first.count('data-type="task_completed"') == 3 and 'rel="next"' not in first
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    with_next = await (await web.get("/logs?severity=info")).text()
    assert with_next.count('data-severity="info"') == 2
    next_url = re.search(r'href="([^"]+)" rel="next"', with_next)
    assert next_url is not None
    older = await web.get(next_url.group(1).replace("&amp;", "&"))
    assert older.status == 200 and "Newest" in await older.text()


async def test_the_logs_page_says_where_a_search_stopped(
    web: TestClient, engine: Engine, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sign_in(web, engine)
    monkeypatch.setattr(queries, "SEARCH_BUDGET", 5)
    html = await (await web.get("/logs?type=task_opened")).text()
    assert "searched the last 5 events" in html and "Search further back" in html


async def test_bad_log_and_analytics_filters_are_400_pages_with_a_sentence(
    web: TestClient, engine: Engine
) -> None:
    await sign_in(web, engine)
    for query in ("severity=loud", "type=nope", "run=xyz", "since=soon", "before=1", "range=5y"):
        answer = await web.get(f"/logs?{query}")
        assert answer.status == 400, query
        assert "These filters are not valid" in await answer.text()
    for query in ("range=1y", "bucket=minute", "range=30d&bucket=hour"):
        answer = await web.get(f"/analytics?{query}")
        assert answer.status == 400, query
        assert "These filters are not valid" in await answer.text()


async def test_the_analytics_page_shows_the_figures_and_a_chart(
    web: TestClient, engine: Engine, history: History
) -> None:
    await sign_in(web, engine)
    page = await web.get("/analytics")
    html = await page.text()
    assert page.status == 200
    tile = re.search(r'id="success-rate">.*?<span class="figure (\w+)">([^<]+)</span>', html, re.S)
    assert tile is not None and tile.groups() == ("bad", "75%")
    assert "3 of 4 finished runs completed" in html
    wait = re.search(r'id="approval-wait">.*?<span class="figure">([^<]+)</span>', html, re.S)
    assert wait is not None and wait.group(1) == "1 min 30 s"
    assert html.count('<svg class="plot"') == 2 and 'class="fill-ok"' in html and 'class="fill-bad"' in html
    assert '<tr data-workflow="release">' in html and '<tr data-code="STEP_FAILED">' in html
    day = await (await web.get("/analytics?range=24h")).text()
    assert "Runs per hour" in day and "Runs per day" not in day


def test_percentiles_of_many_durations_are_within_a_bin_of_the_truth() -> None:
    """Durations are kept as histograms (engine.analytics): a percentile is the mean of its bin."""
    bins: dict[int, list[int]] = {}
    for ms in range(1000, 100_001, 1000):  # 1 s, 2 s, ... 100 s
        n_ms = bins.setdefault(analytics.bin_of(ms), [0, 0])
        n_ms[0] += 1
        n_ms[1] += ms
    figures = analytics.durations(bins)
    assert figures.count == 100 and figures.mean_seconds == 50.5
    assert figures.median_seconds is not None and abs(figures.median_seconds - 50) / 50 < 0.125
    assert figures.p95_seconds is not None and abs(figures.p95_seconds - 95) / 95 < 0.125
