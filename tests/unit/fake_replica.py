"""A replica without Raft for driving leader-side controllers in tests: the real state machine, commands stamped
with an injected (fake) clock's wall time and applied at once, every proposal kept in order."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Callable, TypeVar

from raftctl.clock import Clock
from raftctl.node.autoscale import Metrics
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import Result, apply
from raftctl.statemachine.state import State

T = TypeVar("T")


class FakeReplica:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.state = State()
        self.metrics = Metrics(clock)
        self.proposed: list[c.Command] = []
        self.digest_inflight: Any = None   # as Replica's (raftctl/node/snapshot.state_digest)

    def read(self, fn: Callable[[State], T]) -> T:
        return fn(self.state)

    async def propose(self, cmd: c.Command, timeout: float | None = None) -> Result:
        cmd = dataclasses.replace(cmd, at=self.clock.now_ms())
        self.proposed.append(cmd)
        return apply(self.state, cmd)

    def of(self, kind: type[Any]) -> list[Any]:
        return [x for x in self.proposed if isinstance(x, kind)]


def machine(mid: str) -> c.RegisterMachine:
    return c.RegisterMachine(machine=mid, address="127.0.0.2", fault_domain={}, labels={},
                             resources={"cpu": 2000, "memory": 1 << 30, "pids": 1000}, ports=[31000, 31999],
                             runtime="sim")


async def until(cond: Callable[[], Any], what: str, *, within: float = 10.0, every: float = 0.0) -> None:
    """Yield to the loop (``every`` s at a time) until ``cond()`` holds; ``within`` s of real time is a hang, not
    slowness (by default ``what`` happens on the fake clock)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < within, f"{what} not reached within {within} s"
        await asyncio.sleep(every)


def record_passes(monkeypatch: Any) -> list[list[str] | None]:
    """The ``job_names`` of every scheduling pass the scheduler loop runs from now on (None: a pass over every job);
    each pass still runs the real ``schedule``."""
    from raftctl.node import scheduling

    covered: list[list[str] | None] = []
    real = scheduling.schedule

    def recording(*a: Any, job_names: list[str] | None = None, **k: Any) -> Any:
        covered.append(job_names)
        return real(*a, job_names=job_names, **k)
    monkeypatch.setattr(scheduling, "schedule", recording)
    return covered



async def tick(monitor: Any) -> None:
    """One failover tick and the MachineDown proposals it started, answered: the monitor runs them beside its next
    ticks (FailoverMonitor.tick returns them)."""
    await asyncio.gather(*await monitor.tick())
