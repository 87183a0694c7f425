"""The ``switchboard`` command: processes (web, worker, up) and operator commands.

Operator commands mirror the Slack ``/run`` commands and call the same engine API::

    switchboard run start deploy-approval service=api
    switchboard run stop 1a2b3c4d --graceful
    switchboard approve 1a2b3c4d approve --as bob
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.api import Engine
from engine.catalog import load_folder
from engine.errors import InvalidInput, SwitchboardError
from engine.intake import AcceptedRun
from engine.model import Actor, ActorKind, Run, RunStatus
from engine.settings import Settings, get_settings
from engine.views import describe, utc_text
from engine.workflow import InputError
from switchboard import logs

log = logging.getLogger("switchboard")


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=two words"]`` -> ``{"a": "1", "b": "two words"}``; anything else is an error."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"Expected key=value, got {pair!r}.")
        values[key.strip()] = value
    return values


# --- processes ------------------------------------------------------------------------------


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from switchboard.app import serve

    serve(settings, args.host, args.port)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.process import run_worker

    run_worker(settings, burst=args.burst, name=args.name)
    return 0


UP_BANNER = """
Switchboard is up: {url}  (Redis {redis}, {workers} workers). Ctrl-C stops it.
In another terminal:
  switchboard workflows list
  switchboard --as alice run start deploy-approval service=api
  switchboard tasks
  switchboard --as bob approve <run-id> approve
  curl {url}/healthz
"""


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Web server and workers on one machine, on the embedded Redis unless REDIS_URL or sentinels are set.

    Nothing it starts outlives it, even SIGKILLed: its workers get SIGTERM from the kernel
    when it dies, and the embedded Redis stops once its last user is gone (engine.embedded).
    """
    from engine.connection import RedisTarget, resolve
    from engine.lifetime import ends_with_this_process
    from switchboard.app import serve

    settings = resolve(settings)  # the embedded server started: its socket is the URL to share
    env = {**os.environ, **({"REDIS_URL": settings.redis_url} if settings.redis_url else {})}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "switchboard", "worker", "--name", f"up-{os.getpid()}-{i}"],
            env=env,
            preexec_fn=ends_with_this_process(signal.SIGTERM),
        )
        for i in range(args.workers)
    ]
    address = f"http://{args.host}:{args.port}"
    redis = RedisTarget.of(settings).describe()
    log.info("switchboard up", extra={"url": address, "redis": redis, "workers": args.workers})
    print(UP_BANNER.format(url=address, redis=redis, workers=args.workers), flush=True)
    try:
        serve(settings, args.host, args.port)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


# --- workflows ------------------------------------------------------------------------------


def cmd_workflows_validate(args: argparse.Namespace, settings: Settings) -> int:
    folder = Path(args.path) if args.path else settings.workflows
    catalog = load_folder(folder)
    for workflow_id, source in sorted(catalog.sources.items()):
        print(f"ok     {source}  ({workflow_id})")
    for error in catalog.errors:
        print(f"error  {error}")
    if not catalog.workflows and not catalog.errors:
        print(f"no workflow files in {folder}")
        return 1
    return 1 if catalog.errors else 0


def cmd_workflows_list(args: argparse.Namespace, engine: Engine) -> int:
    for workflow in engine.workflows():
        inputs = ", ".join(
            f"{name}{'' if spec.required else '?'}:{spec.type}" for name, spec in workflow.inputs.items()
        )
        print(f"{workflow.id:24} {workflow.name}  [{inputs}]")
    return 0


# --- runs -----------------------------------------------------------------------------------


