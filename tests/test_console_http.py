"""The web console over HTTP (aiohttp's test client): sign-in, sessions, CSRF, roles, refusals.

The browser tests (tests/test_console_browser.py) drive the same pages in Chromium;
these check what a browser cannot show: cookie flags, status codes, a forged form.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from bot.web import attach
from engine import sign_in
from engine.api import Engine
from engine.model import Actor, ActorKind, Run, RunStatus, StepStatus
from engine.sign_in import get_sign_in_settings
from tests.console_routes import CONSOLE_ENTRY_POINTS
from tests.engine_helpers import Clock, engine_for
from tests.fake_slack import ALICE as SLACK_ALICE
from tests.fake_slack import FakeSlack, Slack, slack_settings
from tests.test_http_fuzz import FUZZ, judge, requests
from tests.web_helpers import APPROVAL_WORKFLOW, TOKENS
from webhooks.auth import Role
from webhooks.console import mint_sign_in_link
from webhooks.console.sessions import SESSION_COOKIE, SIGN_IN_COOKIE
from webhooks.server import create_app
from webhooks.settings import WebSettings, get_web_settings

ALICE = Actor(kind=ActorKind.SLACK, id="U0ALICE", name="alice")
BOB = Actor(kind=ActorKind.SLACK, id="U0BOB", name="bob")
OPS = Actor(kind=ActorKind.API, id="ops-bot")
EVERYTHING = frozenset({Role.OPERATOR, Role.APPROVER})
VIEWER_ONLY = frozenset({Role.VIEWER})
# An edit task with typed fields, then a notify step: both run without a worker.
EDIT_WORKFLOW: dict[str, Any] = {
    "id": "deploy",
    "name": "Deploy",
    "inputs": {"service": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "review",
            "type": "human_task",
            "task": {
                "task_type": "edit",
                "title": "Deploy {{ inputs.service }}?",
                "fields": {"version": "1.0", "replicas": 2, "service": "{{ inputs.service }}"},
                "editable": ["version", "replicas"],
            },
        },
        {"id": "announce", "type": "notify", "needs": ["review"], "notify": {"text": "deployed"}},
    ],
}
# A draft (a notify step, so no worker is needed), then a task whose change request runs the draft
# again with the comment and reopens the task: two rounds, then a change request ends it.
REDRAFT_WORKFLOW: dict[str, Any] = {
    "id": "redraft",
    "name": "Redraft",
    "inputs": {"release": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "compose",
            "type": "notify",
            "notify": {
                "text": "Notes for {{ inputs.release }}: {{ steps.review.changes.comment | default('first draft') }}"
            },
        },
        {
            "id": "review",
            "type": "human_task",
            "needs": ["compose"],
            "task": {
                "title": "Publish the notes for {{ inputs.release }}?",
                "fields": {"text": "{{ steps.compose.result.text }}"},
                "on_changes_requested": {"rerun": "compose", "max_rounds": 1},
            },
        },
        {"id": "publish", "type": "notify", "needs": ["review"], "notify": {"text": "published"}},
    ],
}
# The same with a worker's draft: between a change request and the worker's report the task is
# not open (its step runs again), which the console shows on the run's page.
WORKER_REDRAFT_WORKFLOW: dict[str, Any] = {
    "id": "worker-redraft",
    "name": "Worker redraft",
    "steps": [
        {"id": "draft", "type": "action", "action": "worker.actions:echo"},
        {
            "id": "review",
            "type": "human_task",
            "needs": ["draft"],
            "task": {
                "title": "Publish the draft?",
                "on_changes_requested": {"rerun": "draft", "max_rounds": 3},
            },
        },
    ],
}
# An ask step only Alice may answer, and one anyone may answer (no answerers, no approvers).
ASK_WORKFLOW: dict[str, Any] = {
    "id": "rollout",
    "name": "Rollout",
    "inputs": {"service": {"type": "string", "required": True}},
    "steps": [
        {
            "id": "region",
            "type": "ask",
            "ask": {
                "question": "Which region for {{ inputs.service }}?",
                "to": "#ops",
                "answerers": ["slack:U0ALICE"],
                "expires_in": "1h",
            },
        },
        {"id": "audience", "type": "ask", "ask": {"question": "Who should hear about it?", "to": "#ops"}},
        {
            "id": "go",
            "type": "notify",
            "needs": ["region", "audience"],
            "notify": {"text": "Deploying {{ inputs.service }} to {{ steps.region.result.answer }}"},
        },
    ],
}


@pytest.fixture
def console_engine(redis_conn: Any, namespace: str, clock: Clock) -> Engine:
    return engine_for(
        redis_conn,
        namespace,
        APPROVAL_WORKFLOW,
        EDIT_WORKFLOW,
        REDRAFT_WORKFLOW,
        WORKER_REDRAFT_WORKFLOW,
        ASK_WORKFLOW,
        clock=clock,
    )


@pytest.fixture
async def browser(aiohttp_client: Any, console_engine: Engine, settings: WebSettings) -> TestClient:
    """A client of the whole web app (console, REST, webhooks) keeping cookies as a browser does."""
    return await aiohttp_client(create_app(console_engine, settings))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def nonce_of(html: str) -> str:
    found = re.search(r'name="nonce" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


async def sign_in_by_link(
    client: TestClient, engine: Engine, actor: Actor = BOB, roles: frozenset[Role] = EVERYTHING
) -> str:
    """Use a freshly minted one-time link as a browser does; returns the session's CSRF token."""
    link = mint_sign_in_link(engine, actor, roles)
    confirm = await client.get(link)
    assert confirm.status == 200
    answer = await client.post(link, data={"nonce": nonce_of(await confirm.text())}, allow_redirects=False)
    assert answer.status == 303, await answer.text()
    home = await client.get("/")
    assert home.status == 200
    return csrf_of(await home.text())


