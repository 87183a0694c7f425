"""Accept now, start moments later: the durable queue of run starts.

Starting a run is a Redis transaction of a dozen round trips and a few milliseconds of
CPU. A webhook sender should not wait for that, and a web process should not spend its
CPU on it while other deliveries queue behind. So a start is *accepted* in one atomic
step (a Lua script: remember the delivery id, keep the request readable under its
promised run id, append it to the intake stream) and answered at once with that run
id. Workers read the intake through a consumer group and start the runs with the ids
promised (a :class:`Starter` thread in every worker process); the web process keeps a
standby starter that steps in only when requests wait too long, so a deployment
without workers still starts its runs. In the web process, concurrent deliveries are
accepted together, many per Lua call (:class:`Acceptor`, a group commit on asyncio).

Until its run exists, an accepted request answers for it: every edge asked about the
run id gets an :class:`AcceptedRun` (through :meth:`engine.api.Engine.run_or_accepted`),
saying what will start and since when, or why it could not.

Nothing is lost in between: an entry leaves the stream only after its run exists (or
has been refused for good), entries left pending by a dead starter are claimed again,
and a request started twice makes one run (the engine's idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.background import LoopThread
from engine.errors import SwitchboardError
from engine.model import Actor
from engine.outage import REDIS_DOWN, Outage
from engine.redis_idioms import ensure_group, text
from engine.store import Keys, new_run_id

if TYPE_CHECKING:
    from engine.api import Engine

log = logging.getLogger(__name__)

GROUP = "switchboard-starters"
CLAIM_IDLE_MS = 30_000  # how long an entry stays with a starter that went silent
BATCH = 100
BLOCK_MS = 250  # a starter's wait for new requests; short, so stopping it is quick
DELIVERY_TTL_SECONDS = 7 * 86400  # how long a delivery id is remembered against replays
REQUEST_TTL_SECONDS = 86400  # how long an accepted request stays readable by its run id
CONSUMER_IDLE_MS = 3_600_000  # a starter silent this long, holding nothing, is forgotten
MAX_BATCH = 256  # requests per accepting Lua call of the web process at most
MAX_BATCH_BYTES = 1024 * 1024  # one Lua call blocks Redis while it runs: keep each one small
ACCEPT_TIMEOUT_SECONDS = 5.0  # a batch not accepted by then is answered as Redis being away

# Forget the consumers of a group that hold no entries and have not read for ARGV[2] ms
# (starters of workers long gone: every worker name ever seen would stay otherwise). Atomic,
# so a consumer cannot take an entry between the check and its removal. Returns how many.
DROP_IDLE_CONSUMERS_SCRIPT = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local dropped = 0
for _, fields in ipairs(consumers) do
  local consumer = {}
  for i = 1, #fields, 2 do consumer[fields[i]] = fields[i + 1] end
  if consumer['pending'] == 0 and consumer['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    dropped = dropped + 1
  end
end
return dropped
"""

# Accept a batch of start requests at once; a web process under load sends many per call.
# KEYS[1]: intake stream; then per request i: KEYS[2i] its delivery key ('' for none) and
# KEYS[2i+1] its request key. ARGV[1], ARGV[2]: the two TTLs; then per request i:
# ARGV[2i+1] its run id and ARGV[2i+2] its JSON. Returns per request the earlier run id
# of a delivery seen before, or false.
ACCEPT_SCRIPT = """
local answers = {}
for i = 1, (#KEYS - 1) / 2 do
  local seen, key = KEYS[2 * i], KEYS[2 * i + 1]
  local run_id, request = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local earlier = false
  if seen ~= '' then
    earlier = redis.call('GET', seen)
    if not earlier then redis.call('SET', seen, run_id, 'EX', ARGV[1]) end
  end
  if not earlier then
    redis.call('SET', key, request, 'EX', ARGV[2])
    redis.call('XADD', KEYS[1], '*', 'start', request)
  end
  answers[i] = earlier
end
return answers
"""


