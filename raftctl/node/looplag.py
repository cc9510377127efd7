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
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("raftctl.looplag")

__all__ = ["BUCKETS", "HELD_S", "PERIOD_S", "LoopLag"]

PERIOD_S = 0.1
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the histogram's buckets; a lag above the last one counts in +Inf only."""
HELD_S = 2.0
"""A loop that has not woken the task for this long past its time is logged, with every thread's stack."""


class LoopLag:
    """Real time, never an injected clock: what it measures is the real loop (a fake clock's sleep returns at
    once, which would make this task spin)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)   # per bucket, not cumulative; the last one is past every bound
        self.sum = 0.0
        self.worst = 0.0
        self.due = 0.0               # when the task asked to wake next (0: not running)
        self.loop_thread: int | None = None
        self.held_reports = 0        # held loops logged with their stacks

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
        """Wake every PERIOD_S and record how late; a watchdog thread logs the stacks of a loop held past
        HELD_S (once per held stretch), which names what holds it: the loop thread's own code, or another
        thread that has the GIL (the Raft tick thread, a scheduler pass)."""
        self.loop_thread = threading.get_ident()
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(stop,), name="loop watchdog", daemon=True)
        watchdog.start()
        try:
            while True:
                self.due = time.monotonic() + PERIOD_S
                await asyncio.sleep(PERIOD_S)
                self.observe(time.monotonic() - self.due)
        finally:
            stop.set()

    def _watch(self, stop: threading.Event) -> None:
        reported = 0.0
        while not stop.wait(HELD_S / 4):
            due = self.due
            held = time.monotonic() - due
            if due and held > HELD_S and due != reported:
                reported = due
                self.held_reports += 1
                log.warning("event loop held %.1fs past its time; threads:\n%s", held, stacks(self.loop_thread))


def stacks(loop_thread: int | None, depth: int = 8) -> str:
    """Every thread's innermost ``depth`` frames, the event loop's thread first."""
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sys._current_frames()
    order = sorted(frames, key=lambda tid: tid != loop_thread)
    out = []
    for tid in order:
        if tid == threading.get_ident():
            continue          # the watchdog itself
        label = "event loop" if tid == loop_thread else names.get(tid, str(tid))
        out.append(f"--- {label}\n" + "".join(traceback.format_stack(frames[tid])[-depth:]))
    return "".join(out)
