"""Real ``redis-server`` processes that a fault test owns: started on free ports, stopped,
killed and restarted by the test, and always ended when it finishes.

The shared server on 127.0.0.1:6379 is never touched by these tests: a test that takes
Redis away from its processes does it to a server of its own.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server on 127.0.0.1, its data (AOF by default) in ``folder``.

    ``stop`` (SIGTERM: the server saves and exits), ``kill`` (SIGKILL: a crash) and
    ``start`` again keep the same port and folder, so clients reconnect to the same
    address and the server reloads what it had written.
    """

    def __init__(self, folder: Path, *, port: int | None = None, appendonly: bool = True, args: tuple[str, ...] = ()):
        self.folder = folder
        self.port = port or free_port()
        self.appendonly = appendonly
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert REDIS_SERVER is not None
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.folder / "redis.log"),
            *self.args,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # loading its AOF: not ready yet
                except redis.ConnectionError:
                    if self.process is not None and self.process.poll() is not None:
                        raise RuntimeError(f"redis-server exited: see {self.folder / 'redis.log'}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM: the server flushes its AOF and exits, as on a clean restart."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever the AOF had not fsynced is lost."""
        self._end(signal.SIGKILL)


class Sentinel:
    """One ``redis-server --sentinel`` watching ``master_name`` at ``master_port``."""

    def __init__(self, folder: Path, master_name: str, master_port: int, quorum: int = 1):
        self.folder = folder
        self.port = free_port()
        self.master_name = master_name
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {folder}",
                    f"logfile {folder / 'sentinel.log'}",
                    f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {master_name} 1000",
                    f"sentinel failover-timeout {master_name} 5000",
                    f"sentinel parallel-syncs {master_name} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Sentinel:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"sentinel on port {self.port} did not answer") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def redis_server(folder: Path, **options: object) -> Iterator[RedisServer]:
    """A started server that is killed when the block ends, whatever happened in it."""
    server = RedisServer(folder, **options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server (AOF, everysec) of this test's own, to stop, kill and restart."""
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    with redis_server(tmp_path / "redis") as server:
        yield server
