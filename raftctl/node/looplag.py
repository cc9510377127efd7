"""How late a replica's event loop runs: a task asks to wake every ``PERIOD_S`` and records how much later it woke.

Every handler, controller tick and commit wake-up of a replica runs on one event loop; when something holds it (a
long computation on the loop, the GIL held by a worker thread, the garbage collector, a machine out of CPU), every
heartbeat answer, failover tick and proposal waits that long. At 10,000 machines failover declarations came in
bursts seconds apart (docs/scaling.md, session 9) and nothing in /metrics could say whether the loop was held:
``raftctl_event_loop_lag_seconds`` (a histogram) and ``raftctl_event_loop_lag_max_seconds`` say it now.
"""
from __future__ import annotations

import asyncio
import bisect
import time

__all__ = ["BUCKETS", "PERIOD_S", "LoopLag"]

PERIOD_S = 0.1
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the histogram's buckets; a lag above the last one counts in +Inf only."""


class LoopLag:
    """Real time, never an injected clock: what it measures is the real loop (a fake clock's sleep returns at
    once, which would make this task spin)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)   # per bucket, not cumulative; the last one is past every bound
        self.sum = 0.0
        self.worst = 0.0

    def observe(self, late: float) -> None:
        late = max(0.0, late)
        self.counts[bisect.bisect_left(BUCKETS, late)] += 1
        self.sum += late
        self.worst = max(self.worst, late)

    def cumulative(self) -> list[tuple[str, int]]:
        """The Prometheus buckets: (upper bound, wake-ups at most that late), ending with +Inf (every one)."""
        out, total = [], 0
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out

    async def run(self) -> None:
        while True:
            asked = time.monotonic() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            self.observe(time.monotonic() - asked)
