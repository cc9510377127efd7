"""The stats pass: each running container's usage for the autoscaler, its log rotation, and the sweep of
the figures of containers that are gone.

Every ``period_s`` of the injected clock (``every_s``, stretched while the control plane tells a longer
heartbeat interval: ``follow_heartbeat``, ``stats_period``) the pass asks the driver for each running container's
figures (kept on its ``Supervised`` record for the agent's /metrics), rotates its logs past their size limit, and
turns the CPU counter's growth since the last pass into utilisation of the container's CPU request (1.0: it used
all it asked for). The containers' figures are handed over in one batch, which the agent sends on its next
heartbeat (loop.Agent._offer_stats); a container that is gone is forgotten.

The samples are never taken more often than heartbeats go (session 28): the newest batch replaces one not sent
yet, so at 30,000 machines (heartbeats every 60 s) five passes in six were thrown away, and the stats pass was
42 % of a fleet process's samples (py-spy). The agent's own /metrics figures of its containers are as old as the
last sample (up to a minute then). The logs are still rotated at least every ``STATS_MAX_EVERY_S``, in passes of
their own between two samples, by drivers that keep logs (``rotates_logs``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Mapping
from typing import Any, Callable

from raftctl.agent.runtime.base import Driver
from raftctl.agent.supervisor import Supervised
from raftctl.agent.supervisor import call_driver as _call
from raftctl.clock import Clock
from raftctl.statemachine.records import JobSpec

log = logging.getLogger("raftctl.agent")

STATS_EVERY_S = 2.0
HEARTBEATS_PER_PASS = 2          # 2 s at the default 1 s heartbeat
STATS_MAX_EVERY_S = 10.0
"""The longest a stretched pass waits while heartbeats go more often (the autoscaler reads the samples of its last
15 s, SAMPLE_WINDOW_MS), and the longest between two log rotations."""


def stats_period(interval_s: float, every_s: float = STATS_EVERY_S) -> float:
    """How often usage is sampled while heartbeats go every ``interval_s`` (pure): every ``HEARTBEATS_PER_PASS``
    heartbeats, at most ``STATS_MAX_EVERY_S`` apart, but never more often than one heartbeat (the samples ride on
    heartbeats and the newest replaces a batch not sent yet: a pass between two heartbeats is work thrown away),
    and never more often than ``every_s``. 1 s -> 2 s, 5 s -> 10 s, 20 s -> 20 s, 60 s -> 60 s."""
    return max(every_s, min(HEARTBEATS_PER_PASS * interval_s, max(STATS_MAX_EVERY_S, interval_s)))


def rotations_per_sample(period_s: float, every_s: float = STATS_EVERY_S) -> int:
    """How many passes one sampling period is cut into so that logs are rotated at least every
    ``STATS_MAX_EVERY_S`` (or ``every_s`` when longer): 1 up to 10 s, 6 at 60 s (pure)."""
    return max(1, math.ceil(period_s / max(every_s, STATS_MAX_EVERY_S) - 1e-9))


class StatsPass:
    def __init__(self, driver: Driver, containers: Mapping[str, Supervised], clock: Clock,
                 every_s: float = STATS_EVERY_S) -> None:
        self.driver = driver
        self.containers = containers
        self.clock = clock
        self.every_s = every_s
        self.period_s = every_s        # every_s, longer while heartbeats are (``follow_heartbeat``)
        self.last: dict[str, tuple[float, int]] = {}   # container -> (clock time, CPU ns) at its last sample

    async def sample(self) -> list[dict[str, Any]]:
        """One pass: the usage of every running container sampled before (a first sample only sets the base)."""
        out = []
        for cid, sup in list(self.containers.items()):
            spec: JobSpec | None = sup.placement.get("spec")
            if sup.state != "running" or spec is None:
                continue
            try:
                st = await _call(self.driver.stats, cid)
                sup.stats = dict(st)
                await _call(self.driver.rotate_logs, cid)  # copy-then-truncate past the size limit
            except Exception:
                continue
            now = self.clock.monotonic()
            prev = self.last.get(cid)
            self.last[cid] = (now, st["cpu_usage_ns"])
            if prev is None or now <= prev[0]:
                continue
            cores = spec.resources.cpu / 1000   # millicores
            util = (st["cpu_usage_ns"] - prev[1]) / 1e9 / (now - prev[0]) / cores
            out.append({"placement": cid, "job": sup.placement["job"], "cpu": round(max(util, 0.0), 4),
                        "memory": st["memory_bytes"]})
        for cid in set(self.last) - set(self.containers):
            del self.last[cid]
        return out

    async def rotate(self) -> None:
        """Rotate the logs of every running container (a pass between two samples); failures are skipped."""
        for cid, sup in list(self.containers.items()):
            if sup.state == "running" and sup.placement.get("spec") is not None:
                try:
                    await _call(self.driver.rotate_logs, cid)
                except Exception:
                    continue

    def follow_heartbeat(self, interval_s: float) -> None:
        """Sample at the period ``stats_period`` gives for ``interval_s``, the interval the control plane told (the
        samples ride on heartbeats, and a leader of the previous release takes them in a request of their own, so
        they slow down with the heartbeats and never cost more requests than they)."""
        self.period_s = stats_period(interval_s, self.every_s)

    async def run(self, send: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> None:
        """Sample every ``period_s`` forever, in ``rotations_per_sample`` passes (the ones between two samples
        rotate logs, when the driver keeps any); ``send`` the figures when there are any (a failed send is
        dropped: the next pass has fresher figures)."""
        since_sample = 0               # passes since the last sample
        while True:
            n = rotations_per_sample(self.period_s, self.every_s)
            await self.clock.sleep(self.period_s / n)
            since_sample += 1
            if since_sample < rotations_per_sample(self.period_s, self.every_s):   # told meanwhile: anew
                if getattr(self.driver, "rotates_logs", True):
                    await self.rotate()
                continue
            since_sample = 0
            out = await self.sample()
            if out:
                try:
                    await send(out)
                except Exception as exc:
                    log.debug("stats report failed: %s", exc)
