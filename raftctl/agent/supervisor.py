"""One container's supervisor: start it, watch it, health-check it, restart it with backoff, report.

Built on the tested parts: the restart decision and the delays come from ``backoff.py``, the probes and the
failure threshold from ``health.py``. Time is read and awaited only through an injected ``raftctl.clock.Clock`` (``monotonic()`` and
``async sleep(s)``), so a test drives a supervisor through crashes, backoffs and health checks without sleeping.
The agent (``loop.py``) owns the containers and the stops; a supervisor owns one ``Supervised`` record's run loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Protocol, runtime_checkable

from raftctl.agent.backoff import Backoff, should_restart
from raftctl.agent.health import HealthMonitor, HealthPolicy, Probe, probe_for
from raftctl.agent.runtime.base import ContainerSpec, Driver, Observed, RuntimeError_
from raftctl.agent.trace import OFF, StartTrace
from raftctl.clock import SYSTEM, Clock
from raftctl.statemachine.records import (REASON_MAX, HealthState, JobSpec, PlacementState, ReportUpdate,
                                          container_port)

log = logging.getLogger("raftctl.agent")

DRIVER_CALL_S = 30.0    # bound on a driver call (runc and the process driver may hang on a wedged container)
PREPARE_S = 900.0       # bound on pulling and unpacking an image before a start
UNHEALTHY_STOP_S = 5.0  # SIGTERM to SIGKILL when a container failed its health checks
POLL_S = 0.1            # status poll of a container without a health check (with one: min(0.25, interval))
STATUS_EVERY_S = 1.0    # with the init's exit watched (ExitWatch), the status is asked at most this often besides
STARTING_REPORT_S = 1.0  # a start still under way after this long is reported "starting" (an image pull, a slow
                         # runc); a quicker one goes from pending to its first running report: one commit per start
                         # less, and none in the middle of the start (issue 15)


@runtime_checkable
class ChangeWaiter(Protocol):
    """An in-memory driver that knows when a container's status can change (the sim driver)."""

    def quiet(self, id: str) -> bool: ...   # its status changes only through a driver call

    def next_change(self, id: str) -> Awaitable[None]: ...   # resolved by the next call that changes it


class Metrics(Protocol):
    def exited(self, job: str, oom: bool) -> None: ...

    def restarted(self, job: str) -> None: ...

    def health_checked(self, kind: str, ok: bool, seconds: float) -> None: ...




class ExitWatch:
    """A container's init exit as the event loop sees it: the driver's ``exit_fd`` (a pidfd), read by the loop, sets
    ``fired`` when the init exits. Waits are in the loop's time (the driver's own clock: its pidfd is real)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.fired = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._fire)

    @classmethod
    async def open(cls, driver: Driver, cid: str) -> "ExitWatch | None":
        """The watch of ``cid``'s init, or None if the driver gives no descriptor (then the supervisor polls)."""
        exit_fd = getattr(driver, "exit_fd", None)   # a driver written before Driver.exit_fd has none
        if exit_fd is None:
            return None
        try:
            fd = await call_driver(exit_fd, cid)
        except Exception as exc:   # a driver's failure here only means polling, as before
            log.debug("container %s: no exit descriptor (%s); polling its status", cid, exc)
            return None
        return cls(fd) if isinstance(fd, int) else None

    def _fire(self) -> None:
        self._loop.remove_reader(self.fd)
        self.fired.set()

    async def wait(self, seconds: float) -> None:
        """Until the init exits or ``seconds`` have passed."""
        if not self.fired.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.fired.wait()

    def close(self) -> None:
        if not self.fired.is_set():
            self._loop.remove_reader(self.fd)
        os.close(self.fd)


def update(placement: str, state: PlacementState, *, health: HealthState | Literal[""] = "",
           exit_code: int | None = None, reason: str = "") -> ReportUpdate:
    """One observed transition, as the record the agent reports (the reason cut to what the record holds)."""
    return ReportUpdate(placement=placement, state=state, health=health, exit_code=exit_code,
                        reason=reason[:REASON_MAX])


