"""Stopping a container (agent/stopping.py) on a fake clock and a recording fake driver: no sleeping.

The first attempt is graceful (pre-stop hook while it runs, SIGTERM with the grace, remove, check); a failed or
hung attempt stays recorded and the next one is SIGKILL at once; a stop that succeeded forgets the container
and reports it stopped. How long an attempt has run comes from the injected clock only.
"""
from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest

from raftctl.agent import converge
from raftctl.agent.converge import StopInFlight
from raftctl.agent.runtime.base import Observed
from raftctl.agent.stopping import STOP_GRACE_S, STOP_SLACK_S, Stopper
from raftctl.agent.supervisor import Supervised
from raftctl.statemachine.records import ReportUpdate
from raftctl.clock import FakeClock
from tests.agent.conftest import job_spec

HOOK = {"exec": ["drain", "--now"], "timeout_ms": 3000}


class Driver:
    """Records every call; ``fail_stops`` stops raise, ``hang`` holds stop until set, ``still_running`` keeps
    the container running whatever is done to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_stops = 0
        self.hang: threading.Event | None = None
        self.still_running = False

    def exec(self, id: str, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        self.calls.append(("exec", id, argv, timeout))
        return 0, ""

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        self.calls.append(("stop", id, grace_s))
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail_stops:
            self.fail_stops -= 1
            raise OSError("runc: container is paused")
        return Observed("exited", exit_code=143)

    def kill(self, id: str, sig: int = signal.SIGKILL) -> None:
        self.calls.append(("kill", id, sig))

    def remove(self, id: str) -> None:
        self.calls.append(("remove", id))

    def status(self, id: str) -> Observed:
        self.calls.append(("status", id))
        return Observed("running", pid=42) if self.still_running else Observed("missing")


def placement(pid: str = "w-1", desired: str = "stop", hook: bool = True, reason: str = "") -> dict[str, Any]:
    spec = job_spec(lifecycle={"pre_stop": HOOK} if hook else {})
    p = {"id": pid, "job": "w", "version": 1, "replica": 0, "desired": desired, "state": "running", "spec": spec}
    if reason:
        p["reason"] = reason
    return p


def setup(state: str = "running", **kw: Any) -> tuple[Stopper, Driver, FakeClock, list[ReportUpdate], Supervised]:
    d, clock, reports = Driver(), FakeClock(), []  # type: ignore[var-annotated]
    sup = Supervised(placement=placement(desired="run", **kw), state=state)
    stopper = Stopper(d, {"w-1": sup}, reports.append, clock)  # type: ignore[arg-type]
    return stopper, d, clock, reports, sup


async def finish(stopper: Stopper, cid: str = "w-1") -> None:
    await asyncio.wait_for(asyncio.gather(*stopper.tasks(), return_exceptions=True), 10)


async def test_the_first_stop_runs_the_hook_then_sigterm_with_the_grace_then_removes_and_reports():
    stopper, d, _, reports, sup = setup()
    sup.task = asyncio.create_task(asyncio.Event().wait())     # the container's supervisor
    stopper.stop("w-1", placement(reason="drained"))
    await finish(stopper)
    assert d.calls == [("exec", "w-1", ["drain", "--now"], 3.0), ("stop", "w-1", STOP_GRACE_S),
                       ("remove", "w-1"), ("status", "w-1")]
    assert reports == [ReportUpdate(placement="w-1", state="stopped", reason="drained")]
    assert stopper.attempts == {} and stopper.containers == {} and stopper.retries == 0
    await asyncio.sleep(0)
    assert sup.stopping and sup.task.cancelled()


async def test_the_hook_runs_only_for_a_running_container_and_the_report_says_stopped_by_default():
    stopper, d, _, reports, _ = setup(state="exited")
    stopper.stop("w-1", placement())
    await finish(stopper)
    assert [c[0] for c in d.calls] == ["stop", "remove", "status"]
    assert reports == [ReportUpdate(placement="w-1", state="stopped", reason="stopped")]


async def test_the_hook_comes_from_the_supervised_placement_when_the_assignment_has_none():
    stopper, d, _, reports, _ = setup()
    stopper.stop("w-1", None)   # no longer assigned here: nothing to report to
    await finish(stopper)
    assert [c[0] for c in d.calls] == ["exec", "stop", "remove", "status"]
    assert reports == [] and stopper.containers == {}


async def test_an_attempt_is_bounded_by_grace_slack_and_hook_and_ages_on_the_clock_only():
    stopper, d, clock, _, _ = setup()
    d.hang = threading.Event()
    try:
        stopper.stop("w-1", placement())
        bound = STOP_GRACE_S + STOP_SLACK_S + 3.0
        assert stopper.in_flight() == {"w-1": StopInFlight(0.0, bound)}
        clock.advance(bound)   # at the bound: still in flight, not retried
        actions = converge.plan([placement()], set(stopper.containers), existing={"w-1"},
                                stopping=stopper.in_flight())
        assert actions.stop == [] and actions.retry == []
        clock.advance(0.5)     # past it: presumed hung
        actions = converge.plan([placement()], set(stopper.containers), existing={"w-1"},
                                stopping=stopper.in_flight())
        assert stopper.in_flight()["w-1"].age_s == pytest.approx(bound + 0.5) and actions.retry == ["w-1"]
    finally:
        d.hang.set()
        await finish(stopper)


async def test_a_hung_stop_is_abandoned_and_retried_with_sigkill_without_the_hook():
    stopper, d, clock, reports, _ = setup()
    d.hang = threading.Event()
    stopper.stop("w-1", placement())
    first = stopper.attempts["w-1"].task
    while ("stop", "w-1", STOP_GRACE_S) not in d.calls:
        await asyncio.sleep(0.01)
    clock.advance(100)
    d.hang.set()
    d.calls.clear()
    stopper.retry("w-1", placement())
    assert first.cancelling() or first.cancelled()
    assert stopper.attempts["w-1"].attempt == 1 and stopper.retries == 1
    assert stopper.in_flight() == {"w-1": StopInFlight(0.0, STOP_GRACE_S + STOP_SLACK_S)}   # no hook
    await finish(stopper)
    assert ("kill", "w-1", signal.SIGKILL) in d.calls and ("stop", "w-1", 1.0) in d.calls
    assert not any(c[0] == "exec" for c in d.calls)
    assert reports[-1] == ReportUpdate(placement="w-1", state="stopped", reason="stopped") and stopper.attempts == {}


async def test_a_failed_stop_stays_recorded_and_the_next_pass_escalates():
    stopper, d, _, reports, _ = setup()
    d.fail_stops = 1
    stopper.stop("w-1", placement())
    await finish(stopper)
    assert reports == [] and "w-1" in stopper.containers
    assert stopper.attempts["w-1"].task.done() and stopper.in_flight() == {}
    # the next pass: no stop in flight, the container still there -> stop again, now SIGKILL
    actions = converge.plan([placement()], set(stopper.containers), existing={"w-1"}, stopping=stopper.in_flight())
    assert actions.stop == ["w-1"]
    d.calls.clear()
    stopper.stop("w-1", placement())
    await finish(stopper)
    assert [c[0] for c in d.calls] == ["kill", "stop", "remove", "status"] and stopper.retries == 1
    assert reports == [ReportUpdate(placement="w-1", state="stopped", reason="stopped")] and stopper.containers == {}


async def test_a_container_still_running_after_stop_and_remove_is_not_reported_stopped():
    stopper, d, _, reports, _ = setup()
    d.still_running = True
    stopper.stop("w-1", placement())
    await finish(stopper)
    assert reports == [] and "w-1" in stopper.attempts and "w-1" in stopper.containers


async def test_a_failed_attempt_is_forgotten_only_once_its_container_is_gone():
    stopper, d, _, _, _ = setup()
    d.fail_stops = 1
    stopper.stop("w-1", placement())
    await finish(stopper)
    stopper.forget_gone({"w-1"})            # the driver still has it
    assert "w-1" in stopper.attempts
    stopper.forget_gone(set())              # the agent still supervises it
    assert "w-1" in stopper.attempts
    del stopper.containers["w-1"]
    stopper.forget_gone(set())
    assert stopper.attempts == {}


async def test_an_attempt_in_flight_is_not_forgotten():
    stopper, d, _, _, _ = setup()
    d.hang = threading.Event()
    stopper.stop("w-1", placement())
    del stopper.containers["w-1"]
    stopper.forget_gone(set())
    assert "w-1" in stopper.attempts
    d.hang.set()
    await finish(stopper)


async def test_a_stop_waits_for_the_start_in_flight():
    stopper, d, _, reports, sup = setup()
    await sup.start_lock.acquire()           # the supervisor is inside driver.start
    stopper.stop("w-1", placement())
    for _ in range(20):
        await asyncio.sleep(0)
    assert sup.stopping and d.calls == []    # marked, so the start gives up, but nothing done beside it
    sup.start_lock.release()
    await finish(stopper)
    assert [c[0] for c in d.calls] == ["exec", "stop", "remove", "status"] and not sup.start_lock.locked()