@dataclass(slots=True)
class StartRequest:
    """A run to start, with the id promised to whoever asked.

    Made once per webhook delivery, so plain slots (a frozen dataclass costs a microsecond
    more to make): not changed once made.
    """

    workflow_id: str
    inputs: dict[str, Any]
    actor: Actor
    trigger: dict[str, Any] = field(default_factory=dict)
    delivery: str | None = None  # e.g. "source:delivery-id": the same one twice starts one run
    run_id: str = field(default_factory=new_run_id)
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def idempotency_key(self) -> str:
        # The engine's own guard: a request ever started twice still makes one run.
        return f"delivery:{self.delivery}" if self.delivery else f"intake:{self.run_id}"

    def as_dict(self) -> dict[str, Any]:
        return {**self._fields(), "accepted_at": self.accepted_at.isoformat()}

    def _fields(self) -> dict[str, Any]:
        # accepted_at left a datetime: orjson writes it as isoformat() does, in a fraction of the time.
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "inputs": self.inputs,
            "actor": self.actor.record,
            "trigger": self.trigger,
            "delivery": self.delivery,
            "accepted_at": self.accepted_at,
        }

    def to_json(self) -> bytes:
        """The request as the intake stores it (UTF-8 JSON, as Redis takes it).

        Written by orjson, several times faster than the json module (this is on the
        webhook's path); what orjson cannot write (integers past 64 bits, lone
        surrogates) the json module writes. Inputs come from JSON read at an edge, so
        none is a float orjson would write as null (NaN, infinity).
        """
        try:
            return orjson.dumps(self._fields())
        except orjson.JSONEncodeError:
            return json.dumps(self.as_dict()).encode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> StartRequest:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartRequest:
        return cls(
            workflow_id=data["workflow_id"],
            inputs=data["inputs"],
            actor=Actor.model_validate(data["actor"]),
            trigger=data["trigger"],
            delivery=data.get("delivery"),
            run_id=data["run_id"],
            # Requests accepted before the field existed: the epoch says "unknown".
            accepted_at=datetime.fromisoformat(data.get("accepted_at") or "1970-01-01T00:00:00+00:00"),
        )


class Acceptance(NamedTuple):
    """The answer to accepting a request: the run id to give out (a tuple: cheaper to make per delivery)."""

    run_id: str
    duplicate: bool  # a delivery seen before: this is the run it started then


@dataclass(frozen=True)
class AcceptedRun:
    """A run accepted from a webhook and not started yet: what will start, and since when.

    Or, with ``error``, a request that could not start (the workflow changed since it was
    accepted, a bug): kept under its run id for a day so whoever asks is told why.
    """

    request: StartRequest
    error: str | None = None

    @property
    def run_id(self) -> str:
        return self.request.run_id

    @property
    def workflow_id(self) -> str:
        return self.request.workflow_id

    @property
    def inputs(self) -> dict[str, Any]:
        return self.request.inputs

    @property
    def accepted_at(self) -> datetime:
        return self.request.accepted_at

    @property
    def status(self) -> Literal["accepted", "failed_to_start"]:
        return "failed_to_start" if self.error is not None else "accepted"

    @property
    def sentence(self) -> str:
        """What every edge says about it, in plain text (each escapes it for its medium)."""
        when = f"{self.accepted_at:%Y-%m-%d %H:%M:%S} UTC"
        what = f"Run {self.run_id[:8]} of {self.workflow_id} was accepted at {when}"
        if self.error is not None:
            return f"{what} but could not start: {self.error}"
        return f"{what} and has not started yet."

    def as_dict(self) -> dict[str, Any]:
        """The request with its status (and error), as REST answers it."""
        answer = {"status": self.status, **self.request.as_dict()}
        if self.error is not None:
            answer["error"] = self.error
        return answer