async def sign_in_by_token(client: TestClient, role: str) -> Any:
    form = await client.get("/sign-in")
    return await client.post(
        "/sign-in",
        data={"nonce": nonce_of(await form.text()), "token": TOKENS[role], "next": "/runs"},
        allow_redirects=False,
    )


async def test_pages_need_a_session_and_send_the_browser_to_sign_in(client: TestClient) -> None:
    for path in ("/", "/runs", "/approvals", "/runs/0123456789abcdef"):
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"].startswith("/sign-in?next=")
    refused = await client.post("/runs/0123456789abcdef/control", data={"command": "stop"})
    assert refused.status == 401
    assert "not signed in" in await refused.text()


async def test_a_one_time_link_signs_in_once(client: TestClient, web_engine: Engine) -> None:
    link = mint_sign_in_link(web_engine, ALICE)
    confirm = await client.get(link)
    text = await confirm.text()
    assert confirm.status == 200 and "Sign in as alice" in text and "slack:U0ALICE" in text
    # Only the POST uses the link: looking at it (a link preview) does not.
    looked_again = await client.get(link)
    assert looked_again.status == 200
    answer = await client.post(
        link, data={"nonce": nonce_of(await looked_again.text())}, allow_redirects=False
    )
    assert answer.status == 303 and answer.headers["Location"] == "/"
    cookie = answer.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    home = await client.get("/")
    assert "alice" in await home.text()
    again = await client.get(link)
    assert again.status == 410
    assert "used or has expired" in await again.text()


async def test_the_engine_mints_the_token_and_the_console_redeems_it_once(
    client: TestClient, web_engine: Engine
) -> None:
    """Sign-in is identity, minted engine-side (as the Slack bot and the CLI do, without the
    web edge): two browsers racing to use one token, one signs in and the other is refused."""
    token = sign_in.mint(web_engine.redis, web_engine.keys.prefix, ALICE, ["viewer", "no-such-role"])
    link = sign_in.sign_in_url(token, "")
    assert link == f"{sign_in.SIGN_IN_PATH}/{token}"
    page = await client.get(link)
    text = await page.text()
    assert page.status == 200 and "Sign in as alice" in text
    nonce = nonce_of(text)
    answers = await asyncio.gather(
        *(client.post(link, data={"nonce": nonce}, allow_redirects=False) for _ in range(2))
    )
    assert sorted(a.status for a in answers) == [303, 410]
    home = await (await client.get("/")).text()
    assert "alice" in home and "viewer" in home and "no-such-role" not in home


