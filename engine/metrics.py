"""Step durations for Prometheus, counted in Redis as steps finish, for all time.

``/metrics`` must show a histogram that every web process agrees on and that survives
restarts, so it cannot live in a process's memory. The transaction that commits a step's
end (:meth:`engine.store.RunStore.write`) adds the step's duration to one hash
(``Keys.step_durations``) that never expires, in Prometheus' own buckets: a scrape is one
HGETALL, whatever the number of runs. Fields (``wf`` a workflow id, which cannot hold ``|``):

- ``n|wf|type|outcome|i``: steps whose duration fell in bucket ``i`` (``BUCKETS[i]``, or +Inf
  for ``i == len(BUCKETS)``); not cumulative, the exposition sums them;
- ``ms|wf|type|outcome``: the sum of their durations, in milliseconds.

``outcome`` is succeeded or failed; a duration runs from the attempt's start to its end
(a human task measures how long people took). Skipped and cancelled steps are not counted.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.model import Event, EventType, Run, StepStatus

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
_FINISHED = frozenset({EventType.STEP_COMPLETED, EventType.STEP_FAILED})
_COUNTED = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED})


def tally(run: Run, events: Iterable[Event]) -> Counter[str]:
    """What one committed change of ``run`` adds to the step-duration hash."""
    counts: Counter[str] = Counter()
    for event in events:
        if event.type not in _FINISHED or not event.step_id or event.data.get("skipped"):
            continue
        step = run.steps.get(event.step_id)
        if step is None or step.status not in _COUNTED or step.started_at is None or step.finished_at is None:
            continue
        seconds = max((step.finished_at - step.started_at).total_seconds(), 0.0)
        series = f"{run.workflow_id}|{step.type.value}|{step.status.value}"
        counts[f"n|{series}|{bisect.bisect_left(BUCKETS, seconds)}"] += 1
        counts[f"ms|{series}"] += round(seconds * 1000)
    return counts


@dataclass
class Histogram:
    """One series read back: counts per bucket (not cumulative, the last one +Inf) and the sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, +Inf last."""
        running, pairs = 0, []
        for bound, count in zip([*(f"{b:g}" for b in BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            pairs.append((bound, float(running)))
        return pairs


def histograms(fields: Mapping[str, int]) -> dict[tuple[str, str, str], Histogram]:
    """The hash's fields as one histogram per (workflow, step type, outcome)."""
    found: dict[tuple[str, str, str], Histogram] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition("|")
        parts = rest.split("|")
        if kind == "n" and len(parts) == 4 and parts[3].isdigit() and int(parts[3]) <= len(BUCKETS):
            found.setdefault((parts[0], parts[1], parts[2]), Histogram()).counts[int(parts[3])] += value
        elif kind == "ms" and len(parts) == 3:
            found.setdefault((parts[0], parts[1], parts[2]), Histogram()).total_seconds += value / 1000
    return found
