"""The web console in a real browser: Debian's chromium driven by Playwright.

The real web app serves on a free port (in a thread, on the test's namespace); real
worker processes run the steps where a run must advance. Each test signs in as a
person would (an API token, or a one-time link) and clicks. Screenshots are saved
under /tmp/console-shots/ to be looked at.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import web

from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, ActorKind, FailureCode, Run, RunStatus, StepError, StepStatus
from tests.engine_helpers import Clock, finish_step
from tests.redis_servers import free_port
from tests.test_console_http import ASK_WORKFLOW, REDRAFT_WORKFLOW
from tests.test_worker_e2e import Harness
from tests.web_helpers import APPROVAL_WORKFLOW, TOKENS
from webhooks.auth import Role
from webhooks.console import mint_sign_in_link
from webhooks.server import create_app
from webhooks.settings import WebSettings

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")

SHOTS = Path("/tmp/console-shots")
CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OPS = Actor(kind=ActorKind.API, id="ops-bot")
TIMEOUT_MS = 15_000

STEPS_WORKFLOW = {
    "id": "pipeline",
    "name": "Build pipeline",
    "inputs": {"service": {"type": "string", "default": "api"}},
    "steps": [
        {"id": "checkout", "type": "action", "action": "worker.actions:sleep", "args": {"seconds": 0.6}},
        {
            "id": "build",
            "type": "action",
            "action": "worker.actions:sleep",
            "needs": ["checkout"],
            "args": {"seconds": 0.6},
        },
        {
            "id": "publish",
            "type": "action",
            "action": "worker.actions:fail",
            "needs": ["build"],
            "args": {"message": "registry refused the image: quota exceeded", "retryable": False},
        },
        {"id": "announce", "type": "notify", "needs": ["publish"], "notify": {"text": "published"}},
    ],
}
LONG_WORKFLOW = {
    "id": "migrate",
    "name": "Database migration",
    "inputs": {},
    "settings": {"drain_timeout": 120},
    "steps": [{"id": "migrate", "type": "action", "action": "worker.actions:sleep", "args": {"seconds": 60}}],
}

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no chromium at {CHROMIUM}: install Debian's chromium (.ci/run does) or set SWITCHBOARD_CHROMIUM",
        allow_module_level=True,
    )


class WebServer:
    """The real web app on a free port, served by its own event loop in a thread."""

    def __init__(self, engine: Engine, settings: WebSettings) -> None:
        self.app = create_app(engine, settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="console-web", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> WebServer:
        self.thread.start()
        assert self.ready.wait(10), "the web app did not start"
        return self

    def __exit__(self, *_: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def harness(tmp_path: Path, namespace: str, redis_conn: redis.Redis) -> Iterator[Harness]:
    """Workers and an engine on this test's namespace, with the console's workflows added."""
    h = Harness(tmp_path, namespace, redis_conn)
    folder = tmp_path / "workflows"
    for definition in (STEPS_WORKFLOW, LONG_WORKFLOW, APPROVAL_WORKFLOW, REDRAFT_WORKFLOW, ASK_WORKFLOW):
        (folder / f"{definition['id']}.yaml").write_text(yaml.safe_dump(definition))
    catalog = load_folder(folder)
    assert not catalog.errors, catalog.errors
    h.engine = Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)
    yield h
    h.stop_workers()


@pytest.fixture
def site(harness: Harness, settings: WebSettings) -> Iterator[WebServer]:
    with WebServer(harness.engine, settings) as server:
        yield server


@pytest.fixture
def page(chromium: Any, site: WebServer) -> Iterator[Any]:
    context = chromium.new_context(base_url=site.url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())  # the confirmations of stop and reject
    yield tab
    context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in_with_token(page: Any, role: str) -> None:
    page.goto("/")
    assert "/sign-in" in page.url
    shot(page, "01-sign-in")
    page.fill("#token", TOKENS[role])
    page.click("button:has-text('Sign in')")
    page.wait_for_url(re.compile(r"/$"))


def sign_in_with_link(page: Any, engine: Engine, actor: Actor, roles: frozenset[Role]) -> None:
    page.goto(mint_sign_in_link(engine, actor, roles))
    page.click("button:has-text('Continue to the console')")
    page.wait_for_url(re.compile(r"/$"))


def test_sign_in_with_a_token_and_approve_a_task(page: Any, harness: Harness) -> None:
    run = harness.engine.start("release", {"service": "payments"}, OPS)
    sign_in_with_token(page, "approver")
    assert page.inner_text("#approvals-count") == "1"
    row = page.locator(f"tr[data-task='{run.short_id}/approve']")
    assert "Release payments?" in row.inner_text()
    shot(page, "02-command-center-pending")
    row.locator("button[data-decide='approve']").click()
    page.wait_for_selector(".notice.ok")
    assert "Approved “Release payments?”" in page.inner_text(".notice.ok")
    assert page.inner_text("#approvals-count") == "0"
    task = harness.engine.get_run(run.run_id).steps["approve"].task
    assert task is not None and task.approved and task.decided_by == Actor(kind=ActorKind.API, id="lead")
    # The Command Center keeps itself current: a task opened meanwhile shows up without a reload.
    page.evaluate("window.notReloaded = true")
    later = harness.engine.start("release", {"service": "ledger"}, OPS)
    page.wait_for_selector(f"tr[data-task='{later.short_id}/approve']")
    assert page.inner_text("#approvals-count") == "1" and page.evaluate("window.notReloaded") is True


def test_a_viewer_sees_no_approve_button_and_is_refused(page: Any, harness: Harness) -> None:
    run = harness.engine.start("release", {"service": "search"}, OPS)
    viewer = Actor(kind=ActorKind.SLACK, id="U0VIEW", name="vera")
    sign_in_with_link(page, harness.engine, viewer, frozenset({Role.VIEWER}))
    row = page.locator(f"tr[data-task='{run.short_id}/approve']")
    assert row.locator("a:has-text('Review')").count() == 1
    assert row.locator("button[data-decide='approve']").count() == 0
    row.locator("a:has-text('Review')").click()
    assert "needs the approver role" in page.inner_text("#no-approver")
    shot(page, "03-task-page-viewer")
    # Posting the form anyway (its CSRF token is the session's own) is refused on the server.
    answer = page.evaluate(
        """async ([path, csrf]) => {
            const r = await fetch(path, {method: "POST", body: new URLSearchParams({csrf, decision: "approve"})});
            return [r.status, await r.text()];
        }""",
        [f"/runs/{run.run_id}/tasks/approve", page.locator("input[name=csrf]").first.get_attribute("value")],
    )
    assert answer[0] == 403 and "needs the approver role" in answer[1]
    assert harness.engine.get_run(run.run_id).steps["approve"].status is StepStatus.WAITING


def test_the_live_log_follows_a_run_to_its_failed_step(page: Any, harness: Harness) -> None:
    sign_in_with_link(
        page,
        harness.engine,
        Actor(kind=ActorKind.SLACK, id="U0OLIVE", name="olive"),
        frozenset({Role.OPERATOR}),
    )
    run = harness.engine.start("pipeline", {}, OPS)
    page.goto(f"/runs/{run.run_id}")
    page.evaluate("window.notReloaded = true")
    harness.start_worker()
    # The log grows and the timeline changes while the page stays as it is (no reload).
    page.wait_for_selector("tr[data-type='step_completed']")
    page.wait_for_selector("tr[data-type='run_failed']")
    page.wait_for_selector("#run-status .badge.bad")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#steps .badge.ok").count() == 2
    assert "skipped (blocked)" in page.inner_text("#step-announce")
    page.click("#jump-to-failed")
    failed = page.locator("#step-publish")
    assert failed.get_attribute("open") is not None
    text = failed.inner_text()
    assert "STEP_FAILED" in text and "registry refused the image" in text and "retryable\nno" in text.lower()
    shot(page, "04-run-failed-step")
    page.locator("#replay button:has-text('Replay')").click()
    page.wait_for_selector(".notice.ok")
    assert f"Replaying Build pipeline run {run.short_id}" in page.inner_text(".notice.ok")
    assert run.short_id in page.inner_text("#overview")  # the replay links back to its original


def test_filter_the_run_list(page: Any, harness: Harness) -> None:
    engine = harness.engine
    runs = [engine.start("release", {"service": f"svc-{i}"}, OPS) for i in range(55)]
    for run in runs[:3]:
        engine.stop(run.run_id, OPS)
    engine.start("migrate", {}, OPS)  # queued: no worker takes its step
    sign_in_with_token(page, "viewer")
    page.goto("/runs")
    assert page.locator("#runs tbody tr").count() == 50
    page.select_option("#status", "stopped")
    page.click("button:has-text('Filter')")
    page.wait_for_url(re.compile(r"status=stopped"))
    assert page.locator("#runs tbody tr").count() == 3
    assert set(page.locator("#runs tbody .badge").all_inner_texts()) == {"⏹️ stopped"}
    shot(page, "05-runs-filtered")
    page.goto("/runs?workflow=release")
    page.click("a[rel=next]")
    page.wait_for_url(re.compile(r"offset=50"))
    assert page.locator("#runs tbody tr").count() == 5
    page.goto("/runs")
    page.fill("#prefix", runs[10].run_id[:10])
    page.click("button:has-text('Filter')")
    assert page.locator("#runs tbody tr").count() == 1
    assert runs[10].short_id in page.inner_text("#runs")


def test_stop_gracefully_then_escalate(page: Any, harness: Harness) -> None:
    run = harness.engine.start("migrate", {}, OPS)
    harness.start_worker()
    harness.wait_until_running(run.run_id, "migrate")
    sign_in_with_token(page, "operator")
    row = page.locator(f"#running tr[data-run='{run.short_id}']")
    row.locator("button[data-control='stop-graceful']").click()
    page.wait_for_selector(f"#draining tr[data-run='{run.short_id}']")
    assert page.inner_text("#draining [data-count]") == "1 draining"
    assert "migrate" in page.inner_text(f"#draining tr[data-run='{run.short_id}']")
    shot(page, "06-command-center-draining")
    assert harness.engine.get_run(run.run_id).status is RunStatus.DRAINING
    page.locator(f"#draining tr[data-run='{run.short_id}'] button[data-control='stop']").click()
    page.wait_for_selector(f"#failed tr[data-run='{run.short_id}']")
    assert "RUN_STOPPED" in page.inner_text(f"#failed tr[data-run='{run.short_id}']")
    stopped = harness.engine.get_run(run.run_id)
    assert stopped.status is RunStatus.STOPPED
    assert stopped.steps["migrate"].status is StepStatus.CANCELLED
    shot(page, "07-command-center-stopped")


def backfill(harness: Harness, days: int = 7) -> list[Run]:
    """A week of history, made through the command API with a clock that starts a week ago:
    releases approved after a while, pipelines that complete or fail at publish, a few stops.

    The history fills the analytics window of ``days`` whole UTC days ending today, and ends
    an hour before now: whatever the time of day, every run is inside the window, none ahead.
    """
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)
    counts = [[5, 8, 6, 12, 7, 10, 9][day % 7] for day in range(days)]
    spacing = (now - timedelta(hours=1) - start) / sum(counts)
    clock = Clock(start)
    past = Engine(
        harness.redis,
        harness.engine.catalog,
        key_prefix=f"{harness.namespace}:",
        queue_name=harness.namespace,
        clock=clock,
    )
    pick = random.Random(11)
    made: list[Run] = []
    for n in range(sum(counts)):
        clock.now = start + spacing * n + spacing * pick.uniform(0, 0.3)
        roll = pick.random()
        if roll < 0.55:
            run = past.start("release", {"service": pick.choice(["api", "web", "billing"])}, OPS)
            clock.advance(pick.randint(30, 2400))
            made.append(past.complete_task(run.run_id, "approve", Actor(kind=ActorKind.API, id="lead"), True))
        elif roll < 0.93:
            run = past.start("pipeline", {}, OPS)
            for step in ("checkout", "build"):
                clock.advance(pick.randint(20, 200))
                run = finish_step(past, run, step)
            clock.advance(pick.randint(10, 90))
            failing = roll > 0.78
            error = (
                StepError(code=FailureCode.STEP_FAILED, message="registry refused the image")
                if failing
                else None
            )
            made.append(finish_step(past, run, "publish", error=error))
        else:
            run = past.start("release", {"service": "search"}, OPS)
            clock.advance(pick.randint(60, 600))
            made.append(past.stop(run.run_id, OPS))
    return made


def test_logs_filtered_to_errors_and_the_analytics_page(page: Any, harness: Harness) -> None:
    made = backfill(harness)
    failed = [r for r in made if r.status is RunStatus.FAILED]
    assert failed
    sign_in_with_token(page, "viewer")
    page.click("nav a:has-text('Logs')")
    page.select_option("#severity", "error")
    page.click("button:has-text('Search')")
    page.wait_for_url(re.compile(r"severity=error"))
    rows = page.locator("#logs tbody tr")
    assert rows.count() == 2 * len(failed)  # each failed run: its step and the run
    assert set(page.locator("#logs tbody td.sev").all_inner_texts()) == {"ERROR"}
    shot(page, "08-logs-errors")
    rows.first.locator("a.mono").click()
    page.wait_for_url(re.compile(rf"/runs/{failed[-1].run_id}"))
    assert "STEP_FAILED" in page.inner_text("main")

    page.click("nav a:has-text('Analytics')")
    page.wait_for_selector("#success-rate")
    completed = sum(r.status is RunStatus.COMPLETED for r in made)
    assert f"{completed} of {len(made)} finished runs completed" in page.inner_text("#success-rate")
    assert page.locator("svg.plot").count() == 2
    assert page.locator("svg.plot rect.fill-ok").count() >= 5  # a bar of completed runs most days
    shot(page, "09-analytics-week")
    page.click("button[data-window='24h']")
    page.wait_for_url(re.compile(r"range=24h"))
    assert "Runs per hour" in page.inner_text(".charts")
    shot(page, "10-analytics-day")


def test_running_now_shows_the_heartbeat_of_the_steps_worker(page: Any, harness: Harness) -> None:
    """The in-flight step's worker and how long ago it last sent a heartbeat (RQ's record of the
    worker, read through the engine), on the Command Center and the run's page."""
    run = harness.engine.start("migrate", {}, OPS)
    worker = harness.start_worker()
    harness.wait_until_running(run.run_id, "migrate")
    assert list(harness.engine.queries.worker_heartbeats([worker, "no-such-worker"])) == [worker]
    sign_in_with_token(page, "viewer")
    row = page.locator(f"#running tr[data-run='{run.short_id}']")
    assert re.search(
        rf"migrate running, started .+ on {worker} · last heartbeat (just now|.+ ago)", row.inner_text()
    )
    shot(page, "11-command-center-heartbeat")
    page.goto(f"/runs/{run.run_id}")
    assert re.search(rf"on {worker} · last heartbeat (just now|.+ ago)", page.inner_text("#in-flight"))
    harness.engine.stop(run.run_id, OPS)


