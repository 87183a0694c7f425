"""Benchmark: signed webhook deliveries per second against a bare aiohttp endpoint, driven by wrk.

Both servers run in a child process of their own (same machine, same client), so the
ratio compares like with like; they are measured in alternating rounds, and each figure is
the median of its server's rounds, so a burst of load from other processes on a shared
machine is not charged to one server alone. Beside each server's rate it prints the CPU
the server process spent per request, which depends less on how busy the machine is. The client is ``wrk`` (a C load generator;
a Python client saturated before the servers did): a Lua script hands each request the
next of a set of deliveries signed beforehand, each thread its own share, so every
delivery is a new one (no duplicate answered from memory) unless the set runs out, which
the report says. The real server verifies a Standard
Webhooks signature, maps and validates the inputs of a workflow, accepts the start into
the engine's intake and answers 202 with the run id; the bare endpoint only answers 202
with a small JSON body. As in production, worker processes (``python -m worker``) start
the accepted runs: by default they start once the deliveries are in, so the ratio
measures the web process and not how this machine shares its cores; ``--workers-during``
runs them during the deliveries instead. Either way it prints how fast they started
every accepted run.

    .venv/bin/python bench/webhooks.py [--rounds 4] [--seconds 2] [--connections 32] [--workers 1]
    .venv/bin/python bench/webhooks.py --instructions [--requests 2000]

On a shared machine the other tenants' load moves both rates from one run to the next (the
same code measured 0.43-0.61 here, the real server's CPU per request 139-312 us). So
``--instructions`` measures what that load cannot move: each server runs under valgrind's
callgrind, and the instructions it executes for the same signed deliveries (sent from 32
connections at once, after a warm-up) are counted, per request. It is repeatable to about
half a percent, and on a quiet machine its ratio is close to wrk's. It needs valgrind
(``apt-get install -y valgrind``) and takes about a minute.

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``) and a Redis at REDIS_URL
(default redis://127.0.0.1:6379/0); it uses a key prefix of its own and deletes its keys
afterwards. Targets: ratio >= 0.6, the real server's p99 under 20 ms at 32 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from aiohttp import ClientSession, TCPConnector, web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.api import Engine  # noqa: E402
from engine.catalog import load_folder  # noqa: E402
from switchboard.app import settle_heap  # noqa: E402
from webhooks.server import create_app  # noqa: E402
from webhooks.settings import WebSettings  # noqa: E402
from webhooks.signatures import Scheme, secret_key, sign_standard  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WORKFLOW = {
    "id": "bench-release",
    "name": "Bench release",
    "inputs": {"service": {"type": "string", "required": True}},
    "steps": [
        {"id": "approve", "type": "human_task", "task": {"title": "Release {{ inputs.service }}?"}},
        {"id": "announce", "type": "notify", "needs": ["approve"], "notify": {"text": "released"}},
    ],
}
SOURCES = """
sources:
  bench:
    scheme: standard
    secrets: [BENCH_WEBHOOK_SECRET]
    start:
      workflow: bench-release
      inputs: {service: "{{ payload.service }}"}
