"""The ``switchboard`` command: processes (web, worker, up) and operator commands.

Operator commands mirror the Slack ``/run`` commands and call the same engine API, on this
machine's Redis (local mode) or, with ``SWITCHBOARD_URL`` and ``SWITCHBOARD_TOKEN`` set, through
a server's REST API as the token's identity (remote mode)::

    switchboard run start deploy-approval service=api --follow
    switchboard run stop 1a2b3c4d --graceful
    switchboard approve 1a2b3c4d approve --as bob

Exit codes: 0 done (a run completed), 1 a run failed or workflow files have errors, 2 a bad
command or one the system refused, 3 a run was stopped, 4 a run's approval was rejected,
5 the system could not be reached, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno
import functools
import getpass
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from click.shell_completion import CompletionItem
from pydantic import ValidationError

from engine.catalog import load_folder
from engine.errors import InvalidInput, SwitchboardError
from engine.fields import from_text
from engine.model import Actor, ActorKind, Event, Run, RunStatus, StepStatus
from engine.settings import Settings, get_settings
from engine.views import RunOutcome, RunView, describe, utc_text
from engine.workflow import InputError, StepType
from switchboard import logs
from switchboard.backends import Accepted, Backend, LocalBackend, RemoteBackend, RemoteError
from switchboard.instance import NoInstance

log = logging.getLogger("switchboard")

# Exit codes (see the module docstring and the README).
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_STOPPED, EXIT_REJECTED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away
POLL_SECONDS = 0.5

F = TypeVar("F", bound=Callable[..., Any])


class Failure(Exception):
    """An ordinary failure: one sentence on stderr (``switchboard: …``), no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self) -> None:
        click.echo(f"switchboard: {self}", err=True)


# --- options that may stand anywhere ---------------------------------------------------------


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value not in (None, False):  # the group's value stands unless the command gives one
            ctx.meta[f"switchboard.{name}"] = value

    return callback


def as_option(f: F) -> F:
    """``--as NAME``: the person a local command acts as; accepted before or after the command."""
    return click.option(
        "--as",
        "as_user",
        metavar="NAME",
        expose_value=False,
        callback=_remember("as"),
        help="Act as this person (default: $USER). Local mode only.",
    )(f)


def json_option(f: F) -> F:
    """``--json``: print the answer as JSON (the REST API's shapes) instead of text."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=_remember("json"),
        help="Print JSON (the REST API's documents) instead of text.",
    )(f)


def wants_json() -> bool:
    return bool(click.get_current_context().meta.get("switchboard.json"))


def as_user() -> str | None:
    value = click.get_current_context().meta.get("switchboard.as")
    return str(value) if value else None


def emit(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def hint(*commands: str) -> None:
    """The exact commands that come next, with the real run id (text output only)."""
    for command in commands:
        click.echo(f"next: {command}")


# --- settings, backends, errors --------------------------------------------------------------


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a settings error is about (fields without an alias: upper-cased)."""
    if not loc:
        return "a setting"
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    return (field.alias if field is not None and field.alias else name).upper()


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise Failure(f"Invalid setting {problems}.") from None


def remote() -> tuple[str, str] | None:
    """``(url, token)`` when the CLI is a client of a server's REST API (remote mode)."""
    url = os.environ.get("SWITCHBOARD_URL", "").strip()
    if not url:
        return None
    token = os.environ.get("SWITCHBOARD_TOKEN", "").strip()
    if not token:
        raise Failure(
            f"SWITCHBOARD_URL is set ({url}) but SWITCHBOARD_TOKEN is not:"
            " set it to an API token of that server."
        )
    return url, token


def backend() -> Backend:
    """What operator commands talk to, made once per command."""
    ctx = click.get_current_context()
    found = ctx.meta.get("switchboard.backend")
    if found is not None:
        return found
    made: Backend
    if (server := remote()) is not None:
        if as_user():
            raise Failure(
                "--as only works in local mode: over SWITCHBOARD_URL the CLI acts as the identity of"
                " SWITCHBOARD_TOKEN, and the server decides what it may do."
            )
        made = RemoteBackend(*server)
    else:
        from engine.factory import build_engine
        from switchboard.instance import local_settings

        settings = local_settings(load_settings())
        ctx.meta["switchboard.settings"] = settings
        made = LocalBackend(build_engine(settings))
    ctx.meta["switchboard.backend"] = made
    return made


