"""Messages and modals about one run: approval cards, failure alerts, progress, the step timeline.

Pure functions from engine models to Block Kit, so they are tested without Slack and
every text goes through :mod:`bot.blocks`, which keeps it within Slack's limits.
"""

from __future__ import annotations

import json
from typing import Any

from bot import ids
from bot.blocks import (
    FALLBACK_TEXT,
    INPUT_LABEL,
    INPUT_VALUE,
    MESSAGE_BLOCKS,
    MODAL_BUTTON,
    MODAL_TITLE,
    PRIVATE_METADATA,
    VIEW_BLOCKS,
    Block,
    actions,
    button,
    context,
    escape,
    fit,
    header,
    plain,
    section,
    truncate,
    value_text,
    when,
    who,
)
from engine.model import (
    FAILURE_MEANINGS,
    ChangeRequest,
    Event,
    EventType,
    FailureCode,
    Run,
    StepState,
    StepStatus,
    Task,
)
from engine.views import FailureView, StepView, TaskOutcome, TaskView, describe, describe_task

Message = dict[str, Any]  # chat.postMessage / chat.update arguments: text and blocks


def message(text: str, blocks: list[Block]) -> Message:
    """A message: ``text`` (mrkdwn, its pieces escaped like any block's) is its notification text."""
    posted: Message = {"text": truncate(text, FALLBACK_TEXT)}
    if blocks:
        posted["blocks"] = fit(blocks, MESSAGE_BLOCKS)
    return posted


def notification(text: str) -> Message:
    """A ``notify`` step's message. Its text carries run inputs and step results, so it is shown
    as written: escaped whole, it can mention nobody and disguise no link (plain URLs still link)."""
    return message(escape(text), [])


# -- approval cards --------------------------------------------------------------------------


def approval_card(run: Run, task: Task) -> Message:
    """The card posted when a human task opens: everything needed to decide, and the buttons."""
    value = ids.task_value(run.run_id, task.task_id)
    buttons = [
        button("Approve", ids.TASK_APPROVE, value, "primary"),
        button("Reject", ids.TASK_REJECT, value, "danger"),
    ]
    if task.editable:
        buttons.append(button("Edit", ids.TASK_EDIT, value))
    if task.changes_allowed:
        buttons.append(button("Request changes", ids.TASK_CHANGES, value))
    expiry = f"expires {when(task.expires_at)}" if task.expires_at else "does not expire"
    view = describe_task(task)
    blocks = [*_task_body(run, view), context(f"Started by {who(run.started_by)} · {expiry}")]
    if view.quorum or view.rejections:
        blocks.append(section(quorum_text(view)))
    if task.escalated:
        to = ", ".join(ref_text(ref) for ref in task.approvers)
        blocks.append(section(f"⏫ *Escalated* to {to}: nobody decided in time"))
    step = run.steps.get(task.task_id)
    if step is not None and step.changes:
        blocks.append(section(changes_text(view, step.changes[-1])))
    blocks.append(actions(*buttons, block_id=f"task:{value}"))
    return message(f"{task.task_type.title()} needed: {escape(task.title)}", blocks)


def question_message(run: Run, step: StepState) -> Message:
    """An ``ask`` step's question: answered by a reply in its thread or the Answer button."""
    question = step.question
    assert question is not None
    blocks = [section(f"❓ {escape(question.text)}"), context(question_place(run, step.step_id))]
    if question.answered_by is not None:
        answer = escape(truncate(question.answer or "", 2500))
        by = f"{who(question.answered_by)} {when(question.answered_at)}"
        blocks.append(section(f"✅ *Answered* by {by}\n> {answer}"))
    elif step.status is StepStatus.WAITING:
        expiry = f" · expires {when(question.expires_at)}" if question.expires_at else ""
        blocks.append(context(f"Reply in this thread, or click Answer{expiry}"))
        blocks.append(actions(answer_button(run.run_id, step.step_id)))
    else:
        blocks.append(section(f"⌛ *Not answered*: {escape(step.detail or step.status.value)}"))
    return message(f"Question: {escape(question.text)}", blocks)


def question_place(run: Run, step_id: str) -> str:
    """Where a question comes from: the workflow, the run and the ``ask`` step."""
    return f"*{escape(run.workflow_name)}* · run `{run.short_id}` · step `{step_id}`"