def read_accepted(client: redis.Redis, keys: Keys, run_id: str) -> AcceptedRun | None:
    """The accepted request kept under ``run_id``, if its run has not started (or could not)."""
    raw = client.get(keys.intake_request(run_id))
    if raw is None:
        return None
    data = json.loads(raw)
    return AcceptedRun(StartRequest.from_dict(data), data.get("error"))


def accept_arguments(
    keys: Keys, requests: Sequence[StartRequest], documents: Sequence[bytes]
) -> tuple[list[str], list[str | bytes | int]]:
    """KEYS and ARGV of :data:`ACCEPT_SCRIPT` for ``requests``, whose JSON is ``documents``.

    Shared by sync and async callers.
    """
    script_keys = [keys.intake]
    args: list[str | bytes | int] = [DELIVERY_TTL_SECONDS, REQUEST_TTL_SECONDS]
    for request, document in zip(requests, documents, strict=True):
        script_keys += [
            keys.intake_delivery(request.delivery) if request.delivery else "",
            keys.intake_request(request.run_id),
        ]
        args += [request.run_id, document]
    return script_keys, args


def read_answers(requests: Sequence[StartRequest], answers: Sequence[Any]) -> list[Acceptance]:
    return [
        Acceptance(text(earlier), True) if earlier else Acceptance(request.run_id, False)
        for request, earlier in zip(requests, answers, strict=True)
    ]


