"""Accept now, start right after: the durable queue between a verified delivery and its run.

Starting a run is a Redis transaction of a dozen round trips and a few milliseconds of
CPU. Doing it inside the request would cap a web process at a few hundred deliveries a
second and make senders wait on our database. So a verified, validated delivery is
*accepted* in one atomic step (a Lua script: remember its delivery id, note the promised
run id, append it to the inbox stream) and answered 202 with the run id at once. A
consumer in every web process reads the inbox through a consumer group and starts the
runs with that id. Nothing is lost if a process dies in between: an entry is removed
only after its run exists, and entries left pending by a dead consumer are claimed again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.api import Engine, new_run_id
from engine.errors import SwitchboardError
from engine.model import Actor
from engine.store import Keys

log = logging.getLogger(__name__)

GROUP = "switchboard-web"
SEEN_TTL_SECONDS = 7 * 86400
ACCEPTED_TTL_SECONDS = 86400
CLAIM_IDLE_MS = 30_000
BATCH = 100

# KEYS: delivery key ('' when the delivery has no id), inbox stream, accepted-run key.
# ARGV: run id, entry JSON, seen TTL, accepted TTL. Returns the earlier run id, or nil.
_ACCEPT = """
if KEYS[1] ~= '' then
  local earlier = redis.call('GET', KEYS[1])
  if earlier then return earlier end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
redis.call('XADD', KEYS[2], '*', 'start', ARGV[2])
return false
"""


def inbox_key(keys: Keys) -> str:
    return f"{keys.prefix}web:inbox"


def accepted_key(keys: Keys, run_id: str) -> str:
    return f"{keys.prefix}web:accepted:{run_id}"


def delivery_key(keys: Keys, source: str, delivery_id: str) -> str:
    return f"{keys.prefix}web:delivery:{source}:{delivery_id}"


@dataclass(frozen=True)
class Accepted:
    run_id: str
    duplicate: bool


class Inbox:
    def __init__(self, aredis: aioredis.Redis, keys: Keys, claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self.aredis = aredis
        self.keys = keys
        self.claim_idle_ms = claim_idle_ms  # how long an entry stays with a silent consumer
        self._accept = aredis.register_script(_ACCEPT)

    async def accept(
        self,
        source: str,
        delivery_id: str | None,
        workflow_id: str,
        inputs: dict[str, Any],
        actor: Actor,
        trigger: dict[str, Any],
    ) -> Accepted:
        """Queue a run start; a delivery id seen before gets its original run id instead."""
        run_id = new_run_id()
        entry = {
            "run_id": run_id,
            "workflow_id": workflow_id,
            "inputs": inputs,
            "actor": actor.model_dump(mode="json"),
            "trigger": trigger,
            # The engine's own guard: if an entry is ever started twice, the run is one.
            "idempotency_key": f"{source}:{delivery_id}" if delivery_id else f"inbox:{run_id}",
        }
        seen = delivery_key(self.keys, source, delivery_id) if delivery_id else ""
        keys = [seen, inbox_key(self.keys), accepted_key(self.keys, run_id)]
        args: list[str | int] = [run_id, json.dumps(entry), SEEN_TTL_SECONDS, ACCEPTED_TTL_SECONDS]
        earlier = await self._accept(keys=keys, args=args)
        if earlier:
            return Accepted(earlier.decode() if isinstance(earlier, bytes) else str(earlier), True)
        return Accepted(run_id, False)

    async def pending_start(self, run_id: str) -> dict[str, Any] | None:
        """What an accepted run not started yet will be (or why it could not start)."""
        raw = await self.aredis.get(accepted_key(self.keys, run_id))
        return json.loads(raw) if raw else None

    async def consume(self, engine: Engine, stop: asyncio.Event, block_ms: int = 1000) -> None:
        """Start the runs of accepted deliveries until ``stop`` is set."""
        inbox = inbox_key(self.keys)
        consumer = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        await self.ensure_group()
        while not stop.is_set():
            try:
                claimed: Any = await self.aredis.xautoclaim(
                    inbox, GROUP, consumer, self.claim_idle_ms, count=BATCH
                )
                entries = list(claimed[1])
                if not entries:
                    reply: Any = await self.aredis.xreadgroup(
                        GROUP, consumer, {inbox: ">"}, count=BATCH, block=block_ms
                    )
                    entries = list(reply[0][1]) if reply else []
                if entries:
                    await self._start_all(engine, entries)
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("webhook inbox unavailable", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
            except ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                await asyncio.sleep(0.1)
                await self.ensure_group()  # the stream was deleted under us: start afresh

    async def ensure_group(self) -> None:
        try:
            await self.aredis.xgroup_create(inbox_key(self.keys), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _start_all(self, engine: Engine, entries: list[tuple[Any, Any]]) -> None:
        started = await asyncio.to_thread(_start_entries, engine, entries)
        pipe = self.aredis.pipeline(transaction=False)
        for entry_id, run_id, failure in started:
            if failure is None:
                pipe.delete(accepted_key(self.keys, run_id))
            else:
                pipe.set(accepted_key(self.keys, run_id), json.dumps(failure), ex=ACCEPTED_TTL_SECONDS)
            pipe.xack(inbox_key(self.keys), GROUP, entry_id)
            pipe.xdel(inbox_key(self.keys), entry_id)
        await pipe.execute()


def _start_entries(
    engine: Engine, entries: list[tuple[Any, Any]]
) -> list[tuple[Any, str, dict[str, Any] | None]]:
    """Start each entry's run (in a thread: the engine is synchronous)."""
    done: list[tuple[Any, str, dict[str, Any] | None]] = []
    for entry_id, fields in entries:
        entry = json.loads(fields.get(b"start") or fields.get("start"))
        try:
            engine.start(
                entry["workflow_id"],
                entry["inputs"],
                Actor.model_validate(entry["actor"]),
                entry["trigger"],
                entry["idempotency_key"],
                run_id=entry["run_id"],
            )
            done.append((entry_id, entry["run_id"], None))
        except SwitchboardError as exc:
            # Inputs were validated when the delivery was accepted, so this is rare (the
            # workflow changed meanwhile); the status URL tells why instead of a 404.
            log.error("accepted run could not start", extra={"run_id": entry["run_id"], "error": str(exc)})
            done.append(
                (entry_id, entry["run_id"], {**entry, "status": "failed_to_start", "error": str(exc)})
            )
    return done
