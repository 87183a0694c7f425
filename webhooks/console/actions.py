"""The console's forms (POST): run controls, replay, recover, task decisions, answers. Each is one
engine command.

The guard (:func:`~webhooks.console.access.console`) has checked the session, the CSRF
token and the role before any of these runs; the engine then applies its own rules
(workflow operators and approvers, no self-approval, what fits the run's status) and a
refusal comes back as the engine's sentence: a notice on the page the form came from,
or, for the task and question forms, the form again with the values sent and what was
wrong, with the status REST answers for the same refusal (403 not allowed, 409 already
decided, 422 a missing comment or a value that does not fit).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.errors import SwitchboardError
from engine.fields import from_text
from engine.model import Run, StopMode
from webhooks.auth import Role
from webhooks.console.access import FORM, SESSION, back, console, refusal
from webhooks.console.pages import ENGINE, asked_step, question_view, task_view
from webhooks.console.render import field_text
from webhooks.console.sessions import Flash
from webhooks.context import context_of
from webhooks.problems import from_engine_error

COMMANDS = ("pause", "resume", "stop", "stop-graceful", "replay")
SAID = {"pause": "Paused", "resume": "Resumed", "stop": "Stopped", "stop-graceful": "Stopping gracefully"}
FIELD = "field."
INPUT = "input."
DECISIONS = ("approve", "reject", "request_changes")
TEXT_LIMIT = 4000  # a comment or an answer, as the REST API takes them


def _name(run: Run) -> str:
    return f"{run.workflow_name} run {run.short_id}"


@console(Role.OPERATOR)
async def control(request: web.Request) -> web.StreamResponse:
    """Pause, resume, stop (now or gracefully) or replay the run, as the form's ``command`` says."""
    engine = context_of(request).engine
    actor = request[SESSION].actor
    run_ref = request.match_info["run_id"]
    command = request[FORM].get("command", "")
    if command not in COMMANDS:
        return await refusal(
            request, 400, f"Unknown run command {command[:40]!r}; use one of {', '.join(COMMANDS)}."
        )
    try:
        if command == "replay":
            new = await ENGINE.call(engine.replay, run_ref, actor)
            text = f"Replaying run {run_ref[:8]} as {_name(new)}."
            return await back(request, Flash(kind="ok", text=text), f"/runs/{new.run_id}", follow=True)
        if command == "pause":
            run = await ENGINE.call(engine.pause, run_ref, actor)
        elif command == "resume":
            run = await ENGINE.call(engine.resume, run_ref, actor)
        else:
            mode: StopMode = "graceful" if command == "stop-graceful" else "immediate"
            run = await ENGINE.call(engine.stop, run_ref, actor, mode)
    except SwitchboardError as exc:
        return await back(request, Flash(kind="error", text=str(exc)), f"/runs/{run_ref}")
    said = SAID[command]
    if command == "stop-graceful" and run.status.terminal:
        said = "Stopped"  # nothing was in flight: a graceful stop ends the run at once
    return await back(request, Flash(kind="ok", text=f"{said} {_name(run)}."), f"/runs/{run.run_id}")


@console(Role.OPERATOR)
async def replay(request: web.Request) -> web.StreamResponse:
    """Replay a finished run with the inputs the form changed (the others stay as they were)."""
    engine = context_of(request).engine
    original = await ENGINE.call(engine.get_run, request.match_info["run_id"])
    here = f"/runs/{original.run_id}"
    try:
        inputs = changed_inputs(request[FORM], original)
        new = await ENGINE.call(engine.replay, original.run_id, request[SESSION].actor, inputs)
    except (SwitchboardError, ValueError) as exc:
        return await back(request, Flash(kind="error", text=str(exc)), here)
    text = f"Replaying {_name(original)} as run {new.short_id}."
    return await back(request, Flash(kind="ok", text=text), f"/runs/{new.run_id}", follow=True)


@console(Role.OPERATOR)
async def recover(request: web.Request) -> web.StreamResponse:
    """Recover a failed or stopped run: the same run continues from its failed step (or ``from_step``),
    with the inputs the form changed and, if ticked, ``force`` for steps that are not idempotent."""
    engine = context_of(request).engine
    form = request[FORM]
    run = await ENGINE.call(engine.get_run, request.match_info["run_id"])
    here, actor = f"/runs/{run.run_id}", request[SESSION].actor
    from_step, force = form.get("from_step") or None, form.get("force") == "on"
    try:
        inputs = changed_inputs(form, run) or None
        recovered = await ENGINE.call(engine.recover, run.run_id, actor, from_step, inputs, force)
    except (SwitchboardError, ValueError) as exc:
        return await back(request, Flash(kind="error", text=str(exc)), here)
    text = f"Recovered {_name(recovered)}: it is now {recovered.status.value}."
    return await back(request, Flash(kind="ok", text=text), here)