def actor() -> Actor | None:
    """Who a local command acts as (None in remote mode: the token says)."""
    if remote() is not None:
        return None
    name = as_user() or os.environ.get("USER") or getpass.getuser()
    return Actor(kind=ActorKind.CLI, id=name, name=name)


def redis_described() -> str:
    from engine.connection import RedisTarget

    settings = click.get_current_context().meta.get("switchboard.settings") or load_settings()
    if not settings.redis_url and not settings.redis_sentinels:
        return f"the embedded Redis in {settings.data_dir.resolve()}"
    return RedisTarget.of(settings).describe()


@functools.singledispatch
def failure_of(exc: BaseException) -> Failure:
    raise exc


@failure_of.register
def _(exc: InvalidInput) -> Failure:
    if isinstance(exc.__cause__, InputError):
        lines = "\n".join(f"  {field}: {problem}" for field, problem in exc.problems.items())
        return Failure(f"invalid inputs:\n{lines}")
    return Failure(str(exc))


@failure_of.register
def _(exc: RemoteError) -> Failure:
    if exc.status is None:
        return Failure(str(exc), EXIT_UNREACHABLE)
    fields = "".join(f"\n  {e.get('field')}: {e.get('message')}" for e in exc.errors)
    return Failure(f"{exc}{fields}")


@failure_of.register
def _(exc: SwitchboardError) -> Failure:
    return Failure(str(exc))


@failure_of.register
def _(exc: NoInstance) -> Failure:
    return Failure(str(exc), EXIT_UNREACHABLE)


@failure_of.register(redis.ConnectionError)
@failure_of.register(redis.TimeoutError)
def _(exc: redis.RedisError) -> Failure:
    return Failure(f"Cannot reach Redis at {redis_described()}: {exc}", EXIT_UNREACHABLE)


class Group(click.Group):
    """Turns the failures an operator can cause or meet into sentences (see :class:`Failure`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SwitchboardError, NoInstance, redis.ConnectionError, redis.TimeoutError) as exc:
            raise failure_of(exc) from None


# --- the command -----------------------------------------------------------------------------


def _version() -> str:
    try:
        return version("switchboard")
    except PackageNotFoundError:
        return "unknown"


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Remote mode: with SWITCHBOARD_URL and SWITCHBOARD_TOKEN set, operator commands go through"
        " that server's REST API as the token's identity. Shell completion (bash, zsh, fish):"
        ' eval "$(_SWITCHBOARD_COMPLETE=bash_source switchboard)".'
    ),
)
@click.version_option(_version(), "--version", "-V", prog_name="switchboard")
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), help="Log lines as JSON or text (default: auto)."
)
@as_option
@json_option
@click.pass_context
def cli(ctx: click.Context, log_format: str | None) -> None:
    """Chat-ops for workflow runs: run the server and workers, start and steer runs, decide tasks."""
    ctx.meta["switchboard.log_format"] = log_format


# --- processes -------------------------------------------------------------------------------


def _log_format(settings: Settings) -> str:
    chosen = click.get_current_context().meta.get("switchboard.log_format")
    explicit = settings.log_format if "log_format" in settings.model_fields_set else None
    return logs.choose_format(chosen or explicit)


def _port_free(host: str, port: int) -> None:
    """Refuse, with a sentence, a port another process listens on (before anything is started)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Failure(
                    f"Port {port} on {host} is in use (another switchboard?). Stop it, or pick"
                    " another port with --port.",
                    EXIT_FAILED,
                ) from None
            raise Failure(f"Cannot listen on {host}:{port}: {exc.strerror}.", EXIT_FAILED) from None