class Intake:
    """The intake stream of one engine: accept requests, start them, report on them."""

    def __init__(self, engine: Engine, claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self.engine = engine
        self.redis = engine.redis
        self.keys = engine.keys
        self.claim_idle_ms = claim_idle_ms
        self._accept = self.redis.register_script(ACCEPT_SCRIPT)
        self._drop_idle = self.redis.register_script(DROP_IDLE_CONSUMERS_SCRIPT)

    def accept(self, requests: Sequence[StartRequest]) -> list[Acceptance]:
        """Queue the starts of ``requests``; a delivery seen before gets its earlier run id instead."""
        if not requests:
            return []
        script_keys, args = accept_arguments(self.keys, requests, [r.to_json() for r in requests])
        return read_answers(requests, self._accept(keys=script_keys, args=args))

    def request(self, run_id: str) -> AcceptedRun | None:
        """What an accepted run not started yet will be, or why it could not start."""
        return read_accepted(self.redis, self.keys, run_id)

    def ensure_group(self) -> None:
        ensure_group(self.redis, self.keys.intake, GROUP, start="0")

    def start_next(self, starter: str, block_ms: int = BLOCK_MS) -> int:
        """Start the runs of one batch of requests; wait up to ``block_ms`` for some. Returns how many.

        Requests a silent starter has held longer than ``claim_idle_ms`` come first.
        """
        stream = self.keys.intake
        try:
            claimed: Any = self.redis.xautoclaim(stream, GROUP, starter, self.claim_idle_ms, count=BATCH)
            entries = list(claimed[1])
            if not entries:
                reply: Any = self.redis.xreadgroup(
                    GROUP, starter, {stream: ">"}, count=BATCH, block=block_ms or None
                )
                entries = list(reply[0][1]) if reply else []
        except ResponseError as exc:
            # NOGROUP: first use; UNBLOCKED: the stream was deleted while we waited on it.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            self.ensure_group()
            return 0
        for entry_id, fields in entries:
            self._start(entry_id, fields)
        return len(entries)

    def _start(self, entry_id: Any, fields: dict[Any, Any]) -> None:
        try:
            request = StartRequest.from_json(fields.get(b"start") or fields["start"])
        except (KeyError, ValueError, TypeError):
            log.exception("intake entry not understood, dropped", extra={"entry": str(entry_id)})
            self._forget(entry_id)
            return
        error: str | None = None
        try:
            self.engine.start(
                request.workflow_id,
                request.inputs,
                request.actor,
                request.trigger,
                request.idempotency_key,
                run_id=request.run_id,
            )
        except REDIS_DOWN:
            raise  # left pending: started once Redis answers again
        except SwitchboardError as exc:
            # Inputs were validated on acceptance, so this is rare (the workflow changed
            # meanwhile); the request's key now says why, for whoever polls its run id.
            log.error("accepted run could not start", extra={"run_id": request.run_id, "error": str(exc)})
            error = str(exc)
        except Exception:
            # A bug must not hold up the intake: this request fails, the others go on.
            log.exception("accepted run could not start", extra={"run_id": request.run_id})
            error = "Switchboard failed to start this run; the error is in its logs."
        self._forget(entry_id, request, error)

    def _forget(self, entry_id: Any, request: StartRequest | None = None, error: str | None = None) -> None:
        """Take an entry off the intake; a request that failed keeps saying why under its run id."""
        with self.redis.pipeline(transaction=True) as pipe:
            if request is not None:
                key = self.keys.intake_request(request.run_id)
                if error is None:
                    pipe.delete(key)
                else:
                    failure = AcceptedRun(request, error).as_dict()
                    pipe.set(key, json.dumps(failure), ex=REQUEST_TTL_SECONDS)
            pipe.xack(self.keys.intake, GROUP, entry_id)
            pipe.xdel(self.keys.intake, entry_id)
            pipe.execute()

    def drop_idle_consumers(self, idle_ms: int = CONSUMER_IDLE_MS) -> int:
        """Forget starters that hold no requests and have not read for ``idle_ms``; returns how many.

        A live starter reads several times a second, and one that comes back is simply
        added again by its next read; entries a dead starter holds stay with it until
        claimed, so only consumers with none are dropped.
        """
        dropped = int(self._drop_idle(keys=[self.keys.intake], args=[GROUP, idle_ms]))
        if dropped:
            log.info("idle intake starters forgotten", extra={"starters": dropped})
        return dropped

    def waiting_for(self) -> float:
        """Seconds the oldest request that no starter is working on has waited (0 when none).

        Counts requests not handed to any starter yet, and requests held by a starter
        that has been silent longer than ``claim_idle_ms`` (it probably died).
        """
        stream = self.keys.intake
        try:
            groups: Any = self.redis.xinfo_groups(stream)
        except ResponseError:
            return 0.0  # no stream: nothing was ever accepted
        group = next((g for g in groups if text(g["name"]) == GROUP), None)
        last_handed_out = text(group["last-delivered-id"]) if group else "0-0"
        seconds, micros = self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        waited_ms = 0
        first: Any = self.redis.xrange(stream, min=f"({last_handed_out}", count=1)
        if first:
            waited_ms = now_ms - int(text(first[0][0]).split("-")[0])
        if group:
            stalled: Any = self.redis.xpending_range(
                stream, GROUP, min="-", max="+", count=1, idle=self.claim_idle_ms
            )
            if stalled:
                waited_ms = max(waited_ms, int(stalled[0]["time_since_delivered"]))
        return max(waited_ms, 0) / 1000


class Starter(LoopThread):
    """Starts accepted runs until stopped.

    With ``standby_after`` > 0 it only steps in once a request has waited that many
    seconds: the web process's backstop for a deployment with no worker running.
    """

    def __init__(self, intake: Intake, name: str, standby_after: float = 0.0) -> None:
        super().__init__(name=f"switchboard-starter-{name}")
        self.intake = intake
        self.starter = name
        self.standby_after = standby_after

    def run(self) -> None:
        # While Redis is away: back off, one warning per retry, and never end the thread.
        outage = Outage(f"intake starter {self.starter}")
        warned = False
        while not self.stopping.is_set():
            try:
                if self.standby_after <= 0:
                    self.intake.start_next(self.starter)
                    outage.recovered()
                    continue
                waited = self.intake.waiting_for()
                outage.recovered()
                if waited < self.standby_after:
                    warned = False
                    self.stopping.wait(min(1.0, self.standby_after))
                    continue
                if not warned:
                    log.warning(
                        "accepted runs are waiting: no worker is starting them, this process will",
                        extra={"waited_seconds": round(waited, 1)},
                    )
                    warned = True
                while self.intake.start_next(self.starter, block_ms=0) and not self.stopping.is_set():
                    pass
            except REDIS_DOWN as exc:
                self.stopping.wait(outage.failed(exc))
            except Exception:
                log.exception("starting accepted runs failed")
                self.stopping.wait(1.0)


# A request, its JSON (made once: batches are sized by it) and its handler's answer.
Waiting = tuple[StartRequest, bytes, "asyncio.Future[Acceptance]"]


class Acceptor:
    """Accepts starts from asyncio code (the web process), many deliveries per Redis round trip.

    Each delivery handler awaits :meth:`accept`. The first one starts a sender, which lets
    the event loop take one more turn (the handlers woken with it join) and sends; those
    that arrive while that call is in flight wait for it and go together in the next
    call (group commit). Alone, a delivery costs one round trip as before; under
    load, the per-call cost of the Redis client is shared by a whole batch, which is most
    of what a delivery costs the web process.

    Give it a client of its own without a socket timeout (``socket_timeout=None``): it
    bounds each call itself, once, where redis-py's asyncio client wraps every send in
    ``asyncio.wait_for`` (a task of its own per command, a third of a call's CPU).
    """

    def __init__(self, aredis: aioredis.Redis, keys: Keys, timeout: float = ACCEPT_TIMEOUT_SECONDS) -> None:
        self.redis = aredis
        self.keys = keys
        self.timeout = timeout
        self._script = aredis.register_script(ACCEPT_SCRIPT)
        self._waiting: list[Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    def accept(self, request: StartRequest) -> asyncio.Future[Acceptance]:
        """Accept ``request``: await the answer (durable once it comes); a delivery seen before
        gets its earlier run. A future, not a coroutine: one frame less on every delivery's way."""
        answer: asyncio.Future[Acceptance] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, request.to_json(), answer))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="intake-accept")
        return answer

    async def _send_all(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._waiting:
                # One turn of the loop first: handlers woken in this turn reach accept() and
                # join the batch (under load batches are about twice as large, for one turn).
                await asyncio.sleep(0)
                batch, self._waiting = _next_batch(self._waiting)
                requests, documents, answers = zip(*batch, strict=True)  # columns, made in C
                try:
                    script_keys, args = accept_arguments(self.keys, requests, documents)
                    accepted = read_answers(requests, await self._call(script_keys, args))
                except Exception as exc:  # each waiting handler reports it as its own
                    for answer in answers:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for answer, acceptance in zip(answers, accepted, strict=True):
                    if not answer.done():  # its handler may have been cancelled meanwhile
                        answer.set_result(acceptance)
        finally:
            self._sender = None
            for _, _, answer in batch + self._waiting:  # only when cancelled (shutting down)
                answer.cancel()

    async def _call(self, script_keys: list[str], args: list[str | bytes | int]) -> Any:
        """One accepting call, bounded: a Redis that stops answering is an outage, not a wait."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._script(keys=script_keys, args=args)
        except TimeoutError:
            raise redis.TimeoutError(f"Redis did not accept the batch within {self.timeout:g} s") from None


def _next_batch(waiting: list[Waiting]) -> tuple[list[Waiting], list[Waiting]]:
    """The first requests up to MAX_BATCH of them and MAX_BATCH_BYTES of JSON (always one), and the rest.

    Sized without a Python loop (it runs once per batch of up to MAX_BATCH): the running
    total of the JSON sizes, and where MAX_BATCH_BYTES falls in it.
    """
    sizes = list(accumulate(map(len, map(_DOCUMENT, waiting[:MAX_BATCH]))))
    count = max(1, bisect_right(sizes, MAX_BATCH_BYTES))
    return waiting[:count], waiting[count:]


_DOCUMENT = itemgetter(1)  # of a Waiting