@dataclass
class Supervised:
    placement: dict[str, Any]    # as assigned, its "spec" a JobSpec record (converge.typed); {"id"} while adopted
    task: asyncio.Task | None = None
    restarts: int = 0
    health: str = "unknown"
    state: str = "pending"
    pid: int | None = None
    stopping: bool = False
    stats: dict[str, int] | None = None      # the last stats pass's figures (for the agent's /metrics)
    evict: str | None = None                 # set by the disk pressure check (diskguard.py): stop it, with this reason
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held while the supervisor starts it


class DriverTimeout(RuntimeError_):
    """A driver call did not return within its bound (its worker thread is abandoned, not killed)."""


def is_inline(driver: object) -> bool:
    """An in-memory driver (``inline = True``: the sim driver) answers at once and never blocks: the agent calls
    it on the event loop. A real driver (runc, process) shells out or waits, so its calls go to a worker thread."""
    return getattr(driver, "inline", False) is True


async def call_driver(fn: Callable[..., Any], *args: Any, bound: float = DRIVER_CALL_S, inline: bool | None = None,
                      **kw: Any) -> Any:
    """Run a synchronous driver call on a worker thread, giving up on it after ``bound`` seconds; a call of an
    inline driver (``inline``, default: the method's driver says so, ``is_inline``) runs right here on the
    event loop, unbounded (a thread hop per call was 64 % of a simulated fleet's CPU, issue 15).

    ``asyncio.timeout``, not ``wait_for``: Python 3.11's wait_for swallows a cancellation that arrives once the
    call has returned but before the waiting task resumed (160 of 173 cancels of a 1 ms call, measured), so a
    cancelled supervisor went on running; it also costs a task per call, and a supervisor calls status ten times
    a second. A TimeoutError the call itself raised stays what it is."""
    if inline if inline is not None else is_inline(getattr(fn, "__self__", None)):
        return fn(*args, **kw)
    bounded = asyncio.timeout(bound)
    try:
        async with bounded:
            return await asyncio.to_thread(fn, *args, **kw)
    except TimeoutError:
        if not bounded.expired():
            raise
        raise DriverTimeout(f"{getattr(fn, '__name__', fn)}{tuple(args)!r} did not return in {bound:g}s") from None


def jittered(seconds: float, rng: random.Random) -> float:
    """±20 % so that containers crashing together do not restart together."""
    return seconds * (0.8 + 0.4 * rng.random())


