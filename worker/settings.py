"""Worker tuning, read once from the environment (``SWITCHBOARD_*``) by pydantic-settings.

The defaults bound how fast a dead worker is noticed: its liveness key expires at most
``worker_lost_after`` seconds after it dies (each heartbeat, every
``heartbeat_interval``, renews it), and the next reaper pass (every ``reaper_interval``)
reports it, so a step of a SIGKILLed worker is retried or failed within 15 + 5 = 20
seconds. After a Redis outage the reaper first lets ``settle_after_outage`` seconds pass
(10 + 3), then a job left in no queue is enqueued again within two passes: 13 + 2 x 5 = 23
seconds after Redis is back.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.outage import LONGEST_RETRY_SECONDS


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", env_file=".env", extra="ignore")

    maintenance_interval: float = Field(
        default=0.5, gt=0, description="Seconds between passes that fire due engine timers."
    )
    reaper_interval: float = Field(
        default=5.0, gt=0, description="Seconds between searches for lost steps and vanished jobs."
    )
    retention_interval: float = Field(
        default=60.0, gt=0, description="Seconds between retention passes (one worker does each)."
    )
    heartbeat_interval: int = Field(
        default=3,
        ge=1,
        description="Seconds between a worker's heartbeats (also RQ's job_monitoring_interval).",
    )
    worker_lost_after: float = Field(
        default=15.0,
        gt=0,
        description="A worker silent this long (by Redis's clock) is dead and its steps are lost.",
    )
    worker_ttl: int = Field(
        default=30, ge=16, description="RQ worker_ttl; an idle worker beats every worker_ttl - 15 seconds."
    )
    hand_off_grace: float = Field(
        default=4.0,
        gt=0,
        description="A queued step's job seen in no queue this long (two reaper passes) is enqueued again.",
    )
    report_patience: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Seconds a work horse keeps trying to start or report its step while Redis is unreachable;"
            " past it the horse gives up and its worker reports the step lost once Redis is back."
        ),
    )

    horse_max_jobs: int = Field(
        default=1000,
        ge=0,
        description="Jobs a work horse runs before it is replaced by a fresh one (0: never replaced for it).",
    )
    horse_max_memory_mb: int = Field(
        default=512,
        ge=0,
        description="A work horse left above this many MiB resident after a job is replaced (0: no limit).",
    )

    @model_validator(mode="after")
    def _lost_after_outlasts_heartbeats(self) -> WorkerSettings:
        # A live worker must get at least two heartbeats in before it may be declared dead.
        if self.worker_lost_after < 2 * self.heartbeat_interval:
            raise ValueError(
                f"worker_lost_after ({self.worker_lost_after:g}s) must be at least twice"
                f" heartbeat_interval ({self.heartbeat_interval}s)"
            )
        return self

    @property
    def settle_after_outage(self) -> float:
        """Seconds after Redis comes back during which the reaper judges no worker by its silence
        and no job by its absence from the queues.

        Liveness keys may have expired while nobody could renew them (live workers renew
        theirs within a heartbeat), and every loop is still waiting out its backoff (at most
        ``LONGEST_RETRY_SECONDS``) before it takes up the job it held.
        """
        return LONGEST_RETRY_SECONDS + self.heartbeat_interval


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
