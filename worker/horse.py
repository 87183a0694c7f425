"""A long-lived work horse: one child process that executes its worker's jobs one after another.

RQ's worker forks a fresh work horse for every job, which cost a no-op step about 20 ms,
most of its time. A :class:`Horse` is forked once and reused, as Celery's prefork pool
reuses its children (concurrency 1: one horse per worker process). What the fork per job
gave is kept:

- an immediate stop kills the step mid-flight: its worker SIGKILLs the horse's process
  group (the step's own children with it) and forks a fresh horse for the next job;
- a step that crashes its horse (an OOM kill, a segfault, ``os._exit``) takes only the
  horse: the worker sees the process end without a report, reports the step lost, as it
  did for a forked horse, and forks another;
- a step that leaks (memory, threads, state in modules) is contained by recycling: the
  horse is retired after ``max_jobs`` jobs, or after a job that leaves it above
  ``max_rss`` bytes resident;
- a job's timeout is the horse's own alarm (RQ's death penalty), as in a forked horse.

The worker and its horse talk over a socket pair: an :class:`Assignment` per job (the
job as its worker read and prepared it, so the horse needs no Redis call to start) and a
:class:`Report` once the job is over (a step's success carries what RQ records, for the
worker to write along with its next call, so the horse needs none to end either). While
its worker's :class:`TakeWindow` is open, a horse that ends a step takes the next waiting
job itself and says so in its report (:class:`Taken`), so a busy queue's jobs need no
hand-over at all. Death is seen on a pidfd (Linux), or by polling.
This module keeps the process; :class:`worker.process.SwitchboardWorker` does the RQ side.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection, Pipe, wait
from resource import struct_rusage
from typing import Any, NoReturn

from engine.api import ClaimedStep
from engine.lifetime import die_with_parent

log = logging.getLogger(__name__)

ORPHAN_CHECK_SECONDS = 0.5
POLL_SECONDS = 0.05  # how often death is polled for where there is no pidfd
RETIRE_SECONDS = 5.0  # how long a retired horse may take to leave before it is killed


@dataclass(frozen=True)
class Assignment:
    """One job for the horse: what it needs to rebuild RQ's objects on its side, as its worker read them."""

    job_id: str
    job: dict[bytes, bytes]  # the job's hash (``Job.restore``), prepared for execution
    queue_name: str
    execution_id: str
    execution_created_at: datetime
    # A step job's arguments and timeout, when the horse may run it without rebuilding RQ's
    # job (its success recorded by the worker); None: RQ's ``perform_job`` runs it.
    step: tuple[Any, ...] | None = None
    timeout: int = 0
    # A step the horse's last report started for it (eager dispatch): run it as it is.
    claimed: ClaimedStep | None = None

    @property
    def is_step(self) -> bool:
        """A step job, which the horse runs itself (not through RQ's ``perform_job``)."""
        return self.step is not None or self.claimed is not None


@dataclass(frozen=True)
class Finished:
    """A job that succeeded, for its worker to record in RQ (the horse did not)."""

    result: Any
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class Taken:
    """A job the horse took off the queue itself after its last one, as the worker's take reads it."""

    job_id: str
    job: dict[bytes, bytes]  # its hash, as Redis returned it; empty for a job its report claimed
    execution_id: str
    execution_created_at: datetime
    running: bool  # the horse runs it now (a step job); False: it is the worker's to hand out


@dataclass(frozen=True)
class Report:
    """The horse finished a job; its resident memory after it; the job it took next, if any.

    RQ recorded the job's end, or, for a job that ``finished`` says succeeded, its worker
    records it with its next Redis call.
    """

    rss: int
    finished: Finished | None = None
    taken: Taken | None = None


@dataclass(frozen=True)
class Ended:
    """The horse process ended (killed, crashed, or exited): what ``wait4`` said."""

    pid: int
    status: int
    rusage: struct_rusage | None

    @property
    def why(self) -> str:
        if os.WIFSIGNALED(self.status):
            return f"killed by signal {os.WTERMSIG(self.status)}"
        return f"exited with status {os.waitstatus_to_exitcode(self.status)}"