def test_the_run_list_between_since_and_until(page: Any, harness: Harness) -> None:
    made = backfill(harness, days=3)
    since = made[0].created_at.replace(second=0, microsecond=0) + timedelta(days=1)
    until = since + timedelta(hours=18)
    inside = sorted((r for r in made if since <= r.created_at < until), key=lambda r: r.created_at)
    assert 0 < len(inside) < len(made)
    sign_in_with_token(page, "viewer")
    page.goto("/runs")
    page.fill("#since", since.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#until", until.strftime("%Y-%m-%dT%H:%M"))
    page.click("button:has-text('Filter')")
    page.wait_for_url(re.compile(r"until="))
    shown = page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.run)")
    assert shown == [r.short_id for r in reversed(inside)]
    shot(page, "12-runs-since-until")


def test_a_decided_task_says_who_decided_it_and_when(page: Any, harness: Harness) -> None:
    run = harness.engine.start("release", {"service": "ledger"}, OPS)
    lead = Actor(kind=ActorKind.API, id="lead")
    decided = harness.engine.complete_task(run.run_id, "approve", lead, False, comment="freeze week")
    at = decided.steps["approve"].task.decided_at  # type: ignore[union-attr]
    sign_in_with_token(page, "viewer")
    page.goto(f"/runs/{run.run_id}/tasks/approve")
    verdict = page.inner_text("#verdict")
    assert f"This task was rejected by api:lead at {at:%Y-%m-%d %H:%M:%S} UTC: “freeze week”." in verdict
    assert page.locator(".badge.bad").all_inner_texts() == ["❌ rejected", "❌ rejected"]  # title and verdict
    shot(page, "13-task-decided")
    page.goto(f"/runs/{run.run_id}")
    assert "its approval was rejected" in page.inner_text("#step-announce")
    assert page.inner_text("#step-approve .badge.bad") == "❌ rejected"
    assert page.locator("#run-status .badge").all_inner_texts() == ["✅ completed", "❌ rejected"]
    shot(page, "14-run-rejected")