def _wait_for_redis(settings: Settings, what: str) -> None:
    """Long-running processes wait for Redis at startup (with backoff, a line per try) rather than exit."""
    from engine.connection import connect
    from engine.outage import Outage

    Outage(what).call(lambda: connect(settings).ping())


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, envvar="PORT", show_default=True, help="Port (or $PORT).")
def web(host: str, port: int) -> None:
    """Run the HTTP server: webhooks, REST API, console, Slack events."""
    from switchboard.app import serve

    settings = load_settings()
    logs.configure(settings.log_level, _log_format(settings))
    _port_free(host, port)
    _wait_for_redis(settings, "web")
    serve(settings, host, port)


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--name", help="Worker name (default: generated).")
def worker(burst: bool, name: str | None) -> None:
    """Run an RQ worker that executes steps."""
    from worker.process import run_worker

    settings = load_settings()
    logs.configure(settings.log_level, _log_format(settings))
    _wait_for_redis(settings, "worker")
    run_worker(settings, burst=burst, name=name)


UP_BANNER = """
Switchboard is up (Redis {redis}, {workers} workers). Ctrl-C stops it.
  console  {url}/
  API      {url}/v1  (reference {url}/v1/docs, OpenAPI {url}/v1/openapi.json)
Sign in to the console as {user} (one-time link, valid for a few minutes):
  {link}
{api}
In another terminal, from any folder:
  switchboard workflows list
  switchboard run start deploy-approval service=api --as alice --follow
  switchboard tasks
  switchboard approve <run-id> approve --as bob
"""

API_WITHOUT_TOKENS = """The API needs a token and none is configured: stop, set for example
  export SWITCHBOARD_API_TOKENS="{user}:admin:$(openssl rand -hex 16)"
and start again; a client (the CLI in remote mode, curl) then sends it:
  SWITCHBOARD_URL={url} SWITCHBOARD_TOKEN=<the token> switchboard run list"""

API_WITH_TOKENS = """The API takes the {count} token(s) of SWITCHBOARD_API_TOKENS; with one, from any machine:
  SWITCHBOARD_URL={url} SWITCHBOARD_TOKEN=<token> switchboard run list"""


def up_banner(settings: Settings, address: str, workers: int) -> str:
    """What `up` prints once ready: where things are, a sign-in link for this user, the API's tokens."""
    from engine.connection import RedisTarget
    from engine.factory import build_engine
    from webhooks.auth import Role, Tokens
    from webhooks.console import local_operator, mint_sign_in_link
    from webhooks.settings import get_web_settings

    user = as_user() or os.environ.get("USER") or getpass.getuser()
    roles = frozenset({Role.OPERATOR, Role.APPROVER})
    link = mint_sign_in_link(build_engine(settings), local_operator(user), roles, address)
    tokens = len(Tokens.parse(get_web_settings().api_tokens.get_secret_value()))
    api = (API_WITH_TOKENS if tokens else API_WITHOUT_TOKENS).format(url=address, user=user, count=tokens)
    redis_text = RedisTarget.of(settings).describe()
    return UP_BANNER.format(url=address, redis=redis_text, workers=workers, user=user, link=link, api=api)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port of the web server.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Worker processes.")
