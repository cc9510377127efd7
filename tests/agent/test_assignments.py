"""Where assignments arrive: each placement's spec becomes its JobSpec record once (converge.typed), and a spec
that does not convert is reported and skipped, never crashing the agent's loop."""
from __future__ import annotations

import asyncio
from typing import Any

from raftctl.agent import converge
from raftctl.agent.config import AgentConfig
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.base import ContainerSpec
from raftctl.agent.runtime.sim import SimDriver
from raftctl.statemachine.records import JobSpec, ReportUpdate, seconds
from raftctl.statemachine.spec import validate_spec

WEB = validate_spec({"name": "web", "image": "web:1", "command": ["web"], "ports": [{"name": "http"}],
                     "health": {"type": "tcp", "port": "http", "interval": "2500ms", "grace": "10s"},
                     "restart": {"policy": "on-failure", "backoff": {"initial": "250ms", "max": "30s"}}})
BAD = {**WEB, "restart": {**WEB["restart"], "initial_ms": "1s"}}   # stored before restart's types were checked


def placement(pid: str, spec: Any, desired: str = "run", state: str = "pending") -> dict[str, Any]:
    return {"id": pid, "job": "web", "version": 1, "replica": 0, "machine": "m1", "ports": {"http": 31001},
            "resources": {}, "desired": desired, "state": state, "spec": spec}


def test_each_spec_becomes_its_record_and_the_parts_read_typed_durations():
    assigned, refused = converge.typed([placement("web-1", WEB)])
    spec = assigned[0]["spec"]
    assert isinstance(spec, JobSpec) and refused == {}
    assert spec.health is not None and seconds(spec.health.interval) == 2.5 and seconds(spec.health.grace) == 10.0
    assert (spec.restart.policy, seconds(spec.restart.initial), seconds(spec.restart.max)) == ("on-failure", 0.25, 30.0)
    assert {k: v for k, v in assigned[0].items() if k != "spec"} == {k: v for k, v in placement("web-1", WEB).items()
                                                                     if k != "spec"}


def test_a_spec_that_does_not_convert_is_left_out_naming_its_field_and_a_missing_one_stays_missing():
    assigned, refused = converge.typed([placement("web-1", BAD), placement("web-2", None), placement("web-3", WEB)])
    assert [p["spec"] is None for p in assigned] == [True, True, False]
    assert list(refused) == ["web-1"] and refused["web-1"].field == "restart.initial_ms"
    assert [p for p in converge.plan(assigned, set()).start] == [assigned[2]]    # only the one that converted


def agent(tmp_path) -> tuple[Agent, SimDriver]:
    cfg = AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path))
    driver = SimDriver()
    return Agent(cfg, driver), driver


async def settle(a: Agent) -> None:
    for t in [s.task for s in a.containers.values() if s.task]:
        t.cancel()
    await asyncio.gather(*[s.task for s in a.containers.values() if s.task], return_exceptions=True)


async def test_a_placement_whose_spec_does_not_convert_is_reported_once_and_the_others_still_start(tmp_path):
    a, driver = agent(tmp_path)
    try:
        await a.converge([placement("web-1", BAD), placement("web-3", WEB)])
        assert set(a.containers) == {"web-3"} and isinstance(a.containers["web-3"].placement["spec"], JobSpec)
        assert [r for r in a.reports if r.placement == "web-1"] == [ReportUpdate(
            placement="web-1", state="exited",
            reason="start failed: its spec does not convert: restart.initial_ms: Expected `int`, got `str`")]
        await a.converge([placement("web-1", BAD, state="exited"), placement("web-3", WEB)])   # the next answer
        assert len([r for r in a.reports if r.placement == "web-1"]) == 1 and set(a.containers) == {"web-3"}
    finally:
        await settle(a)


async def test_an_adopted_container_whose_spec_does_not_convert_is_neither_stopped_nor_reported(tmp_path):
    a, driver = agent(tmp_path)
    cs = converge.typed([placement("web-1", WEB)])[0][0]
    driver.create(ContainerSpec.from_placement(cs, cs["spec"], rootfs="", log_dir=str(tmp_path)))
    driver.start("web-1")
    await a._adopt()
    try:
        await a.converge([placement("web-1", BAD, state="running")])
        await asyncio.sleep(0.05)
        assert driver.status("web-1").state == "running" and a.stopper.attempts == {}
        assert a.reports == [] and a.containers["web-1"].task is None    # running, unsupervised: nothing to act on
    finally:
        await settle(a)