"""


WARM_UP = 200  # deliveries before the measure (connections, caches, the first runs)
KINDS = ("bare", "real")


@dataclass
class Result:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    failures: int  # answers other than 2xx, and connection errors
    cpu_us: float | None  # the server process's CPU per request (user + system), where /proc says


def serve(kind: str, port: int, prefix: str, redis_url: str, folder: Path) -> None:
    """Child process: serve the real app or the bare endpoint until killed."""
    if kind == "bare":
        app = web.Application()

        async def accepted(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"run_id": "0123456789abcdef", "status_url": "/v1/runs/x"}, status=202)

        app.router.add_post("/webhooks/{source}", accepted)
    else:
        engine = Engine(
            redis.Redis.from_url(redis_url), load_folder(folder), key_prefix=prefix, queue_name=prefix
        )
        os.environ["BENCH_WEBHOOK_SECRET"] = SECRET
        # Workers start the runs; the web process's standby starter must not step in mid-measure.
        app = create_app(engine, WebSettings(sources_file=folder / "sources.yaml", starts_after=3600))
        app.on_startup.append(settle_heap)  # as `switchboard web` does
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_workers(count: int, prefix: str, redis_url: str, folder: Path) -> list[subprocess.Popen[bytes]]:
    """Real worker processes on the bench's keys: they start the accepted runs."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SWITCHBOARD_KEY_PREFIX": prefix,
        "SWITCHBOARD_QUEUE": prefix,
        "SWITCHBOARD_WORKFLOWS": str(folder / "workflows"),
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
    }
    return [
        subprocess.Popen([sys.executable, "-m", "worker", "--name", f"{prefix}{i}"], env=env, cwd=ROOT)
        for i in range(count)
    ]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_up(port: int, attempts: int = 100) -> None:
    for _ in range(attempts):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def signed_deliveries(count: int, tag: str) -> list[tuple[bytes, dict[str, str]]]:
    key = secret_key(Scheme.STANDARD, SECRET)
    deliveries = []
    for i in range(count):
        body = json.dumps({"service": f"svc-{i % 50}", "n": i}).encode()
        msg_id, timestamp = f"msg_{tag}_{i}", str(int(time.time()))
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign_standard(key, msg_id, timestamp, body),
            "Content-Type": "application/json",
        }
        deliveries.append((body, headers))
    return deliveries


WRK_SCRIPT = r"""
-- Each thread sends its own share of the deliveries in deliveries.tsv, one after another.
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local count = tonumber(args[2])
  mine, sent = {}, 0
  local n = 0
  for line in io.lines(args[1]) do
    if n % count == index then
      local id, timestamp, signature, body = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
      table.insert(mine, wrk.format("POST", "/webhooks/bench", {
        ["webhook-id"] = id, ["webhook-timestamp"] = timestamp,
        ["webhook-signature"] = signature, ["Content-Type"] = "application/json",
      }, body))
    end
    n = n + 1
  end
end

function request()
  sent = sent + 1
  return mine[(sent - 1) % #mine + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "not_2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def write_deliveries(path: Path, count: int, tag: str) -> None:
    """``count`` signed deliveries, one per line: id, timestamp, signature, body (tab-separated)."""
    with path.open("w") as out:
        for body, headers in signed_deliveries(count, tag):
            fields = (headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"])
            out.write("\t".join([*fields, body.decode()]) + "\n")


def run_wrk(port: int, args: argparse.Namespace, folder: Path, tag: str) -> dict[str, float]:
    """wrk against ``port`` for ``args.seconds``; its summary (requests, seconds, p50/p99, failures)."""
    deliveries = folder / f"deliveries-{tag}.tsv"
    write_deliveries(deliveries, args.deliveries, tag)
    script = folder / "deliveries.lua"
    script.write_text(WRK_SCRIPT)
    threads = min(args.threads, args.connections)
    command = ["wrk", "-t", str(threads), "-c", str(args.connections), "-d", f"{args.seconds}s"]
    command += ["-s", str(script), f"http://127.0.0.1:{port}", "--", str(deliveries), str(threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((line for line in output.splitlines() if line.startswith("WRK ")), None)
    if line is None:
        sys.exit(f"wrk said nothing we understand:\n{output}")
    summary: dict[str, float] = json.loads(line[4:])
    return summary


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux's /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(kind: str, rounds: list[tuple[dict[str, float], float | None]]) -> Result:
    """One figure per measure from several rounds: the median round's."""
    rates = [summary["requests"] / summary["seconds"] for summary, _ in rounds]
    cpus = [cpu for _, cpu in rounds if cpu is not None]
    return Result(
        kind,
        statistics.median(rates),
        statistics.median(summary["p50_ms"] for summary, _ in rounds),
        statistics.median(summary["p99_ms"] for summary, _ in rounds),
        int(sum(summary["not_2xx"] + summary["errors"] for summary, _ in rounds)),
        statistics.median(cpus) if cpus else None,
    )