@as_option
def up(host: str, port: int, workers: int) -> None:
    """Web server and workers on this machine, ready to use.

    It runs on the embedded Redis unless REDIS_URL is set, and prints where the console and
    the API are, with a one-time console sign-in link for you (--as NAME, default $USER).

    Nothing it starts outlives it, even when it is killed: its workers get SIGTERM from the
    kernel when it dies, and the embedded Redis stops once its last user is gone. While it
    runs, CLI commands from any folder find it.
    """
    from engine.connection import RedisTarget, resolve
    from engine.lifetime import ends_with_this_process
    from switchboard import instance
    from switchboard.app import serve

    settings = load_settings()
    logs.configure(settings.log_level, _log_format(settings))
    _port_free(host, port)
    settings = resolve(settings)  # the embedded server started: its socket is the URL to share
    _wait_for_redis(settings, "up")
    env = {**os.environ, **({"REDIS_URL": settings.redis_url} if settings.redis_url else {})}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "switchboard", "worker", "--name", f"up-{os.getpid()}-{i}"],
            env=env,
            preexec_fn=ends_with_this_process(signal.SIGTERM),
        )
        for i in range(workers)
    ]
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    redis_text = RedisTarget.of(settings).describe()
    recorded = instance.record(
        instance.Instance(
            pid=os.getpid(),
            url=address,
            redis_url=settings.redis_url or "",
            key_prefix=settings.key_prefix,
            queue=settings.queue,
            workflows=str(settings.workflows.resolve()),
            data_dir=str(settings.data_dir.resolve()),
        )
    )
    log.info("switchboard up", extra={"url": address, "redis": redis_text, "workers": workers})

    def say_where() -> None:  # once the console answers: the sign-in link works when printed
        click.echo(up_banner(settings, address, workers))
        click.echo(f"(recorded in {recorded} for CLI commands run elsewhere)\n")

    try:
        serve(settings, host, port, listening=say_where)
    finally:
        instance.forget(os.getpid())
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


# --- workflows -------------------------------------------------------------------------------


@cli.group()
def workflows() -> None:
    """List the workflows, or check workflow files."""


@workflows.command("validate")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@json_option
def workflows_validate(path: Path | None) -> int:
    """Check workflow files; errors name the file and the field.

    PATH is a folder (default: $SWITCHBOARD_WORKFLOWS or ./workflows).
    """
    folder = path or load_settings().workflows
    catalog = load_folder(folder)
    if wants_json():
        sources = [{"workflow_id": k, "file": str(v)} for k, v in sorted(catalog.sources.items())]
        emit({"folder": str(folder), "ok": sources, "errors": [str(e) for e in catalog.errors]})
    else:
        for workflow_id, source in sorted(catalog.sources.items()):
            click.echo(f"ok     {source}  ({workflow_id})")
        for error in catalog.errors:
            click.echo(f"error  {error}")
        if not catalog.workflows and not catalog.errors:
            click.echo(f"no workflow files in {folder}")
    return EXIT_FAILED if catalog.errors or not catalog.workflows else EXIT_OK


@workflows.command("list")
@json_option
def workflows_list() -> None:
    """The workflows and their inputs (? marks an optional one)."""
    found = backend().workflows()
    if wants_json():
        emit({"workflows": found})
        return
    for workflow in found:
        inputs = ", ".join(
            f"{name}{'' if spec.get('required') else '?'}:{spec.get('type')}"
            for name, spec in workflow["inputs"].items()
        )
        click.echo(f"{workflow['id']:24} {workflow['name']}  [{inputs}]")
    if found:
        first = found[0]
        needed = " ".join(f"{k}=..." for k, v in first["inputs"].items() if v.get("required"))
        hint(f"switchboard run start {first['id']} {needed}".rstrip())


# --- runs: text ------------------------------------------------------------------------------


def format_run(view: RunView) -> str:
    """A run's view (engine.views) as plain text: the header, its failure, a line per step."""
    lines = [
        f"run {view.run_id}  {view.workflow_id} v{view.workflow_version}  {view.status_text.upper()}",
        f"started by {view.started_by.display} at {utc_text(view.created_at)}",
    ]
    if (rejected := view.rejected_task) is not None and view.finished:
        lines.append(f"outcome: rejected: {rejected.task_id} ({rejected.title}) {rejected.decision}")
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


def status_with_outcome(status: str, outcome: str | None) -> str:
    """A listed run's status with its outcome, as RunView.status_text says it (``completed (rejected)``)."""
    return f"{status} ({outcome})" if outcome and outcome != status else status