def test_the_slack_bot_does_not_import_the_web_console() -> None:
    """The Slack edge mints sign-in links from the engine: loading the bot loads no web console."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bot.app; print(sorted(m for m in sys.modules if 'console' in m))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout


async def test_signing_in_with_a_token_acts_as_that_token(browser: TestClient) -> None:
    form = await browser.get("/sign-in")
    wrong = await browser.post(
        "/sign-in", data={"nonce": nonce_of(await form.text()), "token": "nope", "next": "/runs"}
    )
    assert wrong.status == 401
    assert "That API token is not valid." in await wrong.text()
    answer = await sign_in_by_token(browser, "approver")
    assert answer.status == 303 and answer.headers["Location"] == "/runs"
    page = await (await browser.get("/runs")).text()
    assert "lead" in page and "approver" in page


async def test_cookies_are_httponly_samesite_and_secure_behind_https(browser: TestClient) -> None:
    form = await browser.get("/sign-in", headers={"X-Forwarded-Proto": "https"})
    nonce_cookie = form.cookies[SIGN_IN_COOKIE]
    assert nonce_cookie["httponly"] and nonce_cookie["samesite"] == "Strict" and nonce_cookie["secure"]
    # The jar would not send a Secure cookie over plain HTTP: hand the nonce over explicitly.
    answer = await browser.post(
        "/sign-in",
        data={"nonce": nonce_of(await form.text()), "token": TOKENS["viewer"]},
        headers={"X-Forwarded-Proto": "https", "Cookie": f"{SIGN_IN_COOKIE}={nonce_cookie.value}"},
        allow_redirects=False,
    )
    assert answer.status == 303
    session = answer.cookies[SESSION_COOKIE]
    assert session["httponly"] and session["samesite"] == "Lax" and session["secure"]
    assert session["path"] == "/"


async def test_a_sign_in_form_without_its_nonce_is_refused(browser: TestClient) -> None:
    answer = await browser.post("/sign-in", data={"token": TOKENS["admin"]}, allow_redirects=False)
    assert answer.status == 403
    assert SESSION_COOKIE not in answer.cookies


async def test_a_form_without_the_session_csrf_token_changes_nothing(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("release", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    target = f"/runs/{run.run_id}/tasks/approve"
    for forged in ({"decision": "approve"}, {"decision": "approve", "csrf": "x" * len(csrf)}):
        answer = await browser.post(target, data=forged, allow_redirects=False)
        assert answer.status == 403
        assert "CSRF" in await answer.text()
    assert console_engine.get_run(run.run_id).steps["approve"].status is StepStatus.WAITING
    done = await browser.post(target, data={"decision": "approve", "csrf": csrf}, allow_redirects=False)
    assert done.status == 303
    task = console_engine.get_run(run.run_id).steps["approve"].task
    assert task is not None and task.approved and task.decided_by == BOB


async def test_a_viewer_sees_no_buttons_and_is_refused_when_posting(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("release", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine, ALICE, VIEWER_ONLY)
    home = await (await browser.get("/")).text()
    assert run.short_id in home and "Review" in home
    assert 'data-decide="approve"' not in home and "data-control=" not in home
    task_page = await (await browser.get(f"/runs/{run.run_id}/tasks/approve")).text()
    assert "needs the approver role" in task_page and 'name="decision"' not in task_page
    approve = await browser.post(
        f"/runs/{run.run_id}/tasks/approve", data={"decision": "approve", "csrf": csrf}
    )
    assert approve.status == 403
    assert "needs the approver role" in await approve.text()
    stop = await browser.post(f"/runs/{run.run_id}/control", data={"command": "stop", "csrf": csrf})
    assert stop.status == 403
    assert "needs the operator role" in await stop.text()
    assert console_engine.get_run(run.run_id).status is RunStatus.RUNNING


async def test_unknown_runs_and_tasks_are_404_pages(browser: TestClient, console_engine: Engine) -> None:
    csrf = await sign_in_by_link(browser, console_engine)
    run = console_engine.start("release", {"service": "api"}, OPS)
    for path in ("/runs/ffffffffffffffff", "/runs/abc", f"/runs/{run.run_id}/tasks/nope"):
        answer = await browser.get(path)
        assert answer.status == 404, path
        assert answer.content_type == "text/html"
        assert "No run" in await answer.text() or "has no task" in await answer.text()
    answer = await browser.post("/runs/ffffffffffffffff/control", data={"command": "stop", "csrf": csrf})
    assert answer.status == 404


async def test_bad_filters_and_forms_are_4xx_with_a_sentence(
    browser: TestClient, console_engine: Engine
) -> None:
    csrf = await sign_in_by_link(browser, console_engine)
    for query in ("status=bogus", "offset=-1", "prefix=not-hex", "since=yesterday", "range=5y"):
        answer = await browser.get(f"/runs?{query}")
        assert answer.status == 400, query
        assert "These filters are not valid" in await answer.text()
    run = console_engine.start("release", {"service": "api"}, OPS)
    answer = await browser.post(f"/runs/{run.run_id}/control", data={"command": "explode", "csrf": csrf})
    assert answer.status == 400
    assert "Unknown run command" in await answer.text()
    answer = await browser.post(
        f"/runs/{run.run_id}/control", data="not a form", headers={"Content-Type": "text/plain"}
    )
    assert answer.status == 415


async def test_a_refused_command_comes_back_as_the_engines_sentence(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("release", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    answer = await browser.post(
        f"/runs/{run.run_id}/control", data={"command": "resume", "csrf": csrf, "next": f"/runs/{run.run_id}"}
    )
    assert answer.status == 200 and answer.url.path == f"/runs/{run.run_id}"
    assert f"Cannot resume run {run.short_id}" in await answer.text()


async def test_the_task_form_edits_typed_fields_and_refuses_the_rest(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("deploy", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    target = f"/runs/{run.run_id}/tasks/review"
    page = await (await browser.get(target)).text()
    assert 'name="field.version" value="1.0"' in page and 'name="field.replicas" value="2"' in page
    assert "field.service" not in page  # shown in the payload, not editable
    form = {"csrf": csrf, "form": "task", "decision": "approve"}
    bad_type = await browser.post(target, data={**form, "field.version": "1.1", "field.replicas": "two"})
    assert bad_type.status == 422
    text = await bad_type.text()
    assert "Enter a whole number" in text and 'value="two"' in text
    not_editable = await browser.post(target, data={**form, "field.service": "db"})
    assert not_editable.status == 422
    assert "does not let you edit service" in await not_editable.text()
    assert console_engine.get_run(run.run_id).steps["review"].status is StepStatus.WAITING
    done = await browser.post(target, data={**form, "field.version": "1.1", "field.replicas": "3"})
    assert done.status == 200 and done.url.path == "/approvals"
    assert "Approved “Deploy api?”" in await done.text()
    step = console_engine.get_run(run.run_id).steps["review"]
    assert step.result == {"version": "1.1", "replicas": 3, "approved": True}


async def test_reject_with_a_reason(browser: TestClient, console_engine: Engine) -> None:
    run = console_engine.start("deploy", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    answer = await browser.post(
        f"/runs/{run.run_id}/tasks/review",
        data={"csrf": csrf, "form": "task", "decision": "reject", "comment": "not on a Friday"},
    )
    assert answer.status == 200
    task = console_engine.get_run(run.run_id).steps["review"].task
    assert task is not None and task.approved is False and task.comment == "not on a Friday"


async def test_signing_out_ends_the_session(browser: TestClient, console_engine: Engine) -> None:
    csrf = await sign_in_by_link(browser, console_engine)
    answer = await browser.post("/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert answer.status == 303 and answer.headers["Location"] == "/sign-in"
    again = await browser.get("/", allow_redirects=False)
    assert again.status == 303


async def test_the_live_stream_takes_the_session_cookie(browser: TestClient, console_engine: Engine) -> None:
    run = console_engine.start("release", {"service": "api"}, OPS)
    assert (await browser.get(f"/runs/{run.run_id}/stream", allow_redirects=False)).status == 303
    await sign_in_by_link(browser, console_engine)
    answer = await browser.get(f"/runs/{run.run_id}/stream")
    assert answer.status == 200 and answer.content_type == "text/event-stream"
    first = await answer.content.readuntil(b"\n\n")
    assert b"event: run_queued" in first or b"event: run_started" in first
    answer.close()


def run_of(engine: Engine, run: Run) -> Run:
    return engine.get_run(run.run_id)


# -- fuzzing, signed in: whatever a signed-in browser sends, never a 5xx or an error log ------------


@dataclass
class SignedInSite:
    """What :func:`tests.test_http_fuzz.requests` needs: a client, and path values to draw from."""

    client: TestClient
    run_id: str
    finished_id: str
    asking_id: str

    def path_values(self) -> dict[str, st.SearchStrategy[str]]:
        weird = st.text(max_size=30) | st.sampled_from(["%FF", "%00", "..", "%2F", " ", "\u00e9", "\ud800"])
        return {
            "run_id": st.sampled_from(
                [self.run_id, self.run_id[:8], self.finished_id, self.asking_id, "0" * 16]
            )
            | weird,
            "task_id": st.sampled_from(["review", "approve", "nope"]) | weird,
            "step_id": st.sampled_from(["region", "audience", "review", "nope"]) | weird,
            "token": st.sampled_from(["x" * 43, "short"]) | weird,
            "name": st.sampled_from(["console.css", "console.js", "nope.css", "..%2Fpages.py"]) | weird,
        }


@pytest.fixture
async def signed_in_site(browser: TestClient, console_engine: Engine) -> tuple[SignedInSite, str]:
    waiting = console_engine.start("deploy", {"service": "api"}, OPS)
    finished = console_engine.start("release", {"service": "web"}, OPS)
    console_engine.complete_task(finished.run_id, "approve", ALICE, True)
    asking = console_engine.start("rollout", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    return SignedInSite(browser, waiting.run_id, finished.run_id, asking.run_id), csrf


FORM_NAMES = ["command", "decision", "form", "comment", "answer", "next", "field.version", "field.replicas"]
FORM_NAMES += ["field.service", "input.service", "token", "nonce", "x"]
FORM_VALUES = st.text(max_size=20) | st.sampled_from(
    [
        "approve",
        "reject",
        "request_changes",
        "stop",
        "stop-graceful",
        "pause",
        "resume",
        "replay",
        "task",
        "//evil",
        "/runs",
        "3",
    ]
)


def form_bodies(csrf: str) -> st.SearchStrategy[bytes]:
    fields = st.dictionaries(st.sampled_from(FORM_NAMES), FORM_VALUES, max_size=4)
    with_csrf = fields.map(lambda f: urlencode({"csrf": csrf, **f}).encode())
    return with_csrf | fields.map(lambda f: urlencode(f).encode()) | st.binary(max_size=100)


@pytest.mark.parametrize(("method", "template"), [e for e in CONSOLE_ENTRY_POINTS if e[1] != "/sign-out"])
@FUZZ
@given(data=st.data())
async def test_console_entry_points_signed_in(
    signed_in_site: tuple[SignedInSite, str],
    caplog: pytest.LogCaptureFixture,
    method: str,
    template: str,
    data: st.DataObject,
) -> None:
    caplog.set_level(logging.WARNING)
    site, csrf = signed_in_site
    request = data.draw(requests(site, method, template, form_bodies(csrf)))  # type: ignore[arg-type]
    if request.headers.get("Content-Type") == b"application/json":
        request.headers["Content-Type"] = b"application/x-www-form-urlencoded"
    cookies = site.client.session.cookie_jar.filter_cookies(site.client.make_url("/"))
    request.headers["Cookie"] = f"{SESSION_COOKIE}={cookies[SESSION_COOKIE].value}".encode()
    await judge(site, caplog, request)  # type: ignore[arg-type]


async def test_run_console_in_slack_answers_with_a_link_that_signs_in_as_that_user(
    aiohttp_client: Any,
    console_engine: Engine,
    settings: WebSettings,
    fake_slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHBOARD_PUBLIC_URL", "https://switchboard.example")
    get_web_settings.cache_clear()
    get_sign_in_settings.cache_clear()
    app = create_app(console_engine, settings)
    attach(app, console_engine, slack_settings(fake_slack))  # Slack and the console on one server
    slack = Slack(await aiohttp_client(app), fake_slack, console_engine)
    try:
        reply = await slack.command("console", user=SLACK_ALICE)
    finally:
        get_web_settings.cache_clear()
        get_sign_in_settings.cache_clear()
    assert reply["response_type"] == "ephemeral"
    found = re.search(
        r"<https://switchboard\.example(/sign-in/[\w-]+)\|Open the Switchboard console>", reply["text"]
    )
    assert found, reply["text"]
    confirm = await slack.client.get(found.group(1))
    text = await confirm.text()
    assert "slack:U0ALICE" in text and "approver, operator" in text
    answer = await slack.client.post(found.group(1), data={"nonce": nonce_of(text)}, allow_redirects=False)
    assert answer.status == 303
    home = await (await slack.client.get("/")).text()
    assert "alice" in home and "approver, operator" in home


async def test_the_run_page_says_what_the_engines_run_view_says(
    browser: TestClient, console_engine: Engine, clock: Clock
) -> None:
    """Outcomes are worded once (engine.views): a rejected task's decision with who and when, the
    skip's meaning, progress and duration, the same marks as the Slack timeline."""
    run = console_engine.start("deploy", {"service": "api"}, OPS)
    clock.advance(90)
    console_engine.complete_task(run.run_id, "review", BOB, False, comment="not today")
    await sign_in_by_link(browser, console_engine)
    text = await (await browser.get(f"/runs/{run.run_id}")).text()
    assert "rejected by bob at 2026-11-23 09:01:30 UTC (“not today”)" in text
    assert "skipped (blocked)" in text and "its approval was rejected" in text
    assert "2 of 2 steps finished" in text and "1 min 30 s" in text
    assert "⏭️ skipped (blocked)" in text  # the Slack timeline's mark for a skipped step
    task_page = await (await browser.get(f"/runs/{run.run_id}/tasks/review")).text()
    assert "This task was rejected by bob at 2026-11-23 09:01:30 UTC: “not today”." in task_page


