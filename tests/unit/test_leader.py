"""Leadership on a fake clock: the leader claims its epoch, starts its controllers with the injected clock, and
stops them all when leadership is lost; no real time passes."""
from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from raftctl.clock import FakeClock
from raftctl.node.failover import FailoverConfig
from raftctl.node.leader import Leadership, every
from raftctl.statemachine import commands as c

from .fake_replica import FakeReplica, machine, until


class Raft:
    def __init__(self) -> None:
        self.status = {"leader": "n1", "state": "leader", "term": 5}

    def raft_status(self) -> dict[str, Any]:
        return dict(self.status)


async def test_the_leader_claims_its_epoch_and_its_failover_monitor_runs_on_the_same_clock():
    clock = FakeClock()
    r = FakeReplica(clock)
    assert (await r.propose(machine("m1"))).ok
    r.raft, r.cfg, r.proposer = Raft(), SimpleNamespace(node_id="n1"), None
    started: list[int] = []

    class Probe:
        def __init__(self, replica: Any, epoch: int) -> None:
            started.append(epoch)

        async def run(self) -> None:
            await asyncio.Event().wait()

    lead = Leadership(r, FailoverConfig(ttl_s=3.0), [Probe], clock=clock)
    task = asyncio.create_task(lead.run())
    try:
        await until(lambda: lead.active, "leadership")
        assert lead.epoch == 5 and r.state.epoch == 5 and started == [5]
        assert lead.failover is not None and lead.failover.clock is clock
        assert lead.status()["controllers"] == ["FailoverMonitor", "Probe"]
        t0 = clock.monotonic()
        monitor = lead.failover
        await until(lambda: monitor.declaring or r.of(c.MachineDown), "m1 proposed down")
        grace = lead.failover.cfg.leader_grace_s
        assert 3.0 + grace < clock.monotonic() - t0 <= 3.3 + grace   # TTL + grace, on the injected clock
        r.raft.status = {"leader": "n2", "state": "follower", "term": 6}
        await until(lambda: not lead.active, "leadership lost")
        assert lead.failover is None and lead.controllers == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert set(clock.sleeps) <= {0.05, 0.2}           # the leadership loop's and the monitor's passes


async def test_every_runs_a_tick_per_period_of_its_clock_and_survives_a_failed_tick():
    clock = FakeClock()
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(clock.monotonic())
        if len(ticks) == 2:
            raise RuntimeError("one bad pass")
    task = asyncio.create_task(every(0.5, tick, "test", clock))
    try:
        await until(lambda: len(ticks) >= 4, "four ticks")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [t - ticks[0] for t in ticks[:4]] == [0.0, 0.5, 1.0, 1.5]