def format_run(run: Run) -> str:
    """A run's view (engine.views) as plain text: the header, its failure, a line per step."""
    view = describe(run)
    lines = [
        f"run {view.run_id}  {view.workflow_id} v{view.workflow_version}  {view.status.value.upper()}",
        f"started by {view.started_by.display} at {utc_text(view.created_at)}",
    ]
    if view.inputs:
        lines.append("inputs: " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in view.inputs.items()))
    if view.replay_of:
        lines.append(f"replay of {view.replay_of}")
    if view.failure:
        failure = view.failure
        where = f" in step {failure.step_id}" if failure.step_id else ""
        retry = "retryable" if failure.retryable else "not retryable"
        lines.append(f"failure: {failure.code.value}{where}: {failure.message} ({retry})")
        lines.append(f"         {failure.meaning}")
    lines.append("steps:")
    for step in view.steps:
        note = step.note or ""
        if step.task and step.task.open:
            note = f"{note}: {step.task.title}"
        lines.append(f"  {step.step_id:20} {step.status_label:20} {note}".rstrip())
    return "\n".join(lines)


def format_run_row(run: Run) -> str:
    return (
        f"{run.short_id}  {run.status.value:10} {run.workflow_id:24} "
        f"{run.created_at:%Y-%m-%d %H:%M:%S}  {run.started_by.display}"
    )


def cmd_run(args: argparse.Namespace, engine: Engine) -> int:
    actor = cli_actor(args)
    action = args.run_command
    run: Run
    if action == "start":
        run = engine.start(args.workflow, parse_assignments(args.inputs), actor, trigger={"kind": "cli"})
    elif action == "pause":
        run = engine.pause(args.run, actor)
    elif action == "resume":
        run = engine.resume(args.run, actor)
    elif action == "stop":
        run = engine.stop(args.run, actor, mode="graceful" if args.graceful else "immediate")
    elif action == "replay":
        run = engine.replay(args.run, actor, parse_assignments(args.inputs) or None)
    elif action == "status":
        found = engine.run_or_accepted(args.run)
        if isinstance(found, AcceptedRun):
            print(found.sentence)
            return 0
        run = found
    elif action == "events":
        for event in engine.events(args.run):
            data = json.dumps(event.data, default=str) if event.data else ""
            step = f" [{event.step_id}]" if event.step_id else ""
            print(f"{event.at:%H:%M:%S}  {event.type}{step}  by {event.actor.display}  {data}".rstrip())
        return 0
    else:  # list
        status = RunStatus(args.status) if args.status else None
        page = engine.list_runs(
            status=status, workflow_id=args.workflow, prefix=args.prefix, limit=args.limit
        )
        for listed in page.runs:
            print(format_run_row(listed))
        if not page.runs:
            print("no runs")
        return 0
    print(format_run(run))
    return 0