def changed_inputs(form: Any, run: Run) -> dict[str, Any]:
    """The ``input.<name>`` fields the form changed, typed like the run's values (ValueError names one
    that does not fit); unchanged ones are left out, so the run keeps its value."""
    inputs: dict[str, Any] = {}
    for name, text in form.items():
        key = name.removeprefix(INPUT)
        if key == name or (key in run.inputs and text == field_text(run.inputs[key])):
            continue
        try:
            inputs[key] = from_text(run.inputs.get(key), text)
        except ValueError as exc:
            raise ValueError(f"Input {key}: {exc}") from None
    return inputs


@console(Role.APPROVER)
async def decide(request: web.Request) -> web.StreamResponse:
    """Approve (with the edited fields), reject (with a reason) or request changes (with a comment,
    which the engine requires) on a human task."""
    engine = context_of(request).engine
    form = request[FORM]
    run = await ENGINE.call(engine.get_run, request.match_info["run_id"])
    task_id = request.match_info["task_id"]
    from_task_page = form.get("form") == "task"
    decision = form.get("decision", "")
    if decision not in DECISIONS:
        return await refusal(request, 400, "Choose Approve, Reject or Request changes.")
    step = run.steps.get(task_id)
    fields = step.task.fields if step is not None and step.task is not None else {}
    # Sent back for changes, its earlier steps running again: there is no task form to show again.
    between_rounds = step is not None and step.task is None and bool(step.changes)
    sent = {name[len(FIELD) :]: text for name, text in form.items() if name.startswith(FIELD)}
    edits: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if decision == "approve":
        for name, text in sent.items():
            try:
                edits[name] = from_text(fields.get(name), text)
            except ValueError as exc:
                errors[name] = str(exc)
    if errors:
        return await task_view(request, run, 422, "Some values do not fit their fields.", errors, sent)
    comment = form.get("comment", "").strip()[:TEXT_LIMIT] or None
    actor = request[SESSION].actor
    try:
        if decision == "request_changes":
            decided = await ENGINE.call(engine.request_changes, run.run_id, task_id, actor, comment or "")
        else:
            decided = await ENGINE.call(
                engine.complete_task, run.run_id, task_id, actor, decision == "approve", edits, comment
            )
    except SwitchboardError as exc:
        if not from_task_page or between_rounds:
            said = Flash(kind="error", text=str(exc))
            return await back(request, said, f"/runs/{run.run_id}", follow=between_rounds)
        per_field = {k.removeprefix("result."): v for k, v in getattr(exc, "problems", {}).items()}
        if comment:
            sent["comment"] = comment
        status = from_engine_error(exc).status
        return await task_view(request, run, status, str(exc), per_field, sent, decision)
    said = Flash(kind="ok", text=_decided(run, decided, task_id, decision))
    if decided.steps[task_id].task is None:  # sent back: the task reopens once its earlier steps ran again
        return await back(request, said, f"/runs/{run.run_id}", follow=True)
    return await back(request, said, "/approvals")


def _decided(before: Run, after: Run, task_id: str, decision: str) -> str:
    """What the notice after a decision says; for a change request, what the workflow does next."""
    task = before.steps[task_id].task
    title = task.title if task else task_id
    if decision != "request_changes":
        verdict = "Approved" if decision == "approve" else "Rejected"
        return f"{verdict} “{title}” ({_name(after)})."
    now = after.steps[task_id].task
    said = f"Requested changes on “{title}” ({_name(after)})"
    if now is None:  # its earlier steps are running again
        return f"{said}: its earlier steps run again with your comment, then the task reopens."
    if now.decided_at is not None:  # the policy ended it: no more rounds
        return f"{said}: that ended the task as rejected."
    return f"{said}: its earlier steps ran again with your comment; round {now.round} is open."


@console(Role.APPROVER)
async def answer(request: web.Request) -> web.StreamResponse:
    """Answer an ``ask`` step's question as the signed-in person; the engine checks who may answer
    (the question's answerers) and refuses an empty or a second answer in its own words."""
    engine = context_of(request).engine
    run = await ENGINE.call(engine.get_run, request.match_info["run_id"])
    step = asked_step(run, request.match_info["step_id"])
    text = request[FORM].get("answer", "")[:TEXT_LIMIT]
    try:
        answered = await ENGINE.call(engine.answer, run.run_id, step.step_id, request[SESSION].actor, text)
    except SwitchboardError as exc:
        return await question_view(request, run, from_engine_error(exc).status, str(exc), text)
    question = step.question.text if step.question else step.step_id
    said = f"Answered “{question}” ({_name(answered)})."
    return await back(request, Flash(kind="ok", text=said), "/approvals")