def next_commands(view: RunView) -> list[str]:
    """What a person would type next about this run, with its real id."""
    short = view.short_id
    open_tasks = view.pending_tasks
    if open_tasks:
        task = open_tasks[0].task_id
        return [f"switchboard approve {short} {task}", f'switchboard reject {short} {task} --reason "..."']
    asking = [s for s in view.steps if s.type is StepType.ASK and s.status is StepStatus.WAITING]
    if asking:
        return [f'switchboard answer {short} {asking[0].step_id} "..."', f"switchboard run follow {short}"]
    if view.finished:
        return [f"switchboard run events {short}", f"switchboard run replay {short}"]
    return [f"switchboard run follow {short}", f"switchboard run status {short}"]


def show_run(run: Run) -> None:
    if wants_json():
        from webhooks.answers import run_json

        emit(run_json(run))
        return
    view = describe(run)
    click.echo(format_run(view))
    hint(*next_commands(view))


EXIT_CODES = {
    RunOutcome.SUCCEEDED: EXIT_OK,
    RunOutcome.FAILED: EXIT_FAILED,
    RunOutcome.STOPPED: EXIT_STOPPED,
    RunOutcome.REJECTED: EXIT_REJECTED,
}


def exit_code_of(view: RunView) -> int:
    """A finished run's exit code, from its outcome: 0 succeeded, 1 failed, 3 stopped, 4 rejected."""
    return EXIT_CODES[view.outcome] if view.outcome is not None else EXIT_OK


def event_line(event: Event) -> str:
    data = json.dumps(event.data, default=str) if event.data else ""
    step = f" [{event.step_id}]" if event.step_id else ""
    return f"{event.at:%H:%M:%S}  {event.type}{step}  by {event.actor.display}  {data}".rstrip()


def progress_line(view: RunView, now: datetime) -> str:
    """``2/4 steps done · now: approve (awaiting approval) · 14s`` for the tail of a run."""
    elapsed = view.elapsed(now)
    current = ", ".join(f"{step.step_id} ({step.status_label})" for step in view.current)
    parts = [f"{view.done}/{view.total} steps done", f"now: {current}" if current else view.status.value]
    if elapsed is not None:
        parts.append(f"{elapsed:.0f}s")
    return " · ".join(parts)


class Progress:
    """The progress line on stderr: redrawn in place on a terminal, a new line per change elsewhere."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.last_state = ""

    def clear(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\r\x1b[K")

    def show(self, line: str, state: str) -> None:
        """Show ``line``; off a terminal only when ``state`` (the line but its clock) changed."""
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{line}")
        elif state != self.last_state:
            sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
        self.last, self.last_state = line, state

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def follow(run_ref: str) -> RunView:
    """Print the run's events as they come, with a progress line, until it finishes; its last view."""
    source = backend()
    run_id = source.get_run(run_ref).run_id
    progress = Progress()
    after: str | None = None
    while True:
        view = describe(source.get_run(run_id))  # read before the events: none is missed at the end
        events = source.events(run_id, after)
        if events:
            progress.clear()
            for event in events:
                click.echo(event.model_dump_json() if wants_json() else event_line(event))
            after = events[-1].id or after
        progress.show(progress_line(view, datetime.now(UTC)), progress_line(view, view.created_at))
        if view.finished:
            progress.done()
            return view
        time.sleep(POLL_SECONDS)


def wait(run_ref: str) -> RunView:
    """Block until the run finishes; its last view."""
    source = backend()
    while not (view := describe(source.get_run(run_ref))).finished:
        time.sleep(POLL_SECONDS)
    return view


def finish(run: Run, *, follow_it: bool, wait_it: bool) -> int:
    """After start/replay/resume: tail or wait as asked, else show the run and what comes next."""
    if follow_it:
        if not wants_json():
            click.echo(f"run {run.run_id}  {run.workflow_id}  (Ctrl-C stops following, not the run)")
        view = follow(run.run_id)
    elif wait_it:
        view = wait(run.run_id)
    else:
        show_run(run)
        return EXIT_OK
    final = backend().get_run(view.run_id)
    if wants_json() and follow_it:
        return exit_code_of(view)
    show_run(final)
    return exit_code_of(view)