async def test_the_run_list_between_since_and_until(
    browser: TestClient, console_engine: Engine, clock: Clock
) -> None:
    """``until`` bounds the list from above (excluded), alone, with ``since``, a workflow or a status."""
    made = []
    for hour in range(5):
        made.append(console_engine.start("release", {"service": f"svc-{hour}"}, OPS))
        clock.advance(3600)  # runs created at 09:00, 10:00, ... 13:00
    await sign_in_by_link(browser, console_engine)

    async def listed(query: str) -> list[str]:
        answer = await browser.get(f"/runs?{query}")
        assert answer.status == 200, await answer.text()
        return re.findall(r'<tr data-run="([0-9a-f]{8})">', await answer.text())

    ids = [r.short_id for r in made]
    assert await listed("until=2026-11-23T11:00") == [ids[1], ids[0]]
    assert await listed("since=2026-11-23T10:00&until=2026-11-23T12:00") == [ids[2], ids[1]]
    assert await listed("workflow=release&until=2026-11-23T10:00") == [ids[0]]
    waiting = await listed("status=waiting&since=2026-11-23T10:00&until=2026-11-23T11:30")
    assert waiting == [ids[1], ids[2]]  # oldest task first
    console_engine.stop(made[3].run_id, OPS)
    assert await listed("status=stopped&until=2026-11-23T12:00") == []
    assert await listed("status=stopped&until=2026-11-23T12:01") == [ids[3]]
    answer = await browser.get("/runs?since=2026-11-23T12:00&until=2026-11-23T11:00")
    assert answer.status == 400 and "until must be later than since" in await answer.text()


async def test_a_task_with_an_expiry_shows_its_countdown_on_every_page(
    aiohttp_client: Any, redis_conn: Any, namespace: str, clock: Clock, settings: WebSettings
) -> None:
    expiring = {**APPROVAL_WORKFLOW, "id": "expiring", "name": "Expiring"}
    expiring["steps"] = [{**APPROVAL_WORKFLOW["steps"][0]}]
    expiring["steps"][0]["task"] = {**expiring["steps"][0]["task"], "expires_in": "2h"}
    engine = engine_for(redis_conn, namespace, expiring, clock=clock)
    run = engine.start("expiring", {"service": "api"}, OPS)
    client = await aiohttp_client(create_app(engine, settings))
    await sign_in_by_link(client, engine)
    for path in ("/", "/approvals", f"/runs/{run.run_id}", f"/runs/{run.run_id}/tasks/approve"):
        answer = await client.get(path)
        assert answer.status == 200, path
        assert 'data-countdown data-past="expired" datetime="2026-11-23T11:00:00+00:00">in 2 h' in (
            await answer.text()
        ), path
