"""The agent's report loop: every observed transition reaches the control plane, in order, in bodies the API
accepts (records.Report: at most 1000 updates each)."""
from __future__ import annotations

import asyncio
from typing import Any

from raftctl.agent.config import AgentConfig
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.sim import SimDriver
from raftctl.agent.supervisor import update
from raftctl.errors import RaftctlError, Unavailable
from raftctl.statemachine.records import Report, from_wire


class Control:
    """Stands in for ControlClient: checks each report body as the API does (from_wire) and keeps it."""

    def __init__(self, fail: list[Exception] | None = None) -> None:
        self.bodies: list[Report] = []
        self.fail = list(fail or [])

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        assert (method, path) == ("POST", "/v1/agent/report")
        report = from_wire(Report, body)        # a body past 1000 updates raises here, as the API refuses it
        if self.fail:
            raise self.fail.pop(0)
        self.bodies.append(report)
        return {"results": []}


async def deliver(agent: Agent, control: Control, count: int, *, expect: int) -> list[str]:
    agent.control = control  # type: ignore[assignment]
    task = asyncio.create_task(agent._report_loop())
    try:
        for i in range(count):
            agent._report(update(f"p-{i}", "running", health="healthy"))
        for _ in range(2000):
            if sum(len(b.updates) for b in control.bodies) >= expect and not agent.reports:
                break
            await asyncio.sleep(0.001)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [u.placement for b in control.bodies for u in b.updates]


def make_agent(tmp_path) -> Agent:
    cfg = AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path))
    return Agent(cfg, SimDriver(), clock=Instant())


class Instant:
    """A clock whose sleeps return at once (the retry pause)."""

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def test_more_than_1000_pending_transitions_go_in_bodies_of_at_most_1000_all_delivered_in_order(tmp_path):
    # before: one body of 2,500 updates, which the API answered 200 after applying only the first 1000
    control = Control()
    got = await deliver(make_agent(tmp_path), control, 2500, expect=2500)
    assert got == [f"p-{i}" for i in range(2500)]
    assert [len(b.updates) for b in control.bodies] == [1000, 1000, 500]
    assert all(b.machine == "m1" for b in control.bodies)


async def test_a_chunk_that_was_not_delivered_is_sent_again_before_the_rest(tmp_path):
    control = Control(fail=[Unavailable("no control replica answered")])
    got = await deliver(make_agent(tmp_path), control, 1500, expect=1500)
    assert got == [f"p-{i}" for i in range(1500)]


async def test_a_chunk_the_api_refuses_is_dropped_and_later_transitions_still_go(tmp_path):
    refused = RaftctlError("Invalid enum value", field="updates[0].state", code="invalid", http_status=400)
    control = Control(fail=[refused])
    got = await deliver(make_agent(tmp_path), control, 1200, expect=200)
    assert got == [f"p-{i}" for i in range(1000, 1200)]


def test_a_reason_is_cut_to_what_the_record_holds():
    u = update("p-1", "exited", exit_code=1, reason="x" * 5000)
    assert len(u.reason) == 300 and from_wire(Report, {"machine": "m1", "updates": [
        {"placement": "p-1", "state": "exited", "exit_code": 1, "reason": u.reason}]}).updates[0] == u