def cmd_tasks(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine.pending_tasks(args.run)
    for pending in tasks:
        task = pending.task
        expires = f"  expires {task.expires_at:%Y-%m-%d %H:%M}" if task.expires_at else ""
        where = f"{pending.run.short_id}  {pending.run.workflow_id:24} {task.task_id:16}"
        print(f"{where} {task.task_type:9} {task.title}{expires}")
    if not tasks:
        print("no pending tasks")
    return 0


def cmd_decide(args: argparse.Namespace, engine: Engine) -> int:
    approved = args.command == "approve"
    edits: dict[str, Any] = parse_assignments(getattr(args, "set", None) or [])
    comment = getattr(args, "comment", None) or getattr(args, "reason", None)
    run = engine.complete_task(args.run, args.task, cli_actor(args), approved, edits, comment)
    print(format_run(run))
    return 0


def cli_actor(args: argparse.Namespace) -> Actor:
    name = args.as_user or os.environ.get("USER") or getpass.getuser()
    return Actor(kind=ActorKind.CLI, id=name, name=name)


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__.split("\n")[0])
    parser.add_argument("--as", dest="as_user", metavar="NAME", help="act as this person (default: $USER)")
    parser.add_argument("--log-format", choices=["json", "text"], help="log line format")
    sub = parser.add_subparsers(dest="command", required=True)

    web = sub.add_parser("web", help="run the HTTP server (webhooks, REST API, Slack events)")
    web.add_argument("--host", default="0.0.0.0")
    web.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))

    worker = sub.add_parser("worker", help="run an RQ worker that executes steps")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: generated)")

    up = sub.add_parser("up", help="web server and workers together on this machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--workers", type=int, default=2)

    workflows = sub.add_parser("workflows", help="list or validate workflow files")
    workflows_sub = workflows.add_subparsers(dest="workflows_command", required=True)
    validate = workflows_sub.add_parser("validate", help="check workflow files, naming file and field")
    validate.add_argument("path", nargs="?", help="folder (default: $SWITCHBOARD_WORKFLOWS or ./workflows)")
    workflows_sub.add_parser("list", help="the workflows and their inputs")

    run = sub.add_parser("run", help="start, pause, resume, stop, replay or inspect runs")
    run_sub = run.add_subparsers(dest="run_command", required=True)
    start = run_sub.add_parser("start", help="start a run: start <workflow> [key=value ...]")
    start.add_argument("workflow")
    start.add_argument("inputs", nargs="*", metavar="key=value")
    for name in ("pause", "resume", "status", "events"):
        run_sub.add_parser(name, help=f"{name} a run").add_argument(
            "run", help="run id or 8+ character prefix"
        )
    stop = run_sub.add_parser("stop", help="stop a run (immediately unless --graceful)")
    stop.add_argument("run")
    stop.add_argument("--graceful", action="store_true", help="let in-flight steps finish (draining)")
    replay = run_sub.add_parser("replay", help="run a finished run again: replay <run> [key=value ...]")
    replay.add_argument("run")
    replay.add_argument("inputs", nargs="*", metavar="key=value")
    listing = run_sub.add_parser("list", help="recent runs")
    listing.add_argument("status", nargs="?", choices=[s.value for s in RunStatus])
    listing.add_argument("--workflow")
    listing.add_argument("--prefix")
    listing.add_argument("--limit", type=int, default=20)

    tasks = sub.add_parser("tasks", help="pending human tasks")
    tasks.add_argument("run", nargs="?")

    approve = sub.add_parser("approve", help="approve a task: approve <run> <task> [--set field=value]")
    approve.add_argument("run")
    approve.add_argument("task")
    approve.add_argument("--set", action="append", metavar="field=value", help="edit a field")
    approve.add_argument("--comment")
    reject = sub.add_parser("reject", help="reject a task: reject <run> <task> [--reason TEXT]")
    reject.add_argument("run")
    reject.add_argument("task")
    reject.add_argument("--reason")
    return parser


ENGINE_COMMANDS: dict[str, Callable[[argparse.Namespace, Engine], int]] = {
    "run": cmd_run,
    "tasks": cmd_tasks,
    "approve": cmd_decide,
    "reject": cmd_decide,
}
PROCESS_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "web": cmd_web,
    "worker": cmd_worker,
    "up": cmd_up,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.command in PROCESS_COMMANDS:
        logs.configure(settings.log_level, args.log_format or settings.log_format)
        return PROCESS_COMMANDS[args.command](args, settings)
    # Operator commands print their answer; only warnings should join it.
    logs.configure("WARNING", args.log_format or "text")
    if args.command == "workflows" and args.workflows_command == "validate":
        return cmd_workflows_validate(args, settings)
    from engine.factory import build_engine

    try:
        engine = build_engine(settings)
        if args.command == "workflows":
            return cmd_workflows_list(args, engine)
        return ENGINE_COMMANDS[args.command](args, engine)
    except SwitchboardError as error:
        if isinstance(error, InvalidInput) and isinstance(error.__cause__, InputError):
            # A run's inputs: one line per field. Other refusals are one sentence naming what.
            print("switchboard: invalid inputs:", file=sys.stderr)
            for field, problem in error.problems.items():
                print(f"  {field}: {problem}", file=sys.stderr)
        else:
            print(f"switchboard: {error}", file=sys.stderr)
        return 2
