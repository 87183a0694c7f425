"""Where a running ``switchboard up`` keeps its data, so CLI commands find it from any folder.

``up`` records its Redis URL, key prefix, queue, workflows folder and web address in a small
file at a well-known place (``$XDG_RUNTIME_DIR/switchboard/instance.json``, else
``~/.switchboard/instance.json``; ``SWITCHBOARD_INSTANCE_FILE`` overrides) and removes it when
it stops. A CLI command with no Redis configured reads it instead of starting an empty
embedded Redis of its own in whatever folder it was run from.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from engine.settings import Settings


class Instance(BaseModel):
    """What another process needs to reach the running instance."""

    pid: int
    url: str  # the web server: console, REST API
    redis_url: str
    key_prefix: str
    queue: str
    workflows: str  # absolute
    data_dir: str  # absolute


def instance_file() -> Path:
    """The well-known file (see the module docstring)."""
    if override := os.environ.get("SWITCHBOARD_INSTANCE_FILE"):
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "switchboard" if runtime else Path.home() / ".switchboard"
    return base / "instance.json"


def record(instance: Instance) -> Path:
    """Write ``instance`` to the well-known file (atomically: a reader never sees half of it)."""
    path = instance_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(instance.model_dump_json(indent=2))
    partial.replace(path)
    return path


def forget(pid: int) -> None:
    """Remove the file if it still describes process ``pid`` (a later ``up`` may have replaced it)."""
    found = read()
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            instance_file().unlink()


def read() -> Instance | None:
    """The recorded instance, whether or not it still runs (None: no file, or not one of ours)."""
    try:
        return Instance.model_validate_json(instance_file().read_text())
    except (OSError, ValidationError):
        return None


def running() -> Instance | None:
    """The recorded instance if its process is still alive."""
    found = read()
    if found is None:
        return None
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return found


class NoInstance(Exception):
    """No Redis configured, no running ``up`` recorded, no data in this folder: nothing to talk to."""


def local_settings(settings: Settings) -> Settings:
    """The settings a local CLI command uses: the configured Redis, else the running ``up``'s.

    Explicit configuration wins (REDIS_URL, sentinels, SWITCHBOARD_DATA_DIR). Without it,
    the recorded instance's Redis, prefix, queue and workflows; without one, the embedded
    data in this folder if there is some. Otherwise :class:`NoInstance`, naming where it looked,
    rather than a new, empty system that would answer "no runs".
    """
    if settings.redis_url or settings.redis_sentinels or "data_dir" in settings.model_fields_set:
        return settings
    found = running()
    if found is not None:
        update = {
            "redis_url": found.redis_url,
            "key_prefix": found.key_prefix,
            "queue": found.queue,
            "workflows": Path(found.workflows),
        }
        # What the person set explicitly still wins (say, another key prefix on the same Redis).
        kept = {name: value for name, value in update.items() if name not in settings.model_fields_set}
        return settings.model_copy(update=kept)
    if (settings.data_dir / "redis.db").exists():
        return settings  # an embedded system lives in this folder: start it again
    raise NoInstance(
        f"No Switchboard is running here: nothing recorded in {instance_file()} (written by"
        f" `switchboard up`) and no data in {settings.data_dir.resolve()}. Start one with"
        " `switchboard up`, or point at one with REDIS_URL, SWITCHBOARD_DATA_DIR, or"
        " SWITCHBOARD_URL and SWITCHBOARD_TOKEN for a remote server."
    )
