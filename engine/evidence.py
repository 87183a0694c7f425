"""A run's evidence pack: one archive that shows what happened in a run and who decided what.

An auditor asks "what ran, on which definition, who approved it, when, from where, and what
came out?" The pack answers from what the engine recorded, in files anyone can read:

- ``run.json``: the run document as it is now;
- ``workflow.json``: the exact definition the run ran, as stored (its SHA-256 starts with the
  run's ``workflow_digest``);
- ``events.json``: every event of the run, oldest first;
- ``decisions.json``: every say on a human task, and every operator command, with who, when and
  from where (the medium is the kind of the actor: ``slack``, ``api``, ``cli``, ``webhook``);
- ``steps.json``: each step's status, arguments, result and last error, with its history;
- whatever the edges attach (:func:`build_pack`'s ``attachments``): the Slack app adds
  ``slack_messages.json``, the references of the messages it posted, which the engine does not know;
- ``manifest.json``: what the pack is, who exported it and when, and the SHA-256 of each file.

The archive is a zip whose entries carry the export's time, so the same content exported at
the same moment gives the same bytes. Its own SHA-256 is the pack's digest, which
:meth:`engine.api.Engine.evidence` records in the run's events (``evidence_exported``).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.model import Actor, ActorKind, Event, EventType, Run
from engine.workflow import Workflow

FORMAT = "switchboard-evidence/1"
MEDIA_TYPE = "application/zip"
# Operator commands, besides the says on tasks (every task_* event but the opening).
OPERATOR_EVENTS = frozenset(
    {
        EventType.RUN_QUEUED,
        EventType.RUN_PAUSED,
        EventType.RUN_RESUMED,
        EventType.RUN_DRAINING,
        EventType.RUN_STOPPED,
        EventType.RUN_REPLAYED,
        EventType.RUN_RECOVERED,
        EventType.EVENT_RECEIVED,
    }
)


@dataclass(frozen=True)
class EvidencePack:
    filename: str
    content: bytes
    digest: str  # "sha256:<hex>" of ``content``
    files: dict[str, str]  # each file's "sha256:<hex>"
    media_type: str = MEDIA_TYPE


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def build_pack(
    run: Run,
    workflow: Workflow,
    events: list[Event],
    exported_by: Actor,
    at: datetime,
    attachments: Mapping[str, Any] | None = None,
) -> EvidencePack:
    """The archive of ``run`` (see the module docstring); ``attachments`` maps file names to JSON values."""
    files: dict[str, bytes] = {
        "run.json": _json(run.model_dump(mode="json")),
        # Byte for byte what the digest was computed over (and the store keeps as the snapshot).
        "workflow.json": workflow.model_dump_json(by_alias=True).encode(),
        "events.json": _json([event.model_dump(mode="json") for event in events]),
        "decisions.json": _json(decisions(events)),
        "steps.json": _json(steps(run, events)),
    }
    for name, value in (attachments or {}).items():
        if name in files or name == "manifest.json" or not name.endswith(".json"):
            raise ValueError(f"An evidence attachment cannot be named {name!r}.")
        files[name] = _json(value)
    digests = {name: sha256(data) for name, data in files.items()}
    manifest = {
        "format": FORMAT,
        "run_id": run.run_id,
        "workflow": {"id": workflow.id, "version": workflow.version, "digest": workflow.digest},
        "exported_at": at.isoformat(),
        "exported_by": exported_by.model_dump(mode="json"),
        "files": [
            {"name": name, "sha256": digests[name].removeprefix("sha256:"), "bytes": len(data)}
            for name, data in files.items()
        ],
    }
    files["manifest.json"] = _json(manifest)
    content = _zip(files, at)
    return EvidencePack(
        filename=f"evidence-{run.workflow_id}-{run.run_id}.zip",
        content=content,
        digest=sha256(content),
        files=digests,
    )


def decisions(events: list[Event]) -> list[dict[str, Any]]:
    """Who decided what, when and from where: says on tasks and operator commands, in order."""
    found = []
    for event in events:
        is_say = event.type.startswith("task_") and event.type is not EventType.TASK_OPENED
        if not (is_say or event.type in OPERATOR_EVENTS):
            continue
        actor, dumped = event.actor, event.model_dump(mode="json")  # times as events.json has them
        found.append(
            {
                "event_id": event.id,
                "type": event.type.value,
                "kind": "task" if is_say else "run",
                "step_id": event.step_id,
                "at": dumped["at"],
                "by": actor.ref,
                "name": actor.display,
                "medium": "automatic" if actor.kind is ActorKind.SYSTEM else actor.kind.value,
                "data": dumped["data"],
            }
        )
    return found


def steps(run: Run, events: list[Event]) -> dict[str, Any]:
    """Each step as the run holds it (arguments, result, last error), with every event about it."""
    history: dict[str, list[dict[str, Any]]] = {step_id: [] for step_id in run.steps}
    for event in events:
        if event.step_id in history:
            dumped = event.model_dump(mode="json")
            said = {"at": dumped["at"], "type": event.type.value, "by": event.actor.ref}
            history[event.step_id].append({**said, **dumped["data"]})
    return {
        step_id: {**step.model_dump(mode="json"), "history": history[step_id]}
        for step_id, step in run.steps.items()
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _zip(files: Mapping[str, bytes], at: datetime) -> bytes:
    stamp = at.astimezone(UTC).timetuple()[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()
