"""What the CLI talks to: the engine in this process (local mode) or a server's REST API (remote mode).

Both answer in the same terms: a :class:`~engine.model.Run` for one run (the CLI describes it
with :func:`engine.views.describe`, as every medium does), the REST API's JSON shapes for
listings (so ``--json`` prints the same documents in both modes), events as
:class:`~engine.model.Event`. In remote mode the server decides who may do what: the CLI acts as
the identity of ``SWITCHBOARD_TOKEN``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from engine.api import Engine
from engine.errors import SwitchboardError
from engine.evidence import EvidencePack
from engine.model import Actor, Event, Run, RunStatus

StopMode = Literal["immediate", "graceful"]


class Accepted(Protocol):
    """A run accepted from a webhook and not started yet (engine.intake.AcceptedRun's face)."""

    @property
    def sentence(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class Backend(Protocol):
    def workflows(self) -> list[dict[str, Any]]: ...
    def start(self, workflow_id: str, inputs: dict[str, Any], actor: Actor | None) -> Run: ...
    def pause(self, run_ref: str, actor: Actor | None) -> Run: ...
    def resume(self, run_ref: str, actor: Actor | None) -> Run: ...
    def stop(self, run_ref: str, actor: Actor | None, mode: StopMode) -> Run: ...
    def replay(self, run_ref: str, actor: Actor | None, inputs: dict[str, Any] | None) -> Run: ...
    def recover(
        self,
        run_ref: str,
        actor: Actor | None,
        from_step: str | None,
        inputs: dict[str, Any] | None,
        force: bool,
    ) -> Run: ...
    def evidence(self, run_ref: str, actor: Actor | None) -> EvidencePack: ...
    def get_run(self, run_ref: str) -> Run: ...
    def run_or_accepted(self, run_ref: str) -> Run | Accepted: ...
    def events(self, run_ref: str, after: str | None = None) -> list[Event]: ...
    def list_runs(
        self, status: RunStatus | None, workflow_id: str | None, prefix: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    def pending_tasks(self, run_ref: str | None) -> list[dict[str, Any]]: ...
    def open_questions(self, run_ref: str | None) -> list[dict[str, Any]]: ...
    def complete_task(
        self,
        run_ref: str,
        task_id: str,
        actor: Actor | None,
        approved: bool,
        edits: dict[str, Any],
        comment: str | None,
    ) -> Run: ...
    def request_changes(self, run_ref: str, task_id: str, actor: Actor | None, comment: str) -> Run: ...
    def answer(self, run_ref: str, step_id: str, actor: Actor | None, answer: str) -> Run: ...


def _needs(actor: Actor | None) -> Actor:
    """Local commands always act as someone (the CLI passes ``--as`` or $USER)."""
    assert actor is not None, "local commands act as the CLI user"
    return actor


class LocalBackend:
    """The engine, on the Redis this machine's settings (or the running ``up``) name."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def workflows(self) -> list[dict[str, Any]]:
        from webhooks.answers import workflow_summary

        return [workflow_summary(w) for w in self.engine.workflows()]

    def start(self, workflow_id: str, inputs: dict[str, Any], actor: Actor | None) -> Run:
        return self.engine.start(workflow_id, inputs, _needs(actor), trigger={"kind": "cli"})

    def pause(self, run_ref: str, actor: Actor | None) -> Run:
        return self.engine.pause(run_ref, _needs(actor))

    def resume(self, run_ref: str, actor: Actor | None) -> Run:
        return self.engine.resume(run_ref, _needs(actor))

    def stop(self, run_ref: str, actor: Actor | None, mode: StopMode) -> Run:
        return self.engine.stop(run_ref, _needs(actor), mode=mode)

    def replay(self, run_ref: str, actor: Actor | None, inputs: dict[str, Any] | None) -> Run:
        return self.engine.replay(run_ref, _needs(actor), inputs)

    def recover(
        self,
        run_ref: str,
        actor: Actor | None,
        from_step: str | None,
        inputs: dict[str, Any] | None,
        force: bool,
    ) -> Run:
        return self.engine.recover(run_ref, _needs(actor), from_step, inputs, force)

    def evidence(self, run_ref: str, actor: Actor | None) -> EvidencePack:
        # Locally the pack has what the engine knows; through a server it also has the Slack refs.
        return self.engine.evidence(run_ref, _needs(actor))

    def get_run(self, run_ref: str) -> Run:
        return self.engine.get_run(run_ref)

    def run_or_accepted(self, run_ref: str) -> Run | Accepted:
        return self.engine.run_or_accepted(run_ref)

    def events(self, run_ref: str, after: str | None = None) -> list[Event]:
        return self.engine.events(run_ref, after)

    def list_runs(
        self, status: RunStatus | None, workflow_id: str | None, prefix: str | None, limit: int
    ) -> list[dict[str, Any]]:
        from webhooks.answers import run_summary

        page = self.engine.list_runs(status=status, workflow_id=workflow_id, prefix=prefix, limit=limit)
        return [run_summary(run) for run in page.runs]

    def pending_tasks(self, run_ref: str | None) -> list[dict[str, Any]]:
        from webhooks.answers import task_json

        return [task_json(pending) for pending in self.engine.pending_tasks(run_ref)]

    def open_questions(self, run_ref: str | None) -> list[dict[str, Any]]:
        from webhooks.answers import question_json

        return [question_json(found) for found in self.engine.open_questions(run_ref)]

    def complete_task(
        self,
        run_ref: str,
        task_id: str,
        actor: Actor | None,
        approved: bool,
        edits: dict[str, Any],
        comment: str | None,
    ) -> Run:
        return self.engine.complete_task(run_ref, task_id, _needs(actor), approved, edits, comment)

    def request_changes(self, run_ref: str, task_id: str, actor: Actor | None, comment: str) -> Run:
        return self.engine.request_changes(run_ref, task_id, _needs(actor), comment)

    def answer(self, run_ref: str, step_id: str, actor: Actor | None, answer: str) -> Run:
        return self.engine.answer(run_ref, step_id, _needs(actor), answer)


class RemoteError(SwitchboardError):
    """The server refused or could not be reached; the message is its sentence (or ours)."""

    def __init__(self, message: str, status: int | None = None, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.errors = errors or []


@dataclass(frozen=True)
class RemoteAccepted:
    """A 202 answer to GET /v1/runs/{id}: a webhook's run, accepted and not started yet."""

    data: dict[str, Any]

    @property
    def sentence(self) -> str:
        run_id, workflow = str(self.data.get("run_id", "")), self.data.get("workflow_id")
        accepted = datetime.fromisoformat(str(self.data.get("accepted_at")))
        what = f"Run {run_id[:8]} of {workflow} was accepted at {accepted:%Y-%m-%d %H:%M:%S} UTC"
        if error := self.data.get("error"):
            return f"{what} but could not start: {error}"
        return f"{what} and has not started yet."

    def as_dict(self) -> dict[str, Any]:
        return self.data


def run_of(document: dict[str, Any]) -> Run:
    """A run from the REST API's JSON (``run_json``: the run's own fields and ``short_id``)."""
    return Run.model_validate({k: v for k, v in document.items() if k != "short_id"})


class RemoteBackend:
    """The REST API of a Switchboard server at ``url``, as the identity of ``token``."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> tuple[int, Any]:
        """One request; a problem document (4xx/5xx) raises :class:`RemoteError` with its detail."""
        status, _headers, raw = self.send(method, path, body, "application/json", **query)
        return status, json.loads(raw)

    def send(
        self, method: str, path: str, body: Any = None, accept: str = "application/json", **query: Any
    ) -> tuple[int, dict[str, str], bytes]:
        """One request: status, headers and body as bytes; a problem document raises :class:`RemoteError`."""
        params = {k: v for k, v in query.items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as answer:
            try:
                problem = json.load(answer)
            except ValueError:
                problem = {}
            detail = problem.get("detail") or f"{answer.code} {answer.reason}"
            raise RemoteError(detail, answer.code, problem.get("errors")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            message = f"Cannot reach Switchboard at {self.url} (SWITCHBOARD_URL): {reason}."
            raise RemoteError(message) from None

    @staticmethod
    def _quoted(part: str) -> str:
        return urllib.parse.quote(part, safe="")

    def _run(self, method: str, path: str, body: Any = None) -> Run:
        return run_of(self.call(method, path, body)[1])

    def workflows(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/workflows")[1]["workflows"])

    def start(self, workflow_id: str, inputs: dict[str, Any], actor: Actor | None) -> Run:
        return self._run("POST", f"/v1/workflows/{self._quoted(workflow_id)}/runs", {"inputs": inputs})

    def _command(self, run_ref: str, command: str, params: dict[str, Any] | None = None) -> Run:
        # Commands are addressed to the run's workflow: look it up first.
        run = self.get_run(run_ref)
        body = {"command": command, "run_id": run.run_id, "params": params or {}}
        return self._run("POST", f"/v1/workflows/{self._quoted(run.workflow_id)}/command", body)

    def pause(self, run_ref: str, actor: Actor | None) -> Run:
        return self._command(run_ref, "pause")

    def resume(self, run_ref: str, actor: Actor | None) -> Run:
        return self._command(run_ref, "resume")

    def stop(self, run_ref: str, actor: Actor | None, mode: StopMode) -> Run:
        return self._command(run_ref, "stop", {"mode": mode})

    def replay(self, run_ref: str, actor: Actor | None, inputs: dict[str, Any] | None) -> Run:
        return self._run("POST", f"/v1/runs/{self._quoted(run_ref)}/replay", {"inputs": inputs})

    def recover(
        self,
        run_ref: str,
        actor: Actor | None,
        from_step: str | None,
        inputs: dict[str, Any] | None,
        force: bool,
    ) -> Run:
        body = {"from_step": from_step, "inputs": inputs, "force": force}
        return self._run("POST", f"/v1/runs/{self._quoted(run_ref)}/recover", body)

    def evidence(self, run_ref: str, actor: Actor | None) -> EvidencePack:
        path = f"/v1/runs/{self._quoted(run_ref)}/evidence"
        _status, headers, content = self.send("GET", path, accept="application/zip")
        disposition = headers.get("Content-Disposition", "")
        filename = disposition.partition('filename="')[2].rstrip('"') or f"evidence-{run_ref}.zip"
        return EvidencePack(filename, content, headers.get("X-Evidence-Digest", ""), files={})

    def get_run(self, run_ref: str) -> Run:
        found = self.run_or_accepted(run_ref)
        if isinstance(found, Run):
            return found
        raise RemoteError(found.sentence, 202)

    def run_or_accepted(self, run_ref: str) -> Run | Accepted:
        status, document = self.call("GET", f"/v1/runs/{self._quoted(run_ref)}")
        return RemoteAccepted(document) if status == 202 else run_of(document)

    def events(self, run_ref: str, after: str | None = None) -> list[Event]:
        document = self.call("GET", f"/v1/runs/{self._quoted(run_ref)}/events", after=after)[1]
        return [Event.model_validate(event) for event in document["events"]]

    def list_runs(
        self, status: RunStatus | None, workflow_id: str | None, prefix: str | None, limit: int
    ) -> list[dict[str, Any]]:
        document = self.call(
            "GET",
            "/v1/runs",
            status=status.value if status else None,
            workflow=workflow_id,
            prefix=prefix,
            limit=limit,
        )[1]
        return list(document["runs"])

    def pending_tasks(self, run_ref: str | None) -> list[dict[str, Any]]:
        path = f"/v1/runs/{self._quoted(run_ref)}/tasks/pending" if run_ref else "/v1/tasks/pending"
        return list(self.call("GET", path)[1]["tasks"])

    def open_questions(self, run_ref: str | None) -> list[dict[str, Any]]:
        path = f"/v1/runs/{self._quoted(run_ref)}/questions" if run_ref else "/v1/questions"
        return list(self.call("GET", path)[1]["questions"])

    def complete_task(
        self,
        run_ref: str,
        task_id: str,
        actor: Actor | None,
        approved: bool,
        edits: dict[str, Any],
        comment: str | None,
    ) -> Run:
        body = {"approved": approved, "result": edits, "comment": comment}
        path = f"/v1/runs/{self._quoted(run_ref)}/tasks/{self._quoted(task_id)}/complete"
        return self._run("POST", path, body)

    def request_changes(self, run_ref: str, task_id: str, actor: Actor | None, comment: str) -> Run:
        body = {"decision": "request_changes", "comment": comment}
        path = f"/v1/runs/{self._quoted(run_ref)}/tasks/{self._quoted(task_id)}/complete"
        return self._run("POST", path, body)

    def answer(self, run_ref: str, step_id: str, actor: Actor | None, answer: str) -> Run:
        path = f"/v1/runs/{self._quoted(run_ref)}/tasks/{self._quoted(step_id)}/answer"
        return self._run("POST", path, {"answer": answer})