class OneAnswerControl:
    """The control-plane side of the watch loop: one assignment answer, then the watch parks until cancelled."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.live = "http://r1"
        self.servers = ["http://r1"]
        self.answers = [answer]

    async def watch(self, path: str, params: dict[str, str], *, timeout: float, server: str | None = None):
        if self.answers:
            return self.answers.pop(), "http://r1"
        await asyncio.Event().wait()

    async def live_moved_from(self, url: str | None) -> None:
        await asyncio.Event().wait()


class NetworkSim(SimDriver):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.networks: list[dict[str, Any]] = []

    def configure_network(self, network: dict[str, Any]) -> None:
        self.networks.append(network)
        if self.fail:
            raise OSError("nft: permission denied")


async def test_each_assignment_answer_hands_its_network_to_the_driver_before_converging(tmp_path):
    network = {"subnet": "10.88.1.0/24", "gateway": "10.88.1.1",
               "peers": [{"machine": "m2", "address": "127.0.0.3", "subnet": "10.88.2.0/24"}]}
    for fail in (False, True):      # a failed network configuration is logged: the placements still start
        cfg = AgentConfig(machine="m1", servers=["http://r1"], token="t", data_dir=str(tmp_path / str(fail)))
        driver = NetworkSim(fail)
        a = Agent(cfg, driver)
        a.control = OneAnswerControl({"index": 5, "placements": [placement("web-3", WEB)],  # type: ignore[assignment]
                                      "network": network})
        task = asyncio.create_task(a._watch_loop())
        try:
            for _ in range(200):
                if "web-3" in a.containers:
                    break
                await asyncio.sleep(0.01)
            assert driver.networks == [network] and a.index == 5 and "web-3" in a.containers
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await settle(a)


class Answers:
    """The control-plane side of the watch loop: these answers in turn (index 5, 6, ...), then the watch parks."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.live = "http://r1"
        self.servers = ["http://r1"]
        self.answers = list(answers)
        self.index = 4

    async def watch(self, path: str, params: dict[str, str], *, timeout: float, server: str | None = None):
        if self.answers:
            self.index += 1
            return {"index": self.index, **self.answers.pop(0)}, "http://r1"
        await asyncio.Event().wait()

    async def live_moved_from(self, url: str | None) -> None:
        await asyncio.Event().wait()


async def until(cond: Any, turns: int = 2000) -> None:
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("not reached")


async def test_the_same_network_again_is_not_handed_over_on_the_start_path_but_every_reassert_period(tmp_path):
    """An answer's network goes to the driver before its starts when it is new or changed; the same one again
    (every answer carries it) is handed over by the reconcile loop every NETWORK_REASSERT_S, so a route deleted
    behind the agent's back still comes back (bench/container_start.py: 4 ms of a worker thread per answer)."""
    from raftctl.agent.loop import NETWORK_REASSERT_S
    from raftctl.clock import FakeClock

    network = {"subnet": "10.88.1.0/24", "gateway": "10.88.1.1",
               "peers": [{"machine": "m2", "address": "127.0.0.3", "subnet": "10.88.2.0/24"}]}
    moved = {**network, "peers": [{"machine": "m2", "address": "127.0.0.4", "subnet": "10.88.2.0/24"}]}
    clock = FakeClock()
    driver = NetworkSim()
    a = Agent(AgentConfig(machine="m1", servers=["http://r1"], token="t", data_dir=str(tmp_path)), driver, clock=clock)
    # no placements: a supervisor's sleeps would move the fake clock as well
    a.control = Answers([{"placements": [], "network": network}, {"placements": [], "network": network},  # type: ignore[assignment]
                         {"placements": [], "network": moved}])
    task = asyncio.create_task(a._watch_loop())
    try:
        await until(lambda: a.index == 7)
        assert driver.networks == [network, moved]
        clock.advance(NETWORK_REASSERT_S - 1)
        await a._reassert_network()            # what each reconcile pass does
        assert driver.networks == [network, moved]
        clock.advance(1)
        await a._reassert_network()
        await a._reassert_network()
        assert driver.networks == [network, moved, moved]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await settle(a)


async def test_a_network_the_driver_refused_is_handed_over_again_on_the_next_reconcile_pass(tmp_path):
    from raftctl.clock import FakeClock

    network = {"subnet": "10.88.1.0/24", "gateway": "10.88.1.1", "peers": []}
    clock = FakeClock()
    driver = NetworkSim(fail=True)
    a = Agent(AgentConfig(machine="m1", servers=["http://r1"], token="t", data_dir=str(tmp_path)), driver, clock=clock)
    a.control = Answers([{"placements": [], "network": network}, {"placements": [], "network": network}])  # type: ignore[assignment]
    task = asyncio.create_task(a._watch_loop())
    try:
        await until(lambda: a.index == 6)
        assert driver.networks == [network, network]    # refused: the same network again is handed over again
        driver.fail = False
        await a._reassert_network()                     # the next reconcile pass, at once
        await a._reassert_network()
        assert driver.networks == [network] * 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await settle(a)
