"""The sim driver: containers that exist only in memory, with scripted behaviour.

One process can play thousands of machines (like kubemark's hollow nodes). Time comes
from an injected clock; what each container does comes from a ``SimScript`` chosen by
container id, then job name, then the default.

The driver is in memory, so the agent calls it on the event loop (``inline``: no worker thread,
supervisor.call_driver), and a supervisor need not poll a container whose status can change only through
a driver call (``quiet``): it awaits ``next_change`` instead, which the next create, start, kill, stop or
remove of that container resolves. A simulated machine then costs nothing between its own requests.
"""
from __future__ import annotations

import asyncio
import itertools
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from raftctl.agent.runtime.base import ContainerSpec, Driver, Observed, RuntimeError_, Stats


@dataclass
class SimScript:
    start_delay_s: float = 0.0              # created -> running takes this long after start()
    exit_after_s: float | None = None       # exits this long after it started running
    exit_code: int = 0
    oom_after_s: float | None = None        # OOM-killed this long after running
    unhealthy_after_s: float | None = None  # exec/health checks fail from then on
    healthy: bool = True
    cpu_millis: int = 100                   # what stats() reports as usage
    memory_bytes: int = 32 << 20


@dataclass
class SimContainer:
    spec: ContainerSpec
    pid: int
    created_at: float
    started_at: float | None = None
    ended: tuple[str, int, float] | None = None      # (state, code, at)


@dataclass
class SimWorld:
    """What outlives one SimDriver object (a re-created driver adopts from it)."""
    containers: dict[str, SimContainer] = field(default_factory=dict)
    pids: itertools.count = field(default_factory=lambda: itertools.count(1000))
    # container id -> futures of the supervisors waiting for its next change (next_change)
    waiters: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)


class SimDriver(Driver):
    name = "sim"
    isolated = False
    inline = True   # in memory and never blocking: called on the event loop, not on a worker thread
    rotates_logs = False   # keeps no logs: no rotation passes between two samples

    def __init__(self, clock: Callable[[], float] = time.monotonic, scripts: dict[str, SimScript] | None = None,
                 default: SimScript | None = None, world: SimWorld | None = None) -> None:
        self.clock = clock
        self.scripts = scripts or {}
        self.default = default or SimScript()
        self.world = world or SimWorld()

    def script(self, c: SimContainer) -> SimScript:
        return self.scripts.get(c.spec.id) or self.scripts.get(c.spec.job) or self.default

    def _get(self, id: str) -> SimContainer:
        c = self.world.containers.get(id)
        if c is None:
            raise RuntimeError_(f"no container {id}")
        return c

    def _changed(self, id: str) -> None:
        """Wake whoever waits for this container's next change (called on the event loop: the driver is inline)."""
        for fut in self.world.waiters.pop(id, ()):
            if not fut.done():
                try:
                    fut.set_result(None)
                except RuntimeError:   # its event loop is closed (a test's): nobody waits any more
                    pass

    def quiet(self, id: str) -> bool:
        """True when the container's status can change only through a driver call: it is missing, created and
        not started, ended, or running with no scripted exit or OOM ahead (a scripted start delay, exit or OOM
        changes it as time passes: those are polled)."""
        c = self.world.containers.get(id)
        if c is None or c.ended or c.started_at is None:
            return True
        self._settle(c)
        if c.ended:
            return True
        s = self.script(c)
        return self.clock() >= c.started_at and s.exit_after_s is None and s.oom_after_s is None

    def next_change(self, id: str) -> asyncio.Future[None]:
        """A future the next create, start, kill, stop or remove of ``id`` resolves (on the running loop)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.world.waiters.setdefault(id, []).append(fut)
        return fut

    def prepare_image(self, digest: str) -> str:
        return f"/sim/images/{digest}"

    def create(self, spec: ContainerSpec) -> str:
        if spec.id in self.world.containers:
            raise RuntimeError_(f"container {spec.id} already exists")
        self.world.containers[spec.id] = SimContainer(spec, next(self.world.pids), self.clock())
        self._changed(spec.id)
        return spec.id

    def start(self, id: str) -> None:
        c = self._get(id)
        c.started_at = self.clock() + self.script(c).start_delay_s
        self._changed(id)

    def _settle(self, c: SimContainer) -> None:
        now = self.clock()
        if c.ended or c.started_at is None or now < c.started_at:
            return
        s = self.script(c)
        ran = now - c.started_at
        if s.oom_after_s is not None and ran >= s.oom_after_s:
            c.ended = ("oom_killed", 137, c.started_at + s.oom_after_s)
        elif s.exit_after_s is not None and ran >= s.exit_after_s:
            c.ended = ("exited", s.exit_code, c.started_at + s.exit_after_s)

    def status(self, id: str) -> Observed:
        c = self.world.containers.get(id)
        if c is None:
            return Observed("missing")
        self._settle(c)
        if c.ended:
            return Observed(c.ended[0], pid=c.pid, exit_code=c.ended[1], started_at=c.started_at)  # type: ignore[arg-type]
        if c.started_at is None or self.clock() < c.started_at:
            return Observed("created", pid=c.pid)
        return Observed("running", pid=c.pid, started_at=c.started_at)

    def kill(self, id: str, sig: int = signal.SIGKILL) -> None:
        c = self._get(id)
        self._settle(c)
        if not c.ended and c.started_at is not None:
            c.ended = ("exited", 128 + int(sig), self.clock())
            self._changed(id)

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        c = self._get(id)
        self._settle(c)
        if not c.ended:
            c.ended = ("exited", 0, self.clock())
            self._changed(id)
        return self.status(id)

    def healthy(self, id: str) -> bool:
        c = self._get(id)
        if self.status(id).state != "running":
            return False
        s = self.script(c)
        if s.unhealthy_after_s is not None and c.started_at is not None:
            return self.clock() - c.started_at < s.unhealthy_after_s
        return s.healthy

    def stats(self, id: str) -> Stats:
        c = self._get(id)
        s = self.script(c)
        ran = max(0.0, self.clock() - (c.started_at or self.clock()))
        return Stats(cpu_usage_ns=int(ran * s.cpu_millis * 1e6), memory_bytes=s.memory_bytes,
                     memory_limit=c.spec.resources.memory, pids=1 if self.status(id).state == "running" else 0,
                     throttled_ns=0)

    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        if id not in self.world.containers:
            return 127, f"no container {id}"
        return (0, "ok\n") if self.healthy(id) else (1, "unhealthy\n")

    def list_existing(self) -> list[str]:
        return sorted(self.world.containers)

    def spec_of(self, id: str) -> ContainerSpec | None:
        c = self.world.containers.get(id)
        return c.spec if c else None

    def remove(self, id: str) -> None:
        if self.world.containers.pop(id, None) is not None:
            self._changed(id)
