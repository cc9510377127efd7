"""The leader's scheduler loop: observe committed state, compute a plan (pure), propose it.

Triggered by changes to jobs, machines or placements, plus a periodic resync.
The plan carries the state index it was computed at and this leader's epoch;
the state machine re-checks every placement and rejects what no longer fits,
and the next pass recomputes. Safe to kill at any line: the log is the truth.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from raftctl.scheduler import schedule
from raftctl.statemachine import commands as c

log = logging.getLogger("raftctl.scheduler")

RESYNC_S = 5.0


def _inputs(s: Any) -> tuple[dict, dict, dict, int]:
    # shallow copies under the apply lock (cheap); the pure scheduler runs outside it
    return dict(s.jobs), dict(s.placements), dict(s.machines), s.index


def _watch_key(s: Any) -> int:
    return max(s.table_index["jobs"], s.table_index["machines"], s.table_index["placements"])


def plan_command(plan: Any, jobs: dict[str, dict], epoch: int) -> c.Plan | None:
    """The Plan command for a scheduler plan, or None when it changes nothing."""
    place = [{"job": n.job, "version": n.version, "replica": n.replica, "machine": n.machine,
              "resources": dict(n.resources), "ports": dict(n.ports)} for n in plan.place]
    stop = [{"placement": pid, "reason": reason} for pid, reason in plan.stop]
    stop += [{"placement": pid, "reason": f"preempted by higher-priority job {by}"} for pid, by in plan.preempt]
    pending = {}
    for name, job in jobs.items():
        want = plan.pending.get(name) or ""
        if (job.get("pending_reason") or "") != want:
            pending[name] = want
    if not place and not stop and not pending:
        return None
    return c.Plan(epoch=epoch, index=plan.index, place=place, stop=stop, pending=pending)


class SchedulerLoop:
    def __init__(self, replica: Any, epoch: int) -> None:
        self.replica = replica
        self.epoch = epoch
        self.passes = 0
        self.placed = 0
        self.rejected = 0
        self.last_pass_ms = 0.0

    async def run(self) -> None:
        seen = -1
        last_resync = 0.0
        loop = asyncio.get_running_loop()
        while True:
            key = self.replica.read(_watch_key)
            if key == seen and time.monotonic() - last_resync < RESYNC_S:
                await self.replica.wait_for(_watch_key, key, 1.0)
                continue
            seen, last_resync = key, time.monotonic()
            jobs, placements, machines, index = self.replica.read(_inputs)
            t0 = time.perf_counter()
            plan = await loop.run_in_executor(None, lambda: schedule(jobs, placements, machines, index=index,
                                                                     now=int(time.time() * 1000)))
            self.last_pass_ms = (time.perf_counter() - t0) * 1000
            self.passes += 1
            cmd = plan_command(plan, jobs, self.epoch)
            if cmd is None:
                continue
            try:
                res = await self.replica.propose(cmd, timeout=10.0)
            except Exception as exc:
                log.warning("plan not committed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            if not res.ok:
                log.info("plan rejected: %s", res.error)
                if res.error and res.error.code == "stale_epoch":
                    return  # leadership is over; Leadership stops us
                continue
            self.placed += len(res.value.get("placed", []))
            self.rejected += len(res.value.get("rejected", []))
            if res.value.get("rejected"):
                seen = -1  # recompute at once against the newer state

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "placed": self.placed, "rejected": self.rejected,
                "last_pass_ms": round(self.last_pass_ms, 2)}
