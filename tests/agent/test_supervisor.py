"""One container's supervisor on a fake clock and a fake driver: no sleeping, every delay measured exactly.

The fake clock's ``sleep(s)`` moves time forward by ``s`` (trio's MockClock style); the fake driver decides
from that time whether a container still runs and whether its health check passes. Past the clock's horizon
the supervisor is told to stop, so a test runs a supervisor with policy "always" to its end.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from raftctl.agent.runtime.base import ContainerSpec, Observed
from raftctl.agent.supervisor import DriverTimeout, Supervised, Supervisor, call_driver
from raftctl.statemachine.records import ReportUpdate as Report
from tests.agent.conftest import job_spec


class FakeClock:
    def __init__(self, until: float) -> None:
        self.t = 0.0
        self.until = until
        self.on_until: Callable[[], None] = lambda: None
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        if self.t > self.until:
            self.on_until()
        if self.t > self.until + 100:     # a supervisor that ignores its stop fails here instead of spinning
            raise AssertionError(f"the supervisor still runs {self.t - self.until:.0f}s after it was stopped")
        await asyncio.sleep(0)


@dataclass
class Run:
    """One start of the container as the fake driver scripts it."""
    lifetime: float = 1e9            # exits this long after its start...
    exit_code: int = 1               # ... with this code
    oom: bool = False
    healthy_for: float = 1e9         # its health check passes for this long after the start


@dataclass
class FakeDriver:
    clock: FakeClock
    runs: list[Run]
    name: str = "fake"
    starts: list[float] = field(default_factory=list)        # when each run started
    exits_seen: list[float] = field(default_factory=list)    # when a status call first saw each run ended
    stops: list[tuple[float, float]] = field(default_factory=list)  # (time, grace)
    probes: list[float] = field(default_factory=list)        # when each exec check ran
    fail_creates: int = 0
    stopped_at: float | None = None
    calls: list[str] = field(default_factory=list)           # remove/create/start, in order
    on_create: Callable[[], None] = lambda: None

    def run(self) -> Run:
        return self.runs[min(len(self.starts), len(self.runs)) - 1]

    def remove(self, id: str) -> None:
        self.calls.append("remove")

    def create(self, spec: ContainerSpec) -> str:
        self.calls.append("create")
        self.on_create()
        if self.fail_creates:
            self.fail_creates -= 1
            raise OSError("no space left on device")
        return spec.id

    def start(self, id: str) -> None:
        self.calls.append("start")
        self.starts.append(self.clock.monotonic())
        self.stopped_at = None

    def status(self, id: str) -> Observed:
        run, now = self.run(), self.clock.monotonic()
        if self.stopped_at is not None:
            return Observed("exited", exit_code=143)
        if now - self.starts[-1] < run.lifetime:
            return Observed("running", pid=100 + len(self.starts))
        if len(self.exits_seen) < len(self.starts):
            self.exits_seen.append(now)
        return Observed("oom_killed" if run.oom else "exited", exit_code=137 if run.oom else run.exit_code)

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        self.stops.append((self.clock.monotonic(), grace_s))
        self.stopped_at = self.clock.monotonic()
        return Observed("exited", exit_code=143)

    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        now = self.clock.monotonic()
        self.probes.append(now)
        return (0, "") if now - self.starts[-1] < self.run().healthy_for else (1, "")


class Half:
    """An rng whose jitter factor is exactly 1 (0.8 + 0.4 * 0.5)."""

    def random(self) -> float:
        return 0.5


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def exited(self, job: str, oom: bool) -> None:
        self.calls.append(("exited", job, oom))

    def restarted(self, job: str) -> None:
        self.calls.append(("restarted", job))

    def health_checked(self, kind: str, ok: bool, seconds: float) -> None:
        self.calls.append(("health", kind, ok))


def placement(restart: dict[str, Any] | None = None, health: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = job_spec(restart=restart or {"policy": "always", "initial_ms": 100, "max_ms": 2000, "reset_ms": 60_000},
                    health=health)
    return {"id": "w-1", "job": "w", "version": 1, "replica": 0, "ports": {}, "spec": spec}


EXEC_CHECK = {"type": "exec", "command": ["check"], "interval_ms": 1000, "timeout_ms": 500, "failures": 3,
              "grace_ms": 2000}


async def supervise(runs: list[Run], *, until: float, fail_creates: int = 0, adopted: bool = False,
                    rng: Any = None, setup: Callable[[FakeDriver, Supervised], None] | None = None,
                    fresh: bool = False, driver_class: type[FakeDriver] | None = None,
                    **kw: Any) -> tuple[FakeDriver, list[Report], Supervised, Metrics]:
    clock = FakeClock(until)
    driver = (driver_class or FakeDriver)(clock, runs, fail_creates=fail_creates)
    if adopted:
        driver.starts.append(0.0)
    sup = Supervised(placement=placement(**kw))
    clock.on_until = lambda: setattr(sup, "stopping", True)
    if setup:
        setup(driver, sup)
    reports: list[Report] = []
    metrics = Metrics()
    s = Supervisor(sup, driver, report=reports.append, metrics=metrics, host="127.0.0.1", clock=clock,
                   rng=rng or Half(),
                   container_spec=lambda p: ContainerSpec(id=p["id"], job=p["job"], replica=0, image="w:1",
                                                          rootfs="", command=["w"], log_dir="/nonexistent"))
    await asyncio.wait_for(s.run(adopted=adopted, fresh=fresh), 10)
    return driver, reports, sup, metrics


def backoffs(d: FakeDriver) -> list[float]:
    """The wait between seeing each run end and starting the next."""
    return [round(start - seen, 6) for seen, start in zip(d.exits_seen, d.starts[1:])]


async def test_a_crash_is_reported_and_restarted_after_the_backoff():
    d, reports, sup, metrics = await supervise([Run(lifetime=2.0, exit_code=3)], until=2.5)
    assert [(r.state, r.health, r.exit_code) for r in reports[:3]] == [
        ("running", "healthy", None), ("exited", "", 3), ("running", "healthy", None)]   # quick starts: no "starting"
    assert backoffs(d) == [0.1]
    assert sup.restarts == 1 and ("restarted", "w") in metrics.calls and ("exited", "w", False) in metrics.calls


async def test_backoff_doubles_up_to_its_max_and_resets_after_a_long_enough_run():
    runs = [Run(lifetime=1.0)] * 7 + [Run(lifetime=61.0)] + [Run(lifetime=1.0)] * 2
    d, _, sup, _ = await supervise(runs, until=100.0)
    assert backoffs(d)[:10] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0,   # doubling, capped at max (2 s)
                                0.1, 0.2, 0.4]                      # the 61 s run (> reset 60 s): from the start
    assert sup.restarts >= 10


async def test_failed_health_checks_past_the_threshold_restart_the_container():
    d, reports, sup, metrics = await supervise([Run(healthy_for=4.5), Run()], until=20.0, health=EXEC_CHECK)
    # first check when the 2 s grace is over, then one a second; failures at 5, 6, 7 reach the threshold (3)
    assert d.probes[:6] == pytest.approx([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert d.stops[0] == (pytest.approx(7.0), 5.0)
    ended = next(r for r in reports if r.state == "exited")
    assert ended.reason == "failed 3 health checks" and ended.exit_code == 143
    assert d.starts[1] == pytest.approx(7.1)                 # restarted after the initial backoff
    assert sup.restarts == 1
    assert [c for c in metrics.calls if c[0] == "health"][:6] == [("health", "exec", True)] * 3 + [
        ("health", "exec", False)] * 3


async def test_an_evicted_container_is_stopped_reported_removed_at_once_and_restarted_by_its_policy():
    def setup(d: FakeDriver, sup: Supervised) -> None:
        status = d.status

        def marked(id: str) -> Observed:   # the disk pressure check (diskguard.py) marks it 3 s into its first run
            if len(d.starts) == 1 and d.clock.monotonic() >= 3.0 and not d.stops:
                sup.evict = "evicted: disk pressure on the machine"
            return status(id)
        d.status = marked  # type: ignore[method-assign]

    d, reports, sup, _ = await supervise([Run()], until=10.0, health=EXEC_CHECK, setup=setup)
    assert d.stops[0] == (pytest.approx(3.0), 5.0)
    ended = next(r for r in reports if r.state == "exited")
    assert ended.reason == "evicted: disk pressure on the machine" and ended.exit_code == 143
    # removed right after the stop (its /data and writable root give their space back now), then again as every
    # restart does, before the new run's create
    assert d.calls[:7] == ["remove", "create", "start", "remove", "remove", "create", "start"]
    assert d.starts[1] == pytest.approx(3.1) and sup.restarts == 1 and sup.evict is None


async def test_each_health_transition_is_reported_once():
    d, reports, sup, _ = await supervise([Run(healthy_for=6.5), Run()], until=20.0, health=EXEC_CHECK)
    health = [r.health for r in reports if r.state == "running"]
    # run 1: unknown at start, healthy once (5 passing checks), unhealthy once; run 2: unknown, healthy once
    assert health == ["unknown", "healthy", "unhealthy", "unknown", "healthy"]
    assert sup.health == "healthy" and len(d.probes) > 15


async def test_a_failure_below_the_threshold_changes_nothing():
    class Flaky(FakeDriver):
        def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
            self.probes.append(self.clock.monotonic())
            return (1, "") if len(self.probes) % 3 == 0 else (0, "")   # every third check fails
    clock = FakeClock(30.0)
    d = Flaky(clock, [Run()])
    sup = Supervised(placement=placement(health=EXEC_CHECK))
    clock.on_until = lambda: setattr(sup, "stopping", True)
    reports: list[Report] = []
    await Supervisor(sup, d, report=reports.append, metrics=Metrics(), host="127.0.0.1", clock=clock,
                     container_spec=lambda p: ContainerSpec(id="w-1", job="w", replica=0, image="w:1", rootfs="",
                                                            command=["w"], log_dir="/x")).run()
    assert [r.health for r in reports if r.state == "running"] == ["unknown", "healthy"] and not d.stops


@pytest.mark.parametrize("policy, run, restarted", [
    ("on-failure", Run(lifetime=1.0, exit_code=0), False),
    ("on-failure", Run(lifetime=1.0, exit_code=2), True),
    ("on-failure", Run(lifetime=1.0, exit_code=0, oom=True), True),
    ("never", Run(lifetime=1.0, exit_code=2), False),
    ("always", Run(lifetime=1.0, exit_code=0), True),
])
async def test_restart_policy(policy, run, restarted):
    restart = {"policy": policy, "initial_ms": 100, "max_ms": 1000, "reset_ms": 60_000}
    d, reports, sup, metrics = await supervise([run], until=5.0, restart=restart)
    assert (len(d.starts) > 1) is restarted
    assert reports[1].state == ("oom_killed" if run.oom else "exited")
    assert ("exited", "w", run.oom) in metrics.calls
    if not restarted:
        assert sup.state == reports[-1].state and len(reports) == 2    # running, its end: nothing more


async def test_a_failed_start_is_reported_and_retried_after_the_backoff():
    d, reports, _, _ = await supervise([Run()], until=5.0, fail_creates=2)
    assert [(r.state, r.reason) for r in reports[:3]] == [
        ("exited", "start failed: no space left on device"), ("exited", "start failed: no space left on device"),
        ("running", "")]
    assert d.starts == [pytest.approx(0.3)]                   # after 0.1 s, then 0.2 s


async def test_a_start_still_under_way_after_a_while_is_reported_starting_and_a_quick_one_is_not(monkeypatch):
    """A start is reported "starting" only when it is still under way STARTING_REPORT_S after it began (an image
    pull, a slow runc): a quick one goes from pending to running with one report, so one commit per start less
    and none in the middle of the start (bench/container_start.py)."""
    from raftctl.agent import supervisor as sup_mod

    class SlowCreate(FakeDriver):
        def create(self, spec: ContainerSpec) -> str:
            time.sleep(0.2)      # real time: on a worker thread, as the runc driver's calls run
            return super().create(spec)
    monkeypatch.setattr(sup_mod, "STARTING_REPORT_S", 0.05)
    d, reports, _, _ = await supervise([Run()], until=3.0, driver_class=SlowCreate)
    assert [r.state for r in reports] == ["starting", "running"]
    d, reports, _, _ = await supervise([Run()], until=3.0)
    assert [r.state for r in reports] == ["running"]


async def test_with_an_exit_descriptor_the_status_is_asked_when_it_turns_readable_not_on_every_poll():
    """A driver that gives the init's exit as a descriptor (the runc driver's pidfd) is asked for the status when
    it turns readable (and at most every STATUS_EVERY_S besides): before, a container without a health check was
    polled every POLL_S (0.1 s), one with a check at every check."""
    r, w = os.pipe()

    class ExitFd(FakeDriver):
        statuses = 0
        ended = False

        def status(self, id: str) -> Observed:
            self.statuses += 1
            return Observed("exited", exit_code=0) if self.ended else Observed("running", pid=101)

        def exit_fd(self, id: str) -> int:
            return os.dup(r)

    async def end_later(d: ExitFd) -> None:
        await asyncio.sleep(0.5)
        assert d.statuses == 1       # asked once after the start: 0.5 s of polling every 0.1 s was 5 more
        d.ended = True
        os.write(w, b"x")            # the init exits: the descriptor turns readable
    ends: list[asyncio.Task[None]] = []
    try:
        restart = {"policy": "on-failure", "initial_ms": 100, "max_ms": 1000, "reset_ms": 60_000}
        t0 = time.monotonic()
        d, reports, _, _ = await supervise([Run()], until=60.0, driver_class=ExitFd, restart=restart,
                                           setup=lambda d, sup: ends.append(asyncio.ensure_future(end_later(d))))
        await ends[0]
        assert [r.state for r in reports] == ["running", "exited"] and d.statuses == 2
        assert time.monotonic() - t0 < 0.5 + 0.5     # noticed when it fired, not STATUS_EVERY_S (1 s) later
    finally:
        os.close(r)
        os.close(w)


async def test_a_failed_start_under_policy_never_gives_up():
    restart = {"policy": "never", "initial_ms": 100, "max_ms": 1000, "reset_ms": 60_000}
    d, reports, _, _ = await supervise([Run()], until=5.0, fail_creates=1, restart=restart)
    assert [r.state for r in reports] == ["exited"] and d.starts == []


async def test_an_adopted_container_is_watched_not_started():
    d, reports, _, _ = await supervise([Run(lifetime=1.0)], until=3.0, adopted=True)
    assert reports[0].state == "running" and len(d.starts) >= 2 and backoffs(d)[0] == 0.1


async def test_a_stop_ends_the_supervisor_without_an_exit_report():
    d, reports, sup, _ = await supervise([Run()], until=3.0)       # runs forever; stopped at the horizon
    assert [r.state for r in reports] == ["running"] and sup.restarts == 0


async def test_a_stored_spec_with_restart_values_outside_the_bounds_is_clamped_not_fatal():
    # (a value that is not an integer never reaches a supervisor: the assignment's boundary refuses the spec,
    # tests/agent/test_assignments.py)
    d, _, _, _ = await supervise([Run(lifetime=1.0)] * 3, until=3.0,
                                 restart={"policy": "always", "initial_ms": 5, "max_ms": 1, "reset_ms": 60_000})
    assert backoffs(d)[:2] == [0.1, 0.1]                      # 5 ms: the 100 ms floor; max below initial: initial


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("draw, factor", [(0.0, 0.8), (1.0, 1.2)])
async def test_restart_delays_are_jittered_by_up_to_20_percent_either_way(draw, factor):
    d, _, _, _ = await supervise([Run(lifetime=1.0)], until=3.0, rng=Fixed(draw))
    assert backoffs(d)[:2] == [pytest.approx(0.1 * factor), pytest.approx(0.2 * factor)]


async def test_each_start_first_removes_what_an_earlier_run_left():
    d, _, _, _ = await supervise([Run(lifetime=1.0)], until=2.5)
    assert d.calls[:6] == ["remove", "create", "start", "remove", "create", "start"]


async def test_a_stop_arriving_while_the_container_is_created_means_it_is_never_started():
    def stop_during_create(d: FakeDriver, sup: Supervised) -> None:
        d.on_create = lambda: setattr(sup, "stopping", True)
    d, reports, _, _ = await supervise([Run()], until=5.0, setup=stop_during_create)
    assert d.calls == ["remove", "create"] and d.starts == []
    assert reports == []


# -- the start's path (issue 15: job PUT -> placement healthy) ------------------------------------------------------

QUICK_CHECK = {**EXEC_CHECK, "grace_ms": 0}     # the first check due right at the start


async def test_a_container_healthy_at_its_first_check_is_reported_running_and_healthy_at_once():
    """The first check runs right after the start, before "running" is reported: one report (one commit) to
    healthy, not "running" and then "healthy" queued behind its commit."""
    d, reports, sup, _ = await supervise([Run()], until=3.0, health=QUICK_CHECK)
    assert [(r.state, r.health) for r in reports] == [("running", "healthy")]
    assert d.probes[0] == d.starts[0] == 0.0


async def test_a_container_failing_its_first_check_is_reported_running_then_healthy():
    class LateListener(FakeDriver):
        def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
            self.probes.append(self.clock.monotonic())
            return (0, "") if self.clock.monotonic() - self.starts[-1] >= 0.05 else (1, "")
    d, reports, _, _ = await supervise([Run()], until=3.0, health=QUICK_CHECK, driver_class=LateListener)
    assert [(r.state, r.health) for r in reports] == [("running", "unknown"), ("running", "healthy")]
    # retried 5 ms after the failed first check, then 7.5, 11.25, 16.9, 25.3 ms later (health.STARTUP_RETRY_GROWTH):
    # healthy at 66 ms (listening from 50 ms), not one interval (1 s) later
    assert d.probes[:6] == pytest.approx([0.0, 0.005, 0.0125, 0.02375, 0.040625, 0.0659375])
    assert d.probes[6] == pytest.approx(1.0659375)     # then one per interval


async def test_a_fresh_start_skips_the_remove_and_every_restart_removes_first():
    d, _, _, _ = await supervise([Run(lifetime=1.0)], until=2.5, fresh=True)
    assert d.calls[:5] == ["create", "start", "remove", "create", "start"]


async def test_a_fresh_start_that_failed_removes_before_it_tries_again():
    d, _, _, _ = await supervise([Run()], until=2.5, fresh=True, fail_creates=1)
    assert d.calls[:4] == ["create", "remove", "create", "start"]


async def test_a_cancelled_driver_call_ends_cancelled_even_when_the_call_had_just_returned():
    """Python 3.11's wait_for returned the result of a call that finished just before the cancel (the supervisor
    then went on running, cancelled); the bound on a driver call must not swallow a cancellation. The cancel
    comes 0-5 loop turns after the call returned on its thread: every cancel accepted must end the task."""
    accepted = 0
    for turns in range(6):
        go, returned = threading.Event(), threading.Event()

        def call() -> str:
            go.wait(5)            # noqa: B023
            returned.set()        # noqa: B023
            return "done"
        task = asyncio.create_task(call_driver(call))
        for _ in range(10):
            await asyncio.sleep(0)             # the call is on its worker thread, waiting for go
        go.set()
        assert returned.wait(5)                # (blocking the loop: the result cannot reach the task yet)
        time.sleep(0.01)                       # its hand-over to the loop is queued
        for _ in range(turns):
            await asyncio.sleep(0)
        if task.cancel():
            accepted += 1
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            assert await task == "done"
    assert accepted >= 1


async def test_a_driver_call_past_its_bound_is_a_driver_timeout_and_its_own_timeout_error_stays_one():
    release = threading.Event()
    with pytest.raises(DriverTimeout):
        await call_driver(release.wait, 5, bound=0.05)
    release.set()

    def raises() -> None:
        raise TimeoutError("the registry did not answer")
    with pytest.raises(TimeoutError, match="registry") as info:
        await call_driver(raises)
    assert not isinstance(info.value, DriverTimeout)


@pytest.mark.parametrize("network, to, probed", [
    ("bridge", 8080, ("10.88.1.5", 8080)),     # in its own namespace it listens on the port's `to`
    ("bridge", None, ("10.88.1.5", 31001)),    # no `to`: the allocated number (its PORT_HTTP)
    ("host", None, ("127.0.0.2", 31001)),      # host network: the machine's address and the allocated port
])
async def test_a_tcp_check_goes_where_the_container_listens(monkeypatch, network, to, probed):
    from raftctl.agent import health
    from raftctl.agent.health import HealthPolicy

    seen: list[tuple[str, int]] = []

    async def probe_tcp(addr: str, port: int, timeout: float) -> bool:
        seen.append((addr, port))
        return True

    monkeypatch.setattr(health, "probe_tcp", probe_tcp)
    port: dict[str, Any] = {"name": "http"} if to is None else {"name": "http", "to": to}
    spec = job_spec(network=network, ports=[port], health={"type": "tcp", "port": "http"})
    sup = Supervised({"id": "w-1", "spec": spec, "ports": {"http": 31001}, "address": "10.88.1.5"})
    s = Supervisor(sup, driver=None, report=lambda u: None, metrics=None,  # type: ignore[arg-type]
                   container_spec=lambda p: None, host="127.0.0.2")       # type: ignore[arg-type,return-value]
    assert await s._probe(HealthPolicy.from_spec(spec.health))() is True
    assert seen == [probed]
