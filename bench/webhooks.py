"""Benchmark: signed webhook deliveries per second against a bare aiohttp endpoint.

Both servers run in a child process of their own (one at a time, same machine, same
client), so the ratio compares like with like. The real server verifies a Standard
Webhooks signature, validates the inputs of a workflow (a human task first, so no worker is needed)
and accepts the run into the inbox (a consumer in the same process starts it) and
answers 202; the bare endpoint only answers 202 with a small JSON body. It also prints
how long after the last 202 every accepted run existed.

    .venv/bin/python bench/webhooks.py [--requests 3000] [--concurrency 32]

Needs a Redis at REDIS_URL (default redis://127.0.0.1:6379/0); it uses a key prefix of
its own and deletes its keys afterwards. Target: ratio >= 0.4.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from engine.catalog import Catalog  # noqa: E402
from engine.workflow import Workflow  # noqa: E402
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


@dataclass
class Result:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]


def serve(kind: str, port: int, prefix: str, redis_url: str) -> None:
    """Child process: serve the real app or the bare endpoint until killed."""
    if kind == "bare":
        app = web.Application()

        async def accepted(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"run_id": "0123456789abcdef", "status_url": "/v1/runs/x"}, status=202)

        app.router.add_post("/webhooks/{source}", accepted)
    else:
        catalog = Catalog()
        catalog.add(Workflow.model_validate(WORKFLOW))
        engine = Engine(redis.Redis.from_url(redis_url), catalog, key_prefix=prefix, queue_name=prefix)
        sources = Path(tempfile.mkdtemp()) / "sources.yaml"
        sources.write_text(SOURCES)
        os.environ["BENCH_WEBHOOK_SECRET"] = SECRET
        app = create_app(engine, WebSettings(sources_file=sources))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_up(port: int) -> None:
    for _ in range(100):
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


async def fire(
    port: int, deliveries: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(deliveries)
    url = f"http://127.0.0.1:{port}/webhooks/bench"

    async def worker(session: ClientSession) -> None:
        for body, headers in queue:
            began = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            latencies.append(time.perf_counter() - began)
            statuses[response.status] = statuses.get(response.status, 0) + 1

    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return elapsed, latencies, statuses


async def measure(kind: str, requests: int, concurrency: int, prefix: str, redis_url: str) -> Result:
    port = free_port()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--port",
            str(port),
            "--prefix",
            prefix,
            "--redis-url",
            redis_url,
        ]
    )
    try:
        await wait_until_up(port)
        await fire(port, signed_deliveries(200, f"warm{kind}"), concurrency)
        elapsed, latencies, statuses = await fire(port, signed_deliveries(requests, kind), concurrency)
        if kind == "real":
            drained = await wait_for_runs(redis_url, prefix, 200 + requests)
            print(
                f"  real: all {requests} accepted runs existed {drained:.2f} s after the last 202"
                f" ({requests / (elapsed + drained):.0f} runs started/s end to end)"
            )
    finally:
        child.terminate()
        child.wait(10)
    latencies.sort()
    return Result(
        kind,
        requests / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99) - 1] * 1000,
        statuses,
    )


async def wait_for_runs(redis_url: str, prefix: str, count: int, limit: float = 120.0) -> float:
    """Seconds after the deliveries until the inbox consumer had started every run."""
    connection = redis.Redis.from_url(redis_url)
    began = time.perf_counter()
    while connection.zcard(f"{prefix}runs") < count and time.perf_counter() - began < limit:
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--serve", choices=["real", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.prefix, args.redis_url)
        return
    prefix = f"sbbench-{uuid.uuid4().hex[:8]}:"
    try:
        bare = asyncio.run(measure("bare", args.requests, args.concurrency, prefix, args.redis_url))
        real = asyncio.run(measure("real", args.requests, args.concurrency, prefix, args.redis_url))
    finally:
        connection = redis.Redis.from_url(args.redis_url)
        for key in connection.scan_iter(f"{prefix}*", count=1000):
            connection.delete(key)
    print(f"{args.requests} signed deliveries, concurrency {args.concurrency}")
    for result in (bare, real):
        print(
            f"  {result.name:5} {result.rate:8.0f} req/s   p50 {result.p50_ms:7.2f} ms   p99 {result.p99_ms:7.2f} ms"
            f"   statuses {result.statuses}"
        )
    ratio = real.rate / bare.rate
    print(
        f"ratio (signed webhook / bare endpoint): {ratio:.2f}  (target >= 0.40: {'met' if ratio >= 0.4 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