def answer_button(run_id: str, step_id: str) -> Block:
    """The Answer button of a question, wherever it is shown: it opens :func:`answer_modal`."""
    return button("Answer", ids.QUESTION_ANSWER, ids.task_value(run_id, step_id), "primary")


def answer_modal(run: Run, step: StepState, metadata: str) -> Block:
    question = f"❓ {escape(step.question.text if step.question else '')}"
    return _comment_modal(ids.ANSWER_MODAL, "Answer", "Answer", question, "Your answer", metadata)


def reminder(run: Run, task: Task, escalated: bool = False) -> Message:
    """A direct message to an approver who has not decided: why, then the card with its buttons."""
    why = "was escalated to you" if escalated else "is waiting for your decision"
    expiry = f", and expires {when(task.expires_at)}" if task.expires_at else ""
    card = approval_card(run, task)
    lead = section(f"⏰ *{escape(task.title)}* (run `{run.short_id}`) {why}{expiry}.")
    return message(f"Reminder: {escape(task.title)} {why}", [lead, *card.get("blocks", [])])


def ref_text(ref: str) -> str:
    """An identity ref as Slack shows it: a mention for ``slack:U123``, the ref otherwise."""
    kind, _, ident = ref.partition(":")
    return f"<@{ident}>" if kind.casefold() == "slack" and ident else escape(ref)


def decided_card(run: Run, task: Task, cancelled: str | None = None) -> Message:
    """The card after the task closed: the outcome replaces the buttons.

    ``cancelled`` says why, for a task closed undecided; by default its cancelled step's error.
    """
    view = describe_task(task, run.steps.get(task.task_id), cancelled)
    outcome = task_outcome(view)
    if view.quorum:
        outcome += f"\n{quorum_text(view)}"
    blocks = [*_task_body(run, view), section(outcome), context(f"Started by {who(run.started_by)}")]
    return message(f"{escape(task.title)}: {outcome}", blocks)


def task_outcome(task: TaskView) -> str:
    match task.outcome:
        case TaskOutcome.CANCELLED:
            return f"⚪ *Cancelled*: {escape(task.cancelled_because or 'the run ended')}"
        case TaskOutcome.EXPIRED:
            return f"⌛ *Expired* {when(task.expires_at)}: nobody decided, so the run failed"
        case TaskOutcome.REJECTED_ON_EXPIRY:
            return f"⌛ *Expired* {when(task.decided_at)}: rejected automatically"
        case TaskOutcome.CHANGES_REQUESTED:
            text = f"🔁 *Changes requested* by {who(task.decided_by)} {when(task.decided_at)}"
            if task.comment:
                text += f"\n> {escape(truncate(task.comment, 1000))}"
            return text
        case TaskOutcome.OPEN:
            return "⏳ *Awaiting a decision*"
        case TaskOutcome.APPROVED | TaskOutcome.REJECTED:
            verdict = "✅ *Approved*" if task.outcome is TaskOutcome.APPROVED else "❌ *Rejected*"
            text = f"{verdict} by {who(task.decided_by)} {when(task.decided_at)}"
            if task.comment:
                text += f"\n> {escape(truncate(task.comment, 1000))}"
            return text


def changes_text(task: TaskView, change: ChangeRequest) -> str:
    """What the last change request asked, on the card of the round it opened."""
    of = f" of {task.max_rounds + 1}" if task.max_rounds is not None else ""
    return (
        f"🔁 *Round {task.round}{of}*: {who(change.by)} asked for changes {when(change.at)}"
        f"\n> {escape(truncate(change.comment, 1000))}"
    )


def quorum_text(task: TaskView) -> str:
    """Who has approved (and rejected) so far: ``👥 *Approvals: 1 of 2* <@U1>``."""
    approvers = ", ".join(who(d.by) for d in task.approvals) or "nobody yet"
    text = f"👥 *Approvals: {len(task.approvals)} of {task.min_approvals}* {approvers}"
    if task.rejections:
        text += f"\n🚫 *Rejected by* {', '.join(who(d.by) for d in task.rejections)}"
    return text


def _task_body(run: Run, task: TaskView) -> list[Block]:
    where = (
        f"*{escape(run.workflow_name)}* (`{run.workflow_id}`) · run `{run.short_id}`"
        f" · {task.task_type} · step `{task.task_id}`"
    )
    blocks: list[Block] = [header(task.title), section(where)]
    if task.description:
        blocks.append(section(escape(task.description)))
    fields = [f"*{escape(name)}*\n{value_text(value)}" for name, value in task.fields.items()]
    if fields:
        blocks.append(section("*Details*", fields=fields))
        if len(fields) > 10:
            blocks.append(context(f"… {len(fields) - 10} more fields"))
    return blocks