async def measure(args: argparse.Namespace, prefix: str, folder: Path) -> tuple[Result, Result]:
    """Both servers up at once, measured in alternating rounds (bare, real, real, bare, ...).

    On a shared machine the load of other processes comes and goes: measuring one server
    and then the other would charge a burst of it to whichever was measured then. Rounds
    that alternate, and the median of each server's rounds, leave such bursts out.
    """
    ports = {kind: free_port() for kind in KINDS}
    serve = ["--prefix", prefix, "--redis-url", args.redis_url, "--folder", str(folder)]
    children = {
        kind: subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(ports[kind]), *serve]
        )
        for kind in KINDS
    }
    workers: list[subprocess.Popen[bytes]] = []
    rounds: dict[str, list[tuple[dict[str, float], float | None]]] = {kind: [] for kind in KINDS}
    try:
        for kind in KINDS:
            await wait_until_up(ports[kind])
        if args.workers_during:
            workers = start_workers(args.workers, prefix, args.redis_url, folder)
        for kind in KINDS:
            await send_all(ports[kind], signed_deliveries(WARM_UP, f"warm{kind}"), args.connections)
        for number in range(args.rounds):
            for kind in KINDS if number % 2 == 0 else KINDS[::-1]:
                before = cpu_seconds(children[kind].pid)
                summary = await asyncio.to_thread(run_wrk, ports[kind], args, folder, f"{kind}{number}")
                after = cpu_seconds(children[kind].pid)
                cpu = (
                    None if before is None or after is None else (after - before) * 1e6 / summary["requests"]
                )
                rounds[kind].append((summary, cpu))
                if summary["requests"] > args.deliveries:
                    print(
                        f"  note: {kind} took more than {args.deliveries} deliveries in a round: some were repeats"
                    )
        if args.workers:
            answered = sum(min(int(s["requests"] - s["not_2xx"]), args.deliveries) for s, _ in rounds["real"])
            total = WARM_UP + answered
            began = time.perf_counter()
            workers = workers or start_workers(args.workers, prefix, args.redis_url, folder)
            waited = await wait_for_runs(args.redis_url, prefix, total)
            when = "during the deliveries" if args.workers_during else "after the last 202"
            print(
                f"  {args.workers} worker(s) started {when}: all {total} accepted runs existed"
                f" {waited:.2f} s after the last 202 ({total / (time.perf_counter() - began):.0f} runs/s"
                f" {'from the first delivery' if args.workers_during else 'once started'})"
            )
    finally:
        stop(workers)
        for child in children.values():
            child.terminate()
        for child in children.values():
            child.wait(10)
    return summarise("bare", rounds["bare"]), summarise("real", rounds["real"])


async def send_all(port: int, deliveries: list[tuple[bytes, dict[str, str]]], connections: int) -> None:
    """Every delivery, from ``connections`` concurrent senders; each must be answered 202."""
    url = f"http://127.0.0.1:{port}/webhooks/bench"
    async with ClientSession(connector=TCPConnector(limit=connections)) as session:

        async def sender(share: list[tuple[bytes, dict[str, str]]]) -> None:
            for body, headers in share:
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(
                            f"a delivery was answered {response.status}: {await response.text()}"
                        )

        await asyncio.gather(*(sender(deliveries[i::connections]) for i in range(connections)))


def count_instructions(kind: str, args: argparse.Namespace, prefix: str, folder: Path) -> float:
    """Instructions the ``kind`` server executes per delivery, counted by callgrind.

    Counting starts after a warm-up (imports, first connections and caches are not the
    steady state) and stops after ``args.requests`` deliveries.
    """
    port, out = free_port(), folder / f"callgrind-{kind}.out"
    serve = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--prefix", prefix]
    serve += ["--redis-url", args.redis_url, "--folder", str(folder)]
    callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server = subprocess.Popen([*callgrind, *serve], stderr=subprocess.DEVNULL)

    def instrument(switch: str) -> None:
        subprocess.run(["callgrind_control", "-i", switch, str(server.pid)], check=True, capture_output=True)

    async def drive() -> None:
        await wait_until_up(port, attempts=1200)  # valgrind starts Python ~50x slower
        await send_all(port, signed_deliveries(WARM_UP, f"warm{kind}"), args.connections)
        measured = signed_deliveries(args.requests, f"counted{kind}")
        instrument("on")
        await send_all(port, measured, args.connections)
        instrument("off")

    try:
        asyncio.run(drive())
    finally:
        server.terminate()
        server.wait(60)
    totals = [line.split()[1] for line in out.read_text().splitlines() if line.startswith("totals:")]
    return int(totals[0]) / args.requests


