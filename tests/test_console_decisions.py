"""The console's third decision and its answers (issue 14), over HTTP through the real app.

Request changes on a human task (with the comment the engine requires, only where the
workflow allows it, the rounds shown on the task page) and answering an ``ask`` step's
question (who may answer is the engine's rule, as in Slack, REST and the CLI). Refusals are
the engine's sentences on the page, with the status REST answers, never a 500.
"""

from __future__ import annotations

import html
import re
from typing import Any

from aiohttp.test_utils import TestClient

from engine.api import Engine
from engine.model import RunStatus, StepStatus
from engine.views import RunOutcome, describe
from tests import test_console_http
from tests.engine_helpers import Clock, finish_step
from tests.test_console_http import ALICE, BOB, OPS, VIEWER_ONLY, csrf_of, sign_in_by_link

# The HTTP console tests' fixtures: an engine with their workflows, a client keeping cookies.
console_engine = test_console_http.console_engine
browser = test_console_http.browser

CHANGES_SENTENCE = "A change request needs a comment saying what to change."


def notice(html: str) -> str:
    found = re.search(r'<div class="notice ok" role="status">(.*?)</div>', html, re.S)
    assert found, html[:3000]
    return found.group(1)


async def post(client: TestClient, path: str, form: dict[str, str], **options: Any) -> tuple[int, str, str]:
    """Post a form; the page's text unescaped, as a person reads the engine's sentences in it."""
    answer = await client.post(path, data=form, **options)
    return answer.status, answer.url.path, html.unescape(await answer.text())


# -- request changes ---------------------------------------------------------------------------