def test_request_changes_on_a_task_and_answer_a_question(page: Any, harness: Harness) -> None:
    """Issue 14 in the console: the third decision with its comment (refused blank, in the
    engine's words), the round it opens, and an ask step's question answered by the person asked."""
    engine = harness.engine
    draft = engine.start("redraft", {"release": "2.4"}, OPS)
    rollout = engine.start("rollout", {"service": "billing"}, OPS)
    alice = Actor(kind=ActorKind.SLACK, id="U0ALICE", name="alice")
    sign_in_with_link(page, engine, alice, frozenset({Role.APPROVER}))
    assert page.inner_text("#approvals-count") == "3"  # one task, two questions: all wait on people
    assert "2 questions to answer" in page.inner_text("#questions-waiting")
    shot(page, "15-command-center-questions")
    page.click("nav a:has-text('Approvals')")
    question_row = page.locator(f"tr[data-question='{rollout.short_id}/region']")
    assert "slack:U0ALICE" in question_row.inner_text()
    shot(page, "16-approvals-tasks-and-questions")

    page.click("a:has-text('Publish the notes for 2.4?')")
    assert "round 1 of 2" in page.inner_text("#round")
    page.fill("#changes-comment", "   ")  # not empty to the browser, empty to the engine
    page.click("button:has-text('Request changes')")
    assert "A change request needs a comment saying what to change." in page.inner_text("#form-problem")
    assert "required when requesting changes" in page.inner_text("#changes-form .error")
    shot(page, "17-task-changes-comment-required")
    page.fill("#changes-comment", "Mention the new API and the migration guide")
    page.click("button:has-text('Request changes')")
    page.wait_for_selector(".notice.ok")
    assert "Requested changes on “Publish the notes for 2.4?”" in page.inner_text(".notice.ok")
    assert "round 2 of 2" in page.inner_text("#round")
    rounds = page.inner_text("#changes")
    assert "Round 1 · alice asked for changes" in rounds and "Mention the new API" in rounds
    assert "the migration guide" in page.inner_text("#payload")  # the draft ran again with the comment
    shot(page, "18-task-round-two")
    review = engine.get_run(draft.run_id).steps["review"]
    assert review.task is not None and review.task.round == 2 and review.status is StepStatus.WAITING

    page.goto(f"/runs/{rollout.run_id}")
    page.click("#step-region summary")
    assert "Question Which region for billing? · answer it" in page.inner_text("#step-region")
    shot(page, "19-run-waiting-for-answers")
    page.click("[data-question='region'] a")
    assert "Which region for billing?" in page.inner_text("h1")
    assert page.inner_text("#answerers dd") == "slack:U0ALICE"
    shot(page, "20-question-open")
    page.fill("#answer-text", "eu-west")
    page.click("#answer-form button:has-text('Answer')")
    page.wait_for_selector(".notice.ok")
    assert "Answered “Which region for billing?”" in page.inner_text(".notice.ok")
    assert "Answered by alice at" in page.inner_text("#answered")
    assert page.inner_text("#the-answer") == "eu-west"
    assert page.inner_text("#approvals-count") == "2"
    shot(page, "21-question-answered")
    step = engine.get_run(rollout.run_id).steps["region"]
    assert step.result == {"answer": "eu-west", "answered_by": "slack:U0ALICE"}
