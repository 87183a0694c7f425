"""The worker's guard on killing its work horse (an RQ race that would kill the worker's own group)."""

from __future__ import annotations

import os
import signal

import pytest

from engine.api import Engine
from worker.process import SwitchboardWorker


def test_a_stop_that_arrives_after_the_horse_ended_kills_nothing(
    engine: Engine, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda group, sig: killed.append((group, sig)))
    monkeypatch.setattr(os, "getpgid", lambda pid: os.getpgrp() if pid == 0 else pid)
    worker = SwitchboardWorker([engine.queue], connection=engine.redis, name=f"{namespace}-guard")

    # RQ's state between a horse's end and forgetting its job: plain RQ would call
    # killpg(getpgid(0)), i.e. this process's own group.
    worker._horse_pid = 0
    worker.kill_horse()
    assert killed == []

    worker._horse_pid = 424242  # a live horse is still killed, with its own group
    worker.kill_horse()
    assert killed == [(424242, signal.SIGKILL)]