# -- modals ----------------------------------------------------------------------------------


def origin_metadata(run_id: str, task_id: str, channel: str | None) -> str:
    """What a modal must remember about the button that opened it."""
    return truncate(json.dumps({"run": run_id, "task": task_id, "channel": channel}), PRIVATE_METADATA)


def origin_of(view: Block) -> dict[str, Any]:
    """The run, task and channel a submitted modal was opened for (see :func:`origin_metadata`)."""
    origin: dict[str, Any] = json.loads(view.get("private_metadata") or "{}")
    return origin


def reject_modal(run: Run, task: Task, metadata: str) -> Block:
    where = f"*{escape(task.title)}* (run `{run.short_id}`, step `{task.task_id}`)"
    return _comment_modal(ids.REJECT_MODAL, "Reject task", "Reject", f"Reject {where}?", "Reason", metadata)


def changes_modal(run: Run, task: Task, metadata: str) -> Block:
    """Asks what should change; submitting sends the task back (see the workflow's on_changes_requested)."""
    where = f"*{escape(task.title)}* (run `{run.short_id}`, step `{task.task_id}`)"
    question = f"Send {where} back for changes?"
    return _comment_modal(
        ids.CHANGES_MODAL, "Request changes", "Send back", question, "What should change?", metadata
    )