async def test_request_changes_needs_a_comment_then_reopens_the_task_for_a_new_round(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("redraft", {"release": "2.4"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    target = f"/runs/{run.run_id}/tasks/review"
    page = await (await browser.get(target)).text()
    assert 'id="changes-form"' in page and 'value="request_changes">Request changes</button>' in page
    assert "round 1 of 2" in page and 'id="changes"' not in page  # no change requested yet
    assert "reopens the task for round 2 of 2" in page

    form = {"csrf": csrf, "form": "task", "decision": "request_changes", "next": target}
    for blank in ("", "   \n "):
        status, _, text = await post(browser, target, {**form, "comment": blank})
        assert status == 422, text[:2000]
        assert CHANGES_SENTENCE in text and "required when requesting changes" in text
        assert 'class="field invalid"' in text  # the comment box is marked
    assert console_engine.get_run(run.run_id).steps["review"].status is StepStatus.WAITING

    status, path, text = await post(browser, target, {**form, "comment": "Mention the\nnew API"})
    assert status == 200 and path == target  # the draft ran again at once: round 2 is open
    assert "Requested changes on “Publish the notes for 2.4?” (Redraft run" in notice(text)
    assert "its earlier steps ran again with your comment; round 2 is open." in notice(text)
    after = console_engine.get_run(run.run_id)
    step = after.steps["review"]
    assert step.status is StepStatus.WAITING and step.task is not None and step.task.round == 2
    assert [(c.round, c.by, c.comment) for c in step.changes] == [(1, BOB, "Mention the\nnew API")]
    assert after.steps["compose"].result["text"] == "Notes for 2.4: Mention the\nnew API"

    page = await (await browser.get(target)).text()
    assert "round 2 of 2" in page and "This is the last round" in page
    rounds = re.search(r'<section class="card" id="changes">(.*?)</section>', page, re.S)
    assert rounds, page[:3000]
    assert "Round 1</strong> · bob asked for changes" in rounds.group(1)
    assert "<blockquote>Mention the\nnew API</blockquote>" in rounds.group(1)

    # Past the last round a change request ends the task as a rejection: the run's outcome says so.
    status, path, text = await post(browser, target, {**form, "comment": "Still too long"})
    assert status == 200 and path == target
    assert "that ended the task as rejected" in notice(text)
    assert "This task was sent back for changes by bob at" in text and "“Still too long”" in text
    ended = console_engine.get_run(run.run_id)
    assert ended.status is RunStatus.COMPLETED and describe(ended).outcome is RunOutcome.REJECTED
    assert ended.steps["publish"].status is StepStatus.SKIPPED


async def test_a_task_without_on_changes_requested_offers_no_such_button_and_refuses_one(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("release", {"service": "api"}, OPS)
    csrf = await sign_in_by_link(browser, console_engine)
    target = f"/runs/{run.run_id}/tasks/approve"
    page = await (await browser.get(target)).text()
    assert "changes-form" not in page and "Request changes" not in page and "round 1" not in page
    form = {"csrf": csrf, "form": "task", "decision": "request_changes", "comment": "smaller batch"}
    status, _, text = await post(browser, target, form)
    assert status == 409
    assert f"Task 'approve' of run {run.short_id} takes no change requests" in text
    assert "smaller batch" not in text  # no changes form to refill
    # From a list (no task form), the refusal is a notice on the run's page.
    status, path, text = await post(browser, target, {k: v for k, v in form.items() if k != "form"})
    assert status == 200 and path == f"/runs/{run.run_id}"
    assert "takes no change requests" in text
    assert console_engine.get_run(run.run_id).steps["approve"].status is StepStatus.WAITING


async def test_request_changes_follows_the_identity_rules_of_every_decision(
    browser: TestClient, console_engine: Engine
) -> None:
    """The person who started the run may not decide its tasks, a change request included; the
    comment typed is kept on the refused form; a forged form (no CSRF token) changes nothing."""
    run = console_engine.start("redraft", {"release": "2.5"}, ALICE)
    csrf = await sign_in_by_link(browser, console_engine, ALICE)
    target = f"/runs/{run.run_id}/tasks/review"
    form = {"form": "task", "decision": "request_changes", "comment": "typo in the title"}
    status, _, text = await post(browser, target, form)
    assert status == 403 and "CSRF" in text
    status, _, text = await post(browser, target, {**form, "csrf": csrf})
    assert status == 403
    assert f"alice started run {run.short_id} and so may not decide its tasks" in text
    assert ">typo in the title</textarea>" in text
    assert console_engine.get_run(run.run_id).steps["review"].changes == []


async def test_between_rounds_the_task_page_leads_to_the_run_where_its_step_runs_again(
    browser: TestClient, console_engine: Engine
) -> None:
    run = finish_step(console_engine, console_engine.start("worker-redraft", {}, OPS), "draft")
    csrf = await sign_in_by_link(browser, console_engine)
    target = f"/runs/{run.run_id}/tasks/review"
    form = {"csrf": csrf, "form": "task", "decision": "request_changes", "next": target}
    status, path, text = await post(browser, target, {**form, "comment": "cite the ticket"})
    assert status == 200 and path == f"/runs/{run.run_id}"  # no task to show: the draft is queued
    assert "its earlier steps run again with your comment, then the task reopens." in notice(text)
    assert "runs again: bob requested changes on task 'review'" in text
    moved = await browser.get(target, allow_redirects=False)
    assert moved.status == 303 and moved.headers["Location"] == f"/runs/{run.run_id}#step-review"
    # A second click on the old page's button: the engine's refusal, on the run's page.
    status, path, text = await post(browser, target, {**form, "comment": "and the date"})
    assert status == 200 and path == f"/runs/{run.run_id}"
    assert f"Task 'review' of run {run.short_id} is not open" in text
    finish_step(console_engine, console_engine.get_run(run.run_id), "draft")
    page = await (await browser.get(target)).text()
    assert "round 2 of 4" in page and "cite the ticket" in page


# -- questions --------------------------------------------------------------------------------


async def test_answer_a_question_as_the_person_it_is_for(browser: TestClient, console_engine: Engine) -> None:
    run = console_engine.start("rollout", {"service": "billing"}, OPS)
    console_engine.start("release", {"service": "api"}, OPS)  # a task waiting too
    csrf = await sign_in_by_link(browser, console_engine, BOB)
    target = f"/runs/{run.run_id}/questions/region"

    # The badge counts everything waiting on people: one task and this run's two questions.
    home = await (await browser.get("/")).text()
    assert re.search(r'id="approvals-count" class="count "[^>]*>3</span>', home)
    assert "1 task to decide, 2 questions to answer" in home and 'id="questions-waiting"' in home
    approvals = await (await browser.get("/approvals")).text()
    row = re.search(rf'<tr data-question="{run.short_id}/region">(.*?)</tr>', approvals, re.S)
    assert row, approvals[:3000]
    assert f'href="{target}"' in row.group(1) and "Which region for billing?" in row.group(1)
    assert "slack:U0ALICE" in row.group(1)
    assert "2 open" in approvals and "1 pending" in approvals
    run_page = await (await browser.get(f"/runs/{run.run_id}")).text()
    assert f'Waiting for an answer: <a href="{target}">Which region for billing?</a>' in run_page
    assert run_page.count('<span class="badge warn">⏳ awaiting answer</span>') == 2  # the two ask steps

    page = await (await browser.get(target)).text()
    assert "Which region for billing?" in page and "⏳ awaiting answer" in page
    assert re.search(r"Who may answer</dt><dd>slack:U0ALICE</dd>", page)
    assert 'id="answer-form"' in page

    # Bob is not the person asked: the engine's sentence, his text kept, nothing changed.
    form = {"csrf": csrf, "answer": "us-east", "next": target}
    status, _, text = await post(browser, target, form)
    assert status == 403
    assert "bob may not answer question 'region'; it is for slack:U0ALICE." in text
    assert ">us-east</textarea>" in text
    forged = await post(browser, target, {"answer": "x", "next": target})
    assert forged[0] == 403 and "CSRF" in forged[2]
    assert console_engine.get_run(run.run_id).steps["region"].status is StepStatus.WAITING

    csrf = await sign_in_by_link(browser, console_engine, ALICE)
    form["csrf"] = csrf
    status, _, text = await post(browser, target, {**form, "answer": "  "})
    assert status == 422 and "An answer cannot be empty." in text
    status, path, text = await post(browser, target, {**form, "answer": " eu-west "})
    assert status == 200 and path == target
    assert f"Answered “Which region for billing?” (Rollout run {run.short_id})." in notice(text)
    assert "Answered by alice at" in text and '<blockquote id="the-answer">eu-west</blockquote>' in text
    assert 'id="answer-form"' not in text
    step = console_engine.get_run(run.run_id).steps["region"]
    assert step.result == {"answer": "eu-west", "answered_by": "slack:U0ALICE"}

    # A second answer is refused naming the first; the badge no longer counts the question.
    status, _, text = await post(browser, target, {**form, "answer": "ap-south"})
    assert status == 409 and "was already answered by alice at" in text
    home = await (await browser.get("/")).text()
    assert re.search(r'id="approvals-count" class="count "[^>]*>2</span>', home)


async def test_a_question_for_anyone_and_the_run_it_lets_go_on(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("rollout", {"service": "search"}, OPS)
    console_engine.answer(run.run_id, "region", ALICE, "eu-west")
    csrf = await sign_in_by_link(browser, console_engine, BOB)
    target = f"/runs/{run.run_id}/questions/audience"
    page = await (await browser.get(target)).text()
    assert "Who may answer</dt><dd>anyone</dd>" in page
    status, _, _ = await post(browser, target, {"csrf": csrf, "answer": "staff"})
    assert status == 200
    done = console_engine.get_run(run.run_id)
    assert done.status is RunStatus.COMPLETED and done.steps["go"].status is StepStatus.SUCCEEDED
    run_page = await (await browser.get(f"/runs/{run.run_id}")).text()
    assert "Waiting for an answer" not in run_page
    assert "Question <strong>Who should hear about it?</strong>: answered by bob (“staff”)" in run_page
    assert run_page.count('<span class="badge ok">✅ answered</span>') == 2


async def test_a_viewer_reads_the_question_but_may_not_answer_and_unknown_ones_are_404(
    browser: TestClient, console_engine: Engine
) -> None:
    run = console_engine.start("rollout", {"service": "api"}, OPS)
    await sign_in_by_link(browser, console_engine, ALICE, VIEWER_ONLY)
    target = f"/runs/{run.run_id}/questions/region"
    page = await browser.get(target)
    text = await page.text()
    assert page.status == 200 and "answering questions needs the approver role" in text
    assert 'name="answer"' not in text
    status, _, text = await post(browser, target, {"csrf": csrf_of(text), "answer": "eu-west"})
    assert status == 403 and "needs the approver role" in text
    for path in (f"/runs/{run.run_id}/questions/nope", f"/runs/{run.run_id}/questions/go"):
        answer = await browser.get(path)
        assert answer.status == 404 and f"Run {run.short_id} has no question" in await answer.text()
    assert console_engine.get_run(run.run_id).steps["region"].status is StepStatus.WAITING


async def test_the_waiting_filter_lists_runs_waiting_on_a_task_or_a_question(
    browser: TestClient, console_engine: Engine, clock: Clock
) -> None:
    asking = console_engine.start("rollout", {"service": "api"}, OPS)
    clock.advance(60)
    deciding = console_engine.start("release", {"service": "web"}, OPS)
    clock.advance(60)
    answered = console_engine.start("rollout", {"service": "db"}, OPS)
    for step_id in ("region", "audience"):
        console_engine.answer(answered.run_id, step_id, ALICE, "eu")
    await sign_in_by_link(browser, console_engine)
    text = await (await browser.get("/runs?status=waiting")).text()
    listed = re.findall(r'<tr data-run="([0-9a-f]{8})">', text)
    assert listed == [asking.short_id, deciding.short_id]  # the oldest wait first; none once answered


async def test_an_expired_question_says_so_and_takes_no_answer(
    browser: TestClient, console_engine: Engine, clock: Clock
) -> None:
    run = console_engine.start("rollout", {"service": "api"}, OPS)
    clock.advance(3601)
    assert console_engine.fire_due_timers() == 1
    assert console_engine.get_run(run.run_id).steps["region"].status is StepStatus.FAILED
    csrf = await sign_in_by_link(browser, console_engine, ALICE)
    target = f"/runs/{run.run_id}/questions/region"
    page = html.unescape(await (await browser.get(target)).text())
    assert "⌛ not answered" in page and "This question was not answered:" in page
    assert 'id="answer-form"' not in page and "expires" not in page
    status, _, text = await post(browser, target, {"csrf": csrf, "answer": "eu-west"})
    assert status == 409 and f"Question 'region' of run {run.short_id} is failed." in text
    approvals = await (await browser.get("/approvals")).text()
    assert "No question is waiting for an answer." in approvals
