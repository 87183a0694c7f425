"""/run over real signed HTTP requests to the bolt app, answered on the command's response_url."""

from __future__ import annotations

import time
from urllib.parse import urlencode

from engine.model import RunStatus
from tests.fake_slack import ALICE, BOB, SIGNING_SECRET, Slack, signed_headers


async def test_forged_and_stale_signatures_are_refused(slack: Slack) -> None:
    body = urlencode({"command": "/run", "text": "help", "user_id": ALICE.id, "team_id": "T0TEAM"})
    forged = await slack.post(body, signed_headers(body, secret="not-the-secret"))
    stale = await slack.post(body, signed_headers(body, timestamp=int(time.time()) - 600))
    unsigned = await slack.post(body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert (forged.status, stale.status, unsigned.status) == (401, 401, 401)
    assert slack.fake.responses == []


async def test_help_lists_every_form(slack: Slack) -> None:
    reply = await slack.command("help")
    assert reply["response_type"] == "ephemeral"
    for form in (
        "start <workflow> [key=value ...]",
        "stop <run> [--graceful]",
        "list [status]",
        "replay <run>",
    ):
        assert form in reply["text"]


async def test_a_typo_gets_the_nearest_valid_form(slack: Slack) -> None:
    reply = await slack.command("strat approve-deploy")
    assert "Unknown command `strat`" in reply["text"]
    assert "Did you mean `/run start <workflow> [key=value ...]`?" in reply["text"]
    flag = await slack.command("stop 0123456789abcdef --gracefull")
    assert "Did you mean `--graceful`?" in flag["text"]
    status = await slack.command("list runing")
    assert "Did you mean `/run list running`?" in status["text"]
    workflow = await slack.command("start aprove-deploy")
    assert "No workflow 'aprove-deploy'" in workflow["text"]
    assert "Did you mean `/run start approve-deploy`?" in workflow["text"]


async def test_start_with_quoted_inputs_then_status_pause_resume_stop(slack: Slack) -> None:
    reply = await slack.command('start approve-deploy service="billing api"', user=ALICE)
    assert "Started *Approve deploy* run" in reply["text"]
    run = slack.engine.list_runs().runs[0]
    assert run.inputs == {"service": "billing api"}
    assert run.started_by.ref == f"slack:{ALICE.id}"
    assert run.status is RunStatus.RUNNING

    prefix = run.run_id[:8]
    status = await slack.command(f"status {prefix}")
    assert f"`{run.run_id}`" in status["text"] and "*running*" in status["text"]
    assert "`approve` human_task *waiting*" in status["text"]

    assert "Paused" in (await slack.command(f"pause {prefix}", user=BOB))["text"]
    assert slack.engine.get_run(run.run_id).status is RunStatus.PAUSED
    again = await slack.command(f"pause {prefix}", user=BOB)
    assert f"Cannot pause run {prefix}: it is paused" in again["text"]
    assert "Resumed" in (await slack.command(f"resume {prefix}"))["text"]
    assert "Stopped" in (await slack.command(f"stop {run.run_id}"))["text"]
    assert slack.engine.get_run(run.run_id).status is RunStatus.STOPPED


async def test_graceful_stop_list_tasks_and_replay(slack: Slack) -> None:
    await slack.command("start approve-deploy service=web")
    await slack.command("start approve-deploy service=db")
    tasks = await slack.command("tasks")
    assert "*2 pending*" in tasks["text"] and "Deploy web?" in tasks["text"] and "Deploy db?" in tasks["text"]
    listed = await slack.command("list running")
    assert listed["text"].count("Approve deploy") == 2
    assert (await slack.command("list completed"))["text"] == "No completed runs."

    run = slack.engine.list_runs().runs[0]
    # No step is executing, so a graceful stop has nothing to drain and stops at once.
    stopped = await slack.command(f"stop {run.short_id} --graceful")
    assert "Stopped" in stopped["text"]
    replayed = await slack.command(f"replay {run.short_id}")
    assert f"Replaying run `{run.short_id}` as" in replayed["text"]
    replay = slack.engine.get_run(run.run_id).replays[0]
    assert slack.engine.get_run(replay).replay_of == run.run_id


async def test_engine_errors_come_back_as_their_sentence(slack: Slack) -> None:
    missing = await slack.command("pause deadbeefdeadbeef")
    assert missing["text"] == "No run 'deadbeefdeadbeef'."
    short = await slack.command("status abc")
    assert "at least 8 characters" in short["text"]
    bad_input = await slack.command("start approve-deploy colour=blue")
    assert "colour: unknown input" in bad_input["text"]
    unbalanced = await slack.command('start approve-deploy service="web')
    assert "Close the quote" in unbalanced["text"]


async def test_a_workflow_named_payload_starts(slack: Slack) -> None:
    # bolt's form parser treats any body containing "payload" as an interactivity payload.
    reply = await slack.command("start payload-sync payload=full")
    assert "Started *Payload sync* run" in reply["text"]
    run = slack.engine.list_runs(workflow_id="payload-sync").runs[0]
    assert run.inputs == {"payload": "full"}
    assert run.status is RunStatus.COMPLETED


async def test_a_signed_but_malformed_payload_is_a_400(slack: Slack) -> None:
    body = urlencode({"payload": "{not json"})
    response = await slack.post(body)
    assert response.status == 400
    assert "malformed body" in await response.text()
    forged = await slack.post(body, signed_headers(body, secret=SIGNING_SECRET + "x"))
    assert forged.status == 401