def _comment_modal(
    callback_id: str, title: str, submit: str, question: str, label: str, metadata: str
) -> Block:
    """A modal asking one question with a multiline answer (a reason, the changes wanted)."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": metadata,
        "title": plain(title, MODAL_TITLE),
        "submit": plain(submit, MODAL_BUTTON),
        "close": plain("Cancel", MODAL_BUTTON),
        "blocks": [
            section(question),
            {
                "type": "input",
                "block_id": ids.REASON_BLOCK,
                "label": plain(label, INPUT_LABEL),
                "element": {"type": "plain_text_input", "action_id": ids.REASON_INPUT, "multiline": True},
            },
        ],
    }


def edit_modal(run: Run, task: Task, metadata: str) -> Block:
    """One input per editable field, prefilled; submitting approves with the edited values.

    A value longer than a Slack input holds gets no input (a cut-off prefill would be
    saved cut off): it is kept as it is, and the modal says so.
    """
    inputs: list[Block] = []
    for name in task.editable:
        current = task.fields.get(name)
        initial = current if isinstance(current, str) else json.dumps(current, default=str)
        if len(initial) > INPUT_VALUE:
            inputs.append(
                context(
                    f"*{escape(name)}* is too long to edit here ({len(initial):,} characters);"
                    " it is kept as it is. The REST API can change it."
                )
            )
            continue
        element: Block = {
            "type": "plain_text_input",
            "action_id": ids.FIELD_INPUT,
            "multiline": len(initial) > 60 or "\n" in initial,
        }
        if initial:
            element["initial_value"] = initial
        inputs.append(
            {
                "type": "input",
                "block_id": f"{ids.FIELD_BLOCK_PREFIX}{name}",
                "label": plain(name, INPUT_LABEL),
                "element": element,
                "optional": True,
            }
        )
    blocks = [section(f"*{escape(task.title)}* (run `{run.short_id}`, step `{task.task_id}`)"), *inputs]
    return {
        "type": "modal",
        "callback_id": ids.EDIT_MODAL,
        "private_metadata": metadata,
        "title": plain("Edit and approve", MODAL_TITLE),
        "submit": plain("Approve edits", MODAL_BUTTON),
        "close": plain("Cancel", MODAL_BUTTON),
        "blocks": fit(blocks, VIEW_BLOCKS),
    }


def details_modal(run: Run) -> Block:
    """The step timeline: which steps succeeded, failed, were cancelled or skipped, and why."""
    view = describe(run)
    summary = f"*{escape(view.workflow_name)}* run `{view.run_id}` is *{view.status_text}*"
    if view.failure:
        summary += f"\n{failure_text(view.failure)}"
    blocks = [section(summary), *(section(step_line(step)) for step in view.steps)]
    return {
        "type": "modal",
        "callback_id": ids.DETAILS_MODAL,
        "title": plain(f"Run {view.short_id}", MODAL_TITLE),
        "close": plain("Close", MODAL_BUTTON),
        "blocks": fit(blocks, VIEW_BLOCKS, more="more steps"),
    }


def failure_text(failure: FailureView) -> str:
    return f"`{failure.code.value}`: {escape(failure.message)}"


def step_line(step: StepView) -> str:
    """A step of the timeline: mark, id, type, status, attempts, then its error or detail below."""
    line = f"{step.mark} `{step.step_id}` {step.type.value} *{step.status_label}*"
    if step.attempt > 1:
        line += f" after {step.attempt} attempts"
    if step.failed and step.error:
        line += f"\n`{step.error.code.value}` {escape(truncate(step.error.message, 1500))}"
    elif step.note:
        line += f"\n{escape(truncate(step.note, 1500))}"
    return line


# -- failure alerts --------------------------------------------------------------------------


def failure_alert(run: Run) -> Message:
    """Why a run failed, in the words operators triage with, and what they can do next."""
    failure = describe(run).failure
    code = failure.code if failure else FailureCode.STEP_FAILED
    title = "Drain timeout" if code is FailureCode.DRAIN_TIMEOUT else "Run failed"
    step_id = failure.step_id if failure else None
    retryable = "yes" if failure and failure.retryable else "no"
    fields = [
        f"*Workflow*\n{escape(run.workflow_name)} (`{run.workflow_id}`)",
        f"*Run*\n`{run.run_id}`",
        f"*Failure code*\n`{code.value}`",
        f"*Meaning*\n{failure.meaning if failure else FAILURE_MEANINGS[code]}",
        f"*Failed step*\n`{step_id}`" if step_id else "*Failed step*\nnone (the run itself)",
        f"*Retryable*\n{retryable}",
    ]
    if failure and failure.provider_status:
        fields.append(f"*Provider status*\n{failure.provider_status}")
    message_text = escape(truncate(failure.message if failure else "no error recorded", 2800))
    blocks = [
        header(f"{title}: {run.workflow_name}"),
        section(f"Run `{run.short_id}` started by {who(run.started_by)}", fields=fields),
        section(f"*Error*\n```{message_text}```"),
        actions(
            button("Retry from failed step", ids.RUN_RECOVER, run.run_id, "primary"),
            button("Replay", ids.RUN_REPLAY, run.run_id),
            button("Details", ids.RUN_DETAILS, run.run_id),
        ),
    ]
    return message(f"{title}: {escape(run.workflow_name)} run {run.short_id} ({code.value})", blocks)


# -- run progress ----------------------------------------------------------------------------


def run_header(run: Run) -> Message:
    """The run's first message; progress replies go in its thread."""
    inputs = ", ".join(f"{escape(k)}={value_text(v, 80)}" for k, v in run.inputs.items()) or "no inputs"
    text = f"▶️ *{escape(run.workflow_name)}* run `{run.short_id}` started by {who(run.started_by)}"
    return message(
        f"{escape(run.workflow_name)} run {run.short_id} started",
        [section(text), context(f"Run `{run.run_id}` · {truncate(inputs, 1500)}")],
    )


def progress_line(event: Event, run: Run) -> str | None:
    """One thread reply for a run status change, or None for events that are not progress."""
    by = who(event.actor)
    match event.type:
        case EventType.RUN_STARTED:
            return f"▶️ Started (`{run.workflow_id}` v{run.workflow_version})"
        case EventType.RUN_PAUSED:
            return f"⏸️ Paused by {by}"
        case EventType.RUN_RESUMED:
            return f"▶️ Resumed by {by}"
        case EventType.RUN_DRAINING:
            deadline = run.stop.drain_deadline if run.stop else None
            return f"🛑 Stopping gracefully (asked by {by}); in-flight steps finish until {when(deadline)}"
        case EventType.RUN_RECOVERED:
            return f"🔁 Recovered by {by}: running again from step `{event.data.get('from_step')}`"
        case EventType.RUN_COMPLETED:
            return "✅ Completed"
        case EventType.RUN_FAILED | EventType.RUN_STOPPED:
            verdict = "🔴 Failed" if event.type is EventType.RUN_FAILED else "⏹️ Stopped"
            failure = run.failure
            if failure is None:
                return verdict
            return f"{verdict}: `{failure.code.value}` {escape(truncate(failure.message, 2500))}"
        case _:
            return None
