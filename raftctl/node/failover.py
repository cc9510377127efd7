"""Failover monitor: heartbeat TTLs in the leader's memory; only transitions are committed.

``judge`` is the pure decision; :class:`FailoverMonitor` is the thin driver the
leader runs. A new leader re-arms every TTL (everyone gets a fresh TTL) before
judging anybody. When more than ``max_silent_fraction`` of the up machines are
silent at once (more likely a partition than a fire), machines are declared
down at most one per ``mass_interval_s``, and the guard shows in status.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from raftctl.clock import SYSTEM, Clock
from raftctl.statemachine import commands as c

log = logging.getLogger("raftctl.failover")


@dataclass
class FailoverConfig:
    ttl_s: float = 3.0
    interval_s: float = 1.0            # what agents are told to heartbeat at
    max_silent_fraction: float = 0.5
    mass_interval_s: float = 10.0
    min_machines_for_guard: int = 3


@dataclass
class Verdict:
    down: list[str] = field(default_factory=list)
    guard_active: bool = False
    silent: list[str] = field(default_factory=list)


def judge(up: list[str], last_seen: dict[str, float], now: float, cfg: FailoverConfig,
          last_mass_down: float | None) -> Verdict:
    """Which up machines to declare down now (pure)."""
    silent = sorted(m for m in up if now - last_seen.get(m, now) > cfg.ttl_s)
    if not silent:
        return Verdict()
    guard = (len(up) >= cfg.min_machines_for_guard and len(silent) / len(up) > cfg.max_silent_fraction)
    if not guard:
        return Verdict(down=silent, silent=silent)
    if last_mass_down is not None and now - last_mass_down < cfg.mass_interval_s:
        return Verdict(guard_active=True, silent=silent)
    # the longest-silent first, one at a time
    oldest = min(silent, key=lambda m: (last_seen.get(m, now), m))
    return Verdict(down=[oldest], guard_active=True, silent=silent)


class FailoverMonitor:
    """Heartbeat ages on ``clock``'s monotonic seconds; ``judge`` every ``min(0.2, ttl / 5)`` seconds."""

    def __init__(self, replica: Any, epoch: int, cfg: FailoverConfig, clock: Clock = SYSTEM) -> None:
        self.replica = replica
        self.epoch = epoch
        self.cfg = cfg
        self.clock = clock
        now = clock.monotonic()
        # re-arm: every machine gets a fresh TTL from the moment this leader starts
        self.last_seen: dict[str, float] = {m: now for m in replica.read(lambda s: list(s.machines))}
        self.last_mass_down: float | None = None
        self.guard_active = False
        self.silent: list[str] = []

    def heartbeat(self, machine: str) -> None:
        self.last_seen[machine] = self.clock.monotonic()

    async def run(self) -> None:
        while True:
            await self.clock.sleep(min(0.2, self.cfg.ttl_s / 5))
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("failover tick failed: %s", exc)

    async def tick(self) -> None:
        now = self.clock.monotonic()
        machines = self.replica.read(lambda s: {m: v["status"] for m, v in s.machines.items()})
        up = [m for m, st in machines.items() if st == "up"]
        for m in machines:
            self.last_seen.setdefault(m, now)
        verdict = judge(up, self.last_seen, now, self.cfg, self.last_mass_down)
        self.guard_active, self.silent = verdict.guard_active, verdict.silent
        for m in verdict.down:
            silent_for = now - self.last_seen.get(m, now)
            res = await self.replica.propose(c.MachineDown(
                machine=m, epoch=self.epoch,
                reason=f"no heartbeat for {silent_for:.1f}s (ttl {self.cfg.ttl_s:g}s)"
                + ("; mass-loss guard rate-limits re-placement" if verdict.guard_active else "")))
            if res.ok:
                log.warning("machine %s declared down: %d placements lost", m, len(res.value.get("lost", [])))
                if verdict.guard_active:
                    self.last_mass_down = now

    def status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {"ttl_s": self.cfg.ttl_s, "guard_active": self.guard_active, "silent": self.silent,
                "heartbeat_age_s": {m: round(now - t, 2) for m, t in sorted(self.last_seen.items())}}