def assignments(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=two words"]`` -> ``{"a": "1", "b": "two words"}``; anything else is an error."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Failure(f"Expected key=value, got {pair!r}.")
        values[key.strip()] = value
    return values


def wait_options(f: F) -> F:
    waiting = "Block until the run finishes; the exit code says how it ended."
    f = click.option("--wait", "wait_it", is_flag=True, help=waiting)(f)
    following = "Tail its events with a progress line until it finishes."
    return click.option("--follow", "-f", "follow_it", is_flag=True, help=following)(f)


# --- runs: commands --------------------------------------------------------------------------


@cli.group()
def run() -> None:
    """Start, pause, resume, stop, replay, recover, follow or inspect runs.

    RUN is a run id or its first 8 or more characters.
    """


def complete_workflow(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of a workflow id, from the workflow files (no Redis needed)."""
    from switchboard.instance import local_settings

    try:
        catalog = load_folder(local_settings(load_settings()).workflows)
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [
        CompletionItem(w, help=catalog.workflows[w].name)
        for w in sorted(catalog.workflows)
        if w.startswith(incomplete)
    ]


@run.command("start")
@click.argument("workflow", shell_complete=complete_workflow)
@click.argument("inputs", nargs=-1, metavar="[KEY=VALUE]...")
@wait_options
@as_option
@json_option
def run_start(workflow: str, inputs: tuple[str, ...], follow_it: bool, wait_it: bool) -> int:
    """Start a run of WORKFLOW with its inputs as KEY=VALUE pairs."""
    started = backend().start(workflow, assignments(inputs), actor())
    return finish(started, follow_it=follow_it, wait_it=wait_it)


@run.command("pause")
@click.argument("run_ref", metavar="RUN")
@as_option
@json_option
def run_pause(run_ref: str) -> None:
    """Pause a run: nothing new is scheduled until it is resumed."""
    show_run(backend().pause(run_ref, actor()))


@run.command("resume")
@click.argument("run_ref", metavar="RUN")
@wait_options
@as_option
@json_option
def run_resume(run_ref: str, follow_it: bool, wait_it: bool) -> int:
    """Resume a paused run."""
    return finish(backend().resume(run_ref, actor()), follow_it=follow_it, wait_it=wait_it)


@run.command("stop")
@click.argument("run_ref", metavar="RUN")
@click.option("--graceful", is_flag=True, help="Let steps already running finish (the run drains).")
@as_option
@json_option
def run_stop(run_ref: str, graceful: bool) -> None:
    """Stop a run: at once (running steps are cancelled), or --graceful."""
    show_run(backend().stop(run_ref, actor(), "graceful" if graceful else "immediate"))


@run.command("replay")
@click.argument("run_ref", metavar="RUN")
@click.argument("inputs", nargs=-1, metavar="[KEY=VALUE]...")
@wait_options
@as_option
@json_option
def run_replay(run_ref: str, inputs: tuple[str, ...], follow_it: bool, wait_it: bool) -> int:
    """Run a finished run again as a new run, inputs optionally overridden."""
    replayed = backend().replay(run_ref, actor(), assignments(inputs) or None)
    return finish(replayed, follow_it=follow_it, wait_it=wait_it)


@run.command("recover")
@click.argument("run_ref", metavar="RUN")
@click.argument("inputs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--from", "from_step", metavar="STEP", help="Run again from STEP and what follows it.")
@click.option("--force", is_flag=True, help="Run again steps that already ran though not idempotent.")
@wait_options
@as_option
@json_option
def run_recover(
    run_ref: str, inputs: tuple[str, ...], from_step: str | None, force: bool, follow_it: bool, wait_it: bool
) -> int:
    """Continue a failed or stopped run, the same run, from its failed step.

    Succeeded steps keep their results; KEY=VALUE pairs correct its inputs.
    """
    recovered = backend().recover(run_ref, actor(), from_step, assignments(inputs) or None, force)
    return finish(recovered, follow_it=follow_it, wait_it=wait_it)


@run.command("evidence")
@click.argument("run_ref", metavar="RUN")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Where to write it (default: here).")
@as_option
@json_option
def run_evidence(run_ref: str, output: Path | None) -> None:
    """Download a run's evidence pack: one zip; its digest is recorded in the run's events."""
    pack = backend().evidence(run_ref, actor())
    path = output or Path(pack.filename)
    path.write_bytes(pack.content)
    if wants_json():
        emit({"path": str(path), "digest": pack.digest, "bytes": len(pack.content)})
    else:
        click.echo(f"Wrote {path} ({len(pack.content):,} bytes, {pack.digest}).")


@run.command("status")
@click.argument("run_ref", metavar="RUN")
@json_option
def run_status(run_ref: str) -> None:
    """Show a run: its status, failure and steps."""
    found: Run | Accepted = backend().run_or_accepted(run_ref)
    if isinstance(found, Run):
        show_run(found)
    elif wants_json():
        emit(found.as_dict())
    else:
        click.echo(found.sentence)


@run.command("follow")
@click.argument("run_ref", metavar="RUN")
@json_option
def run_follow(run_ref: str) -> int:
    """Tail a run's events with a progress line until it finishes; exit code from its outcome."""
    view = follow(run_ref)
    if not wants_json():
        click.echo(f"run {view.short_id} {view.status_text}")
    return exit_code_of(view)


@run.command("events")
@click.argument("run_ref", metavar="RUN")
@json_option
def run_events(run_ref: str) -> None:
    """A run's audit trail, oldest first (--json: one JSON object per line)."""
    for event in backend().events(run_ref):
        click.echo(event.model_dump_json() if wants_json() else event_line(event))


@run.command("list")
@click.argument("status", required=False, type=click.Choice([s.value for s in RunStatus]))
@click.option("--workflow", help="Only runs of this workflow.")
@click.option("--prefix", help="Only runs whose id starts with this.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@json_option
def run_list(status: str | None, workflow: str | None, prefix: str | None, limit: int) -> None:
    """Recent runs, newest first, optionally only those with STATUS."""
    runs = backend().list_runs(RunStatus(status) if status else None, workflow, prefix, limit)
    if wants_json():
        emit({"runs": runs})
        return
    for row in runs:
        created = datetime.fromisoformat(row["created_at"])
        who = row["started_by"].get("name") or row["started_by"].get("id")
        when = f"{created:%Y-%m-%d %H:%M:%S}"
        status = status_with_outcome(row["status"], row.get("outcome"))
        click.echo(f"{row['short_id']}  {status:22} {row['workflow_id']:24} {when}  {who}")
    if not runs:
        click.echo("no runs")
    else:
        hint(f"switchboard run status {runs[0]['short_id']}")


# --- tasks -----------------------------------------------------------------------------------


def value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def format_task(task: dict[str, Any]) -> list[str]:
    """A pending task as the Slack card shows it: title, description, fields (editable marked), expiry."""
    lines = [f"{task['short_id']}  {task['workflow_id']:24} {task['task_id']:16} {task['task_type']}"]
    lines.append(f"  {task['title']}")
    if task.get("description"):
        lines.extend(f"  {line}" for line in str(task["description"]).splitlines())
    editable = set(task.get("editable") or [])
    for name, value in (task.get("fields") or {}).items():
        mark = f"  (editable: --set {name}=...)" if name in editable else ""
        lines.append(f"    {name}: {value_text(value)}{mark}")
    details = []
    if task.get("expires_at"):
        details.append(f"expires {utc_text(datetime.fromisoformat(task['expires_at']))}")
    approvers = task.get("approvers") or []
    details.append("approvers: " + (", ".join(approvers) if approvers else "anyone but who started the run"))
    lines.append("  " + " · ".join(details))
    lines.append(f"  next: switchboard approve {task['short_id']} {task['task_id']}")
    return lines


def format_question(question: dict[str, Any]) -> list[str]:
    """An open question as its Slack message shows it: the question, who was asked, its expiry."""
    lines = [f"{question['short_id']}  {question['workflow_id']:24} {question['step_id']:16} question"]
    lines.extend(f"  {line}" for line in str(question["text"]).splitlines() or [""])
    details = [f"asked {question['to']}"]
    if question.get("expires_at"):
        details.append(f"expires {utc_text(datetime.fromisoformat(question['expires_at']))}")
    if answerers := question.get("answerers"):
        details.append("answerers: " + ", ".join(answerers))
    lines.append("  " + " · ".join(details))
    lines.append(f'  next: switchboard answer {question["short_id"]} {question["step_id"]} "..."')
    return lines


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@json_option
def tasks(run_ref: str | None) -> None:
    """Human tasks waiting for a decision and questions waiting for an answer (of one RUN, or all)."""
    found = backend().pending_tasks(run_ref)
    questions = backend().open_questions(run_ref)
    if wants_json():
        emit({"tasks": found, "questions": questions})
        return
    for task in found:
        click.echo("\n".join(format_task(task)))
    for question in questions:
        click.echo("\n".join(format_question(question)))
    if not found and not questions:
        click.echo("no pending tasks or open questions")


def decide(run_ref: str, task_id: str, approved: bool, edits: dict[str, str], comment: str | None) -> None:
    values = typed(run_ref, task_id, edits)
    run = backend().complete_task(run_ref, task_id, actor(), approved, values, comment)
    show_run(run)


def typed(run_ref: str, task_id: str, edits: dict[str, str]) -> dict[str, Any]:
    """``--set`` text as values of each field's kind (``replicas=3`` is the number 3), as the
    console and Slack read their forms; the engine refuses a value of another kind."""
    if not edits:
        return {}
    tasks = backend().pending_tasks(run_ref)
    fields = next((t.get("fields") or {} for t in tasks if t.get("task_id") == task_id), {})
    values: dict[str, Any] = {}
    for name, text in edits.items():
        try:
            values[name] = from_text(fields.get(name), text)
        except ValueError as exc:
            raise Failure(f"--set {name}={text}: {exc}") from None
    return values


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("task_id", metavar="TASK")
@click.option("--set", "edits", multiple=True, metavar="FIELD=VALUE", help="Edit an editable field.")
@click.option("--comment", help="A note kept with the decision.")
@as_option
@json_option
def approve(run_ref: str, task_id: str, edits: tuple[str, ...], comment: str | None) -> None:
    """Approve TASK of RUN, optionally editing its editable fields."""
    decide(run_ref, task_id, True, assignments(edits), comment)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("task_id", metavar="TASK")
@click.option("--reason", help="Why (kept with the decision).")
@as_option
@json_option
def reject(run_ref: str, task_id: str, reason: str | None) -> None:
    """Reject TASK of RUN: steps that need it are skipped."""
    decide(run_ref, task_id, False, {}, reason)


@cli.command("request-changes")
@click.argument("run_ref", metavar="RUN")
@click.argument("task_id", metavar="TASK")
@click.option("--comment", required=True, help="What should change (the workflow's rerun step reads it).")
@as_option
@json_option
def request_changes(run_ref: str, task_id: str, comment: str) -> None:
    """Ask for changes to TASK of RUN instead of approving or rejecting it."""
    show_run(backend().request_changes(run_ref, task_id, actor(), comment))


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("step_id", metavar="STEP")
@click.argument("text", metavar="ANSWER")
@as_option
@json_option
def answer(run_ref: str, step_id: str, text: str) -> None:
    """Answer the question an ask STEP of RUN is waiting on."""
    show_run(backend().answer(run_ref, step_id, actor(), text))


# --- entry point -----------------------------------------------------------------------------


def _pacify_stdout() -> None:
    """The reader of stdout went away (``| head``): drop what is still buffered, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: the command's exit code; ordinary failures as one sentence."""
    logs.configure("WARNING", "text")  # operator commands print their answer; only warnings join it
    try:
        args = list(argv) if argv is not None else None
        code = cli.main(args=args, prog_name="switchboard", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_OK
    except (click.ClickException, Failure) as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _pacify_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _pacify_stdout()
            return EXIT_BROKEN_PIPE
        raise
