"""The stats pass: each running container's usage for the autoscaler, its log rotation, and the sweep of
the figures of containers that are gone.

Every ``period_s`` of the injected clock (``every_s``, stretched while the control plane tells a longer
heartbeat interval: ``follow_heartbeat``) the pass asks the driver for each running container's figures (kept on
its ``Supervised`` record for the agent's /metrics), rotates its logs past their size limit, and turns the CPU
counter's growth since the last pass into utilisation of the container's CPU request (1.0: it used all it
asked for). The containers' figures are handed over in one batch, which the agent sends on its next heartbeat
(loop.Agent._offer_stats); a container that is gone is forgotten.
"""
from __future__ import annotations

import logging
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
"""The longest a stretched pass waits: the autoscaler reads the samples of its last 15 s (SAMPLE_WINDOW_MS)."""


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

    def follow_heartbeat(self, interval_s: float) -> None:
        """Pass at most once per ``HEARTBEATS_PER_PASS`` heartbeats of ``interval_s`` (the interval the control
        plane told: the samples ride on heartbeats, and a leader of the previous release takes them in a request
        of their own, so they slow down with the heartbeats and never cost more requests than they), never more
        often than ``every_s`` nor less often than ``STATS_MAX_EVERY_S``."""
        self.period_s = min(max(self.every_s, STATS_MAX_EVERY_S), max(self.every_s, HEARTBEATS_PER_PASS * interval_s))

    async def run(self, send: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> None:
        """Sample every ``period_s`` forever; ``send`` the figures when there are any (a failed send is dropped:
        the next pass has fresher figures)."""
        while True:
            await self.clock.sleep(self.period_s)
            out = await self.sample()
            if out:
                try:
                    await send(out)
                except Exception as exc:
                    log.debug("stats report failed: %s", exc)