class Supervisor:
    """Runs one placement's container until it is stopped (``sup.stopping``) or its restart policy gives up.

    ``container_spec(placement)`` builds the driver's spec (on a worker thread: it may pull an image);
    ``host`` is where http/tcp checks of a host-network container go."""

    def __init__(self, sup: Supervised, driver: Driver, *, report: Callable[[ReportUpdate], None], metrics: Metrics,
                 container_spec: Callable[[dict[str, Any]], ContainerSpec], host: str,
                 clock: Clock | None = None, rng: random.Random | None = None, trace: StartTrace = OFF) -> None:
        self.sup = sup
        self.driver = driver
        self.report = report
        self.metrics = metrics
        self.container_spec = container_spec
        self.host = host
        self.clock: Clock = clock or SYSTEM
        self.rng = rng or random.Random()
        self.trace = trace
        self.inline = is_inline(driver)
        # an in-memory driver that can say a container changes only through its own calls, and wake on the next
        self._changes: ChangeWaiter | None = driver if self.inline and isinstance(driver, ChangeWaiter) else None

    async def run(self, adopted: bool = False, *, fresh: bool = False) -> None:
        """``fresh``: the driver held no container of this id when the agent decided to start it, so the first
        start skips removing what an earlier run left (a ``runc delete`` on the start's path); every restart
        removes first."""
        sup, p = self.sup, self.sup.placement
        spec: JobSpec = p["spec"]
        cid, policy = p["id"], spec.restart.policy
        backoff = Backoff.from_spec(spec.restart)
        while not sup.stopping:
            if not adopted:
                try:
                    if not await self._start(remove=not fresh):
                        return
                except Exception as exc:
                    log.warning("container %s failed to start: %s", cid, exc)
                    self.report(update(cid, "exited", exit_code=None, reason=f"start failed: {exc}"))
                    if not should_restart(policy, None):
                        return
                    await self.clock.sleep(jittered(backoff.on_exit(self.clock.monotonic()), self.rng))
                    continue
                finally:
                    fresh = False
            adopted = False
            backoff.on_start(self.clock.monotonic())
            sup.state, sup.health = "running", "unknown"
            monitor = self._monitor()
            if monitor is not None and monitor.tracker.due(self.clock.monotonic()):
                # the first check right after the start (no grace): a container that already answers is reported
                # running and healthy at once (its health change reports it), not running, then healthy one report
                # commit later
                await monitor.check_once()
            if sup.health == "unknown":   # else the check's health change reported it running
                self.report(update(cid, "running", health="healthy" if spec.health is None else "unknown"))
            obs = await self._watch(monitor)
            if sup.stopping:
                return
            oom = obs.state == "oom_killed"
            sup.state = "oom_killed" if oom else "exited"
            self.metrics.exited(p["job"], oom=oom)
            self.report(update(cid, "oom_killed" if oom else "exited", exit_code=obs.exit_code, reason=obs.reason or ""))
            if sup.evict is not None:
                # evicted for disk pressure: its writable layers go now, not at its restart (after the backoff, or
                # never under its policy), so the space is back before the next check
                sup.evict = None
                try:
                    await call_driver(self.driver.remove, cid)
                except Exception as exc:   # the restart removes it again; never the end of this supervisor
                    log.warning("container %s: evicted, but its removal failed: %s", cid, exc)
            if not should_restart(policy, obs.exit_code, oom_killed=oom):
                return
            delay = backoff.on_exit(self.clock.monotonic())
            sup.restarts += 1
            self.metrics.restarted(p["job"])
            await self.clock.sleep(jittered(delay, self.rng))

    async def _start(self, remove: bool = True) -> bool:
        """Create and start the container (removing what an earlier run left first, if ``remove``); False if a
        stop came first (the supervisor then ends)."""
        sup, p = self.sup, self.sup.placement
        cid = p["id"]
        # the loop's own timer, not self.clock: a wall-time courtesy to whoever watches a slow start, which a
        # test's fake clock should not see as a sleep
        starting = asyncio.get_running_loop().call_later(STARTING_REPORT_S, self.report, update(cid, "starting"))
        try:
            # A stop waits for this block: a stop that ran beside it would find nothing to stop and the start
            # would then leave the container running, supervised by no one.
            async with sup.start_lock:
                if sup.stopping:
                    return False
                self.trace(cid, "prepare")
                cs = await call_driver(self.container_spec, p, bound=PREPARE_S, inline=self.inline)
                self.trace(cid, "prepared")
                if remove:
                    await call_driver(self.driver.remove, cid)
                await call_driver(self.driver.create, cs)
                self.trace(cid, "created")
                if sup.stopping:
                    return False
                await call_driver(self.driver.start, cid)
                self.trace(cid, "started")
        finally:
            starting.cancel()
        return not sup.stopping

    def _monitor(self) -> HealthMonitor | None:
        """The health check of a run that starts now (None without one)."""
        h = self.sup.placement["spec"].health
        if h is None:
            return None
        policy = HealthPolicy.from_spec(h)
        return HealthMonitor(policy, self._measured(policy, self._probe(policy)), self._health_changed,
                             clock=self.clock.monotonic)

    async def _watch(self, monitor: HealthMonitor | None) -> Observed:
        """Poll the container and run its health check; return when it is no longer running (or a stop began).

        The first check is due when the health grace has passed, then one every interval; the threshold's
        failure stops the container (it ends "exited" with the reason) for the restart policy to judge. With a
        driver that gives the init's exit as a file descriptor (``exit_fd``: the runc driver's pidfd) the status
        is asked when that turns readable, and at most every STATUS_EVERY_S besides, not on every poll: 20
        containers checked every 100 ms were 200 status calls a second, each on a worker thread, and the
        agent's starts slowed with every container it ran (bench/container_start.py: 3 -> 16 ms to create the
        bundle of the 1st -> 21st)."""
        cid = self.sup.placement["id"]
        exits: ExitWatch | None = None
        asked, opened = float("-inf"), self.inline   # an inline driver's containers change only through its calls
        try:
            while True:
                if exits is None or exits.fired.is_set() or self.sup.stopping or \
                        self.clock.monotonic() - asked >= STATUS_EVERY_S:
                    try:
                        obs: Observed = await call_driver(self.driver.status, cid)
                    except DriverTimeout as exc:
                        log.warning("container %s: %s", cid, exc)
                        continue
                    asked = self.clock.monotonic()
                    if obs.state != "running" or self.sup.stopping:
                        return obs
                    if not opened:   # once per run: a driver without descriptors is not asked again
                        opened, exits = True, await ExitWatch.open(self.driver, cid)
                if self.sup.evict is not None:
                    log.warning("%s %s: stopping it", cid, self.sup.evict)
                    return await self._stopped_for(cid, self.sup.evict)
                if monitor is not None:
                    if monitor.tracker.due(self.clock.monotonic()):
                        await monitor.check_once()
                    if monitor.tracker.status == "unhealthy":
                        failures = monitor.tracker.consecutive_failures
                        log.warning("%s failed %d health checks: restarting", cid, failures)
                        return await self._stopped_for(cid, f"failed {failures} health checks")
                # (once the exit fired, status is polled as without a descriptor until it says the container ended)
                watching = exits if exits is not None and not exits.fired.is_set() else None
                if monitor is None:
                    if watching is not None:
                        await watching.wait(STATUS_EVERY_S)
                    else:
                        await self._until_changed(cid)
                else:   # until the next check is due (sooner while a starting container's check is retried)
                    wait = monitor.tracker.next_at - self.clock.monotonic()
                    pause = min(0.25, monitor.policy.interval_s, max(0.005, wait))
                    if watching is not None:
                        await watching.wait(pause)
                    else:
                        await self.clock.sleep(pause)
        finally:
            if exits is not None:
                exits.close()

    async def _stopped_for(self, cid: str, reason: str) -> Observed:
        """Stop the container the supervisor itself ends (failed health checks, an eviction; SIGKILL after
        UNHEALTHY_STOP_S) and say how it ended, with ``reason``: it is reported "exited" (or "oom_killed"), whatever
        status says now."""
        await call_driver(self.driver.stop, cid, UNHEALTHY_STOP_S)
        obs: Observed = await call_driver(self.driver.status, cid)
        obs.reason = reason
        return obs

    async def _until_changed(self, cid: str) -> None:
        """Until the container's status may differ: POLL_S, or, for an inline driver whose container can change
        only through a driver call (``ChangeWaiter.quiet``), until that call (nothing runs in between: the
        status was read on this turn of the loop). 100,000 simulated containers polled every POLL_S were a
        million wake-ups a second; waiting, a running one costs nothing."""
        if self._changes is not None and self._changes.quiet(cid):
            await self._changes.next_change(cid)
        else:
            await self.clock.sleep(POLL_S)

    def _health_changed(self, status: HealthState) -> None:
        self.sup.health = status
        self.report(update(self.sup.placement["id"], "running", health=status))

    def _probe(self, policy: HealthPolicy) -> Probe:
        p = self.sup.placement
        bridge = p["spec"].network == "bridge"
        addr = str(p.get("address")).split("/")[0] if bridge else self.host
        try:
            ports = dict(p.get("ports") or {})
            if bridge:   # a bridge container listens on each port's `to` in its namespace (records.container_port)
                ports.update({pt.name: container_port(pt, ports[pt.name]) for pt in p["spec"].ports if pt.name in ports})
            return probe_for(policy, self.driver, p["id"], addr, ports)
        except ValueError as exc:   # a spec stored before its health check was validated: it fails, never crashes
            log.warning("placement %s: %s; the check fails", p["id"], exc)

            async def failing() -> bool:
                return False
            return failing

    def _measured(self, policy: HealthPolicy, probe: Probe) -> Probe:
        async def measured() -> bool:
            started = self.clock.monotonic()
            ok = await probe()
            self.metrics.health_checked(policy.type, ok, self.clock.monotonic() - started)
            if self.sup.health != "healthy":
                self.trace(self.sup.placement["id"], "probe_ok" if ok else "probe_failed")
            return ok
        return measured