class Horse:
    """A forked child serving assignments with ``serve`` until told to leave or killed."""

    def __init__(self, serve: Callable[[Connection], NoReturn]) -> None:
        parent_end, child_end = Pipe()
        pid = os.fork()
        if pid == 0:  # the horse
            parent_end.close()
            try:
                os.setpgrp()  # its own group: a kill takes the step's children along
                guard_against_orphaning()
                serve(child_end)
            finally:
                os._exit(1)
        child_end.close()
        self.pid = pid
        self.conn = parent_end
        self.jobs = 0
        self.ended: Ended | None = None
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux 5.3+
            self._pidfd = os.pidfd_open(pid)

    # -- jobs ----------------------------------------------------------------------------

    def assign(self, assignment: Assignment) -> bool:
        """Hand over a job; False if the horse is gone (it never saw the job)."""
        if not self.alive():
            return False
        try:
            self.conn.send(assignment)
        except OSError:  # BrokenPipeError, ConnectionResetError: it died meanwhile
            return False
        return True

    def wait(self, timeout: float) -> Report | Ended | None:
        """The horse's report, or its end, or None if neither came within ``timeout`` seconds.

        A report already sent wins over the end that followed it (a stop that came a
        moment after the job finished).
        """
        watched: list[Connection | int] = [self.conn] if self._pidfd is None else [self.conn, self._pidfd]
        step = timeout if self._pidfd is not None else min(timeout, POLL_SECONDS)
        remaining = timeout
        while True:
            ready = wait(watched, step)
            if self.conn in ready:
                try:
                    report: Report = self.conn.recv()
                    return report
                except (EOFError, OSError):
                    return self.reap()
            if ready or not self.alive():
                return self.reap()
            remaining -= step
            if remaining <= 0:
                return None

    # -- life ----------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.ended is not None:
            return False
        if self._pidfd is not None:
            return not wait([self._pidfd], 0)
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.ended = Ended(pid, status, None)
            return False
        return True

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the horse's process group (the horse and whatever its step started)."""
        if self.ended is not None:
            return  # reaped: its pid may belong to someone else by now
        try:
            os.killpg(self.pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def reap(self) -> Ended:
        """Wait for the ended (or ending) horse and free its resources."""
        if self.ended is None:
            try:
                pid, status, rusage = os.wait4(self.pid, 0)
                self.ended = Ended(pid, status, rusage)
            except ChildProcessError:
                self.ended = Ended(self.pid, 0, None)
        self.close()
        return self.ended

    def retire(self) -> None:
        """Ask an idle horse to leave; kill it if it has not left within ``RETIRE_SECONDS``."""
        if self.ended is None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            if self.wait(RETIRE_SECONDS) is None or self.alive():
                self.kill()
        self.reap()

    def close(self) -> None:
        self.conn.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class TakeWindow:
    """Until when the horse may take its next job itself: a deadline its worker sets and it reads.

    A value in memory shared by the worker and its horses (mapped before the fork), on
    the system's monotonic clock, which both processes read alike. The worker keeps it a
    moment ahead (up to its next check of RQ's suspension) while it lets its horse chain
    jobs, and sets it to 0 when it must act between jobs (a warm shutdown): the horse
    reads it before every take, so neither waits for the other.
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _DEADLINE.size)  # anonymous, MAP_SHARED: forked horses see it

    def open_until(self, deadline: float) -> None:
        _DEADLINE.pack_into(self._memory, 0, deadline)

    def close(self) -> None:
        _DEADLINE.pack_into(self._memory, 0, 0.0)

    def is_open(self) -> bool:
        deadline: float = _DEADLINE.unpack_from(self._memory, 0)[0]
        return time.monotonic() < deadline


_DEADLINE = struct.Struct("d")


_statm: dict[int, int] = {}  # this process's /proc/self/statm, kept open (by pid: a fork has its own)


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak. Read after every step, so
    from a file kept open (opening it cost more than the read)."""
    try:
        pid = os.getpid()
        if pid not in _statm:
            for inherited in _statm.values():  # the parent's, which a fork inherits
                os.close(inherited)
            _statm.clear()
            _statm[pid] = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm[pid], 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def guard_against_orphaning() -> None:
    """End this horse if its worker dies (SIGKILL, OOM).

    The horse runs in its own process group, so it would outlive a killed worker and
    race the retry the reaper schedules for the lost step. On Linux the kernel kills it
    with its worker (``PR_SET_PDEATHSIG``, asked once for the horse's life: the worker
    forks horses from its main thread, whose death is the one the kernel watches);
    elsewhere a thread watches the parent.
    """
    parent = os.getppid()
    if die_with_parent(signal.SIGKILL):
        if os.getppid() != parent:  # the worker died before the request took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        log.warning("worker %s died; ending its orphaned work horse", parent)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-guard", daemon=True).start()
