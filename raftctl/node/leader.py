"""Leader-only work, switched on and off together on leadership change.

When this replica becomes Raft leader it commits ``claim_epoch(term)``; once
that is applied the controllers start, each carrying the epoch so the state
machine rejects anything a deposed leader still proposes. When leadership is
lost (or the epoch moves on) every controller is cancelled at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from raftctl.clock import SYSTEM, Clock
from raftctl.node.failover import FailoverConfig, FailoverMonitor
from raftctl.statemachine import commands as c

log = logging.getLogger("raftctl.leader")

ControllerFactory = Callable[[Any, int], Any]  # (replica, epoch) -> object with async run()


async def every(seconds: float, tick: Callable[[], Any], name: str, clock: Clock = SYSTEM) -> None:
    """Run a controller's ``tick`` forever, ``seconds`` apart on ``clock``; a failed tick is logged and the loop
    goes on (level-triggered)."""
    while True:
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s tick failed: %s: %s", name, type(exc).__name__, exc)
        await clock.sleep(seconds)


class Leadership:
    def __init__(self, replica: Any, failover: FailoverConfig, factories: list[ControllerFactory],
                 clock: Clock = SYSTEM) -> None:
        self.replica = replica
        self.clock = clock
        self.failover_cfg = failover
        self.factories = factories
        self.epoch: int | None = None
        self.failover: FailoverMonitor | None = None
        self.controllers: list[Any] = []
        self._tasks: list[asyncio.Task] = []
        self._last_leader: str | None = None
        self._leader_moved = asyncio.Event()  # set, and replaced by a fresh one, when the known leader changes

    @property
    def active(self) -> bool:
        return self.epoch is not None

    def leader_moved(self, leader: str | None) -> asyncio.Event:
        """An event set once the leader differs from ``leader`` (set already if it differs now)."""
        event = self._leader_moved
        if leader != self._last_leader:
            event = asyncio.Event()
            event.set()
        return event

    async def run(self) -> None:
        while True:
            await self.clock.sleep(0.05)
            try:
                await self._step()
            except asyncio.CancelledError:
                self._stop()
                raise
            except Exception as exc:
                log.warning("leadership step failed: %s", exc)
                await self.clock.sleep(0.2)

    async def _step(self) -> None:
        rs = self.replica.raft.raft_status()
        if rs["leader"] != self._last_leader:
            if self._last_leader is not None and self.replica.proposer is not None:
                self.replica.proposer.leader_changed(rs["leader"])
            self._last_leader = rs["leader"]
            self._leader_moved.set()
            self._leader_moved = asyncio.Event()
        leading = rs["state"] == "leader"
        state_epoch = self.replica.read(lambda s: s.epoch)
        if self.epoch is not None and (not leading or state_epoch != self.epoch or rs["term"] != self.epoch):
            log.info("leadership of epoch %s ended", self.epoch)
            self._stop()
        if leading and self.epoch is None:
            term = rs["term"]
            if state_epoch < term:
                res = await self.replica.propose(c.ClaimEpoch(term=term, node=self.replica.cfg.node_id), timeout=3.0)
                if not res.ok:
                    return
            if self.replica.read(lambda s: s.epoch) == term and self.replica.raft.raft_status()["term"] == term:
                self._start(term)

    def _start(self, epoch: int) -> None:
        self.epoch = epoch
        self.failover = FailoverMonitor(self.replica, epoch, self.failover_cfg, clock=self.clock)
        self.controllers = [self.failover] + [f(self.replica, epoch) for f in self.factories]
        self._tasks = [asyncio.create_task(ctl.run(), name=type(ctl).__name__) for ctl in self.controllers]
        log.info("leading epoch %d: %s", epoch, ", ".join(type(ctl).__name__ for ctl in self.controllers))

    def _stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        self.controllers = []
        self.failover = None
        self.epoch = None

    def heartbeat(self, machine: str, sent_ms: int | None = None) -> tuple[float, float] | None:
        """Note a heartbeat (``sent_ms``: the agent's clock when it sent it): the interval and TTL to answer it
        with, or None when this replica does not lead."""
        if self.failover is None:
            return None
        return self.failover.heartbeat(machine, sent_ms)

    def status(self) -> dict[str, Any]:
        # each attribute read once: a /metrics scrape calls this on a worker thread while leadership may end
        failover, controllers = self.failover, self.controllers
        out: dict[str, Any] = {"epoch": self.epoch, "controllers": [type(c_).__name__ for c_ in controllers]}
        if failover is not None:
            out["failover"] = failover.status()
        for ctl in controllers:
            if ctl is not failover and hasattr(ctl, "status"):
                out[type(ctl).__name__] = ctl.status()
        return out