async def wait_for_runs(redis_url: str, prefix: str, count: int) -> float:
    """Seconds until the workers had started ``count`` runs (given up below 50 runs/s)."""
    limit = max(300.0, count / 50)
    connection = redis.Redis.from_url(redis_url)
    began = time.perf_counter()
    while connection.zcard(f"{prefix}runs") < count:
        if time.perf_counter() - began > limit:
            raise RuntimeError(f"only {connection.zcard(f'{prefix}runs')} of {count} runs started")
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


def prepare() -> tuple[str, Path]:
    """A key prefix and a folder (the workflow, the sources file) of this run's own."""
    prefix = f"sbbench-{uuid.uuid4().hex[:8]}:"
    folder = Path(tempfile.mkdtemp(prefix="sbbench-"))
    (folder / "workflows").mkdir()
    (folder / "workflows" / "bench-release.json").write_text(json.dumps(WORKFLOW))
    (folder / "sources.yaml").write_text(SOURCES)
    return prefix, folder


def clean_up(redis_url: str, prefix: str, folder: Path) -> None:
    connection = redis.Redis.from_url(redis_url)
    for key in connection.scan_iter(f"{prefix}*", count=1000):
        connection.delete(key)
    shutil.rmtree(folder, ignore_errors=True)


def instructions(args: argparse.Namespace) -> None:
    """The ``--instructions`` measure: instructions per delivery of both servers, and their ratio."""
    if shutil.which("valgrind") is None:
        sys.exit("--instructions runs the servers under valgrind: apt-get install -y valgrind")
    prefix, folder = prepare()
    try:
        counts = {kind: count_instructions(kind, args, prefix, folder) for kind in KINDS}
    finally:
        clean_up(args.redis_url, prefix, folder)
    print(
        f"callgrind, {args.requests} deliveries per server from {args.connections} connections"
        f" after {WARM_UP} to warm up; Redis at {args.redis_url}"
    )
    for kind, count in counts.items():
        print(f"  {kind:5} {count / 1000:8.1f} k instructions/request")
    ratio = counts["bare"] / counts["real"]
    print(f"ratio (bare / signed webhook instructions: the rate ratio they allow): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=2, help="how long wrk sends, per server and round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--deliveries", type=int, default=60_000, help="signed beforehand, per server")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes that start the runs (0: none)"
    )
    parser.add_argument("--workers-during", action="store_true", help="run them during the deliveries")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per request (callgrind), not rates"
    )
    parser.add_argument("--requests", type=int, default=2000, help="deliveries counted, with --instructions")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--serve", choices=["real", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.prefix, args.redis_url, args.folder)
        return
    if args.instructions:
        instructions(args)
        return
    if shutil.which("wrk") is None:
        sys.exit(
            "This bench drives the servers with wrk: apt-get install -y wrk (Debian, Ubuntu), brew install wrk"
        )
    prefix, folder = prepare()
    try:
        bare, real = asyncio.run(measure(args, prefix, folder))
    finally:
        clean_up(args.redis_url, prefix, folder)
    print(
        f"wrk, {args.connections} connections, {args.threads} threads, {args.rounds} alternating rounds of"
        f" {args.seconds} s per server (medians), {os.cpu_count()} CPUs; Redis at {args.redis_url}"
    )
    for result in (bare, real):
        cpu = f"   CPU {result.cpu_us:4.0f} us/request" if result.cpu_us is not None else ""
        print(
            f"  {result.name:5} {result.rate:8.0f} req/s   p50 {result.p50_ms:7.2f} ms   p99 {result.p99_ms:7.2f} ms"
            f"   failed {result.failures}{cpu}"
        )
    ratio = real.rate / bare.rate
    print(
        f"ratio (signed webhook / bare endpoint): {ratio:.2f}  (target >= 0.60: {'met' if ratio >= 0.6 else 'NOT met'})"
    )
    print(f"real p99 {real.p99_ms:.1f} ms  (target < 20 ms: {'met' if real.p99_ms < 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
