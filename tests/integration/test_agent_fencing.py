"""Agent fencing: a placement that is stopped stays stopped, promptly (jepsen-style findings 4 and 5).

The first tests drive a real Agent with the process driver (real container processes) against a
scripted control plane, so each fault is exact; then a 3-replica LocalCluster where the replica the
agent's assignment watch is parked on is SIGSTOPped; last, the control client against a loopback
listener that drops SYNs.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
import time
from typing import Any

import pytest

from raftctl.agent import converge
from raftctl.agent.config import AgentConfig
from raftctl.agent.loop import Agent
from raftctl.agent.runtime.base import ContainerSpec, Observed
from raftctl.agent.runtime.process import ProcessDriver
from raftctl.agent.runtime import agent_driver as make_driver
from raftctl.statemachine.records import JobSpec, from_wire
from raftctl.statemachine.spec import validate_spec

from .conftest import agents_cluster, client_for, wait_until

pytestmark = pytest.mark.integration

SLEEPER = validate_spec({"name": "s", "image": "s:1", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                         "restart": {"policy": "always", "backoff": {"initial": "100ms", "max": "1s"}}})


def placement(pid: str, desired: str = "run", state: str = "running") -> dict[str, Any]:
    return {"id": pid, "job": "s", "version": 1, "replica": 0, "machine": "m1", "ports": {}, "resources": {},
            "desired": desired, "state": state, "spec": SLEEPER}


def running(driver: ProcessDriver) -> set[str]:
    return {cid for cid in driver.list_existing() if driver.status(cid).state == "running"}


async def eventually(fn, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ScriptedControl:
    """Stands in for ControlClient in the watch loop: answers watches from a script, one per call; when the
    script is spent, its last answer again after a short wait (a replica that timed out its blocking query)."""

    def __init__(self, answers: list[tuple[dict[str, Any], str]], live: str) -> None:
        self.answers = list(answers)
        self.live = live
        self.servers = sorted({live, *(server for _, server in answers)})
        self.asked: list[str | None] = []
        self.avoided: list[str] = []

    async def watch(self, path: str, params: dict[str, str], *, timeout: float, server: str | None = None):
        self.asked.append(server)
        if len(self.answers) > 1:
            return self.answers.pop(0)
        await asyncio.sleep(0.2)
        return self.answers[0]

    async def live_moved_from(self, url: str | None) -> None:
        await asyncio.Event().wait()

    def avoid(self, url: str) -> None:
        self.avoided.append(url)


@pytest.fixture
def agent(tmp_path):
    driver = ProcessDriver(str(tmp_path / "proc"))
    cfg = AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path / "agent"))
    a = Agent(cfg, driver)
    a.reconcile_s = 0.2
    yield a
    for cid in driver.list_existing():
        driver.remove(cid)


async def run_for(agent: Agent, coro, body) -> None:
    """Run the agent's reconcile loop (and ``coro``) while ``body`` checks; cancel them after."""
    tasks = [asyncio.create_task(agent._reconcile_loop()), asyncio.create_task(coro)]
    try:
        await body()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in [s.task for s in agent.containers.values() if s.task] + agent.stopper.tasks():
            t.cancel()


async def test_a_stale_replica_answer_does_not_restart_a_stopped_placement(agent):
    """The leak of finding 5: the placement is stopped on the leader's word, then a replica cut off from
    the others answers the timed-out watch with its old state (desired run, at a lower index). Acting on it
    restarted the container and kept it running while the watch stayed parked there."""
    d = agent.driver
    ctl = ScriptedControl([({"index": 10, "placements": [placement("s-1")]}, "http://n1"),
                           ({"index": 12, "placements": [placement("s-1", desired="stop")]}, "http://n1"),
                           ({"index": 9, "placements": [placement("s-1")]}, "http://n3")], live="http://n1")
    agent.control = ctl  # type: ignore[assignment]

    async def body():
        await eventually(lambda: agent.index == 12, what="the stop answer")
        await eventually(lambda: "s-1" not in running(d) and "s-1" not in agent.containers, what="s-1 stopped")
        await asyncio.sleep(2.0)  # the stale replica keeps answering (every 0.2 s)
        assert "s-1" not in running(d) and "s-1" not in agent.containers
        assert len(ctl.avoided) >= 2
        assert agent.index == 12 and set(ctl.avoided) == {"http://n3"}
        assert [r.state for r in agent.reports if r.placement == "s-1"][-1] == "stopped"

    await run_for(agent, agent._watch_loop(), body)


async def test_a_container_running_behind_the_agents_back_is_stopped(agent):
    """Level-triggered: the driver runs a container of a placement that is desired stop (a start that landed
    after the stop, an agent that forgot it); the next pass stops it, with no new assignment answer."""
    d = agent.driver
    await agent.converge([placement("s-1", desired="stop", state="stopped")])
    spec = ContainerSpec.from_placement(placement("s-1"), from_wire(JobSpec, SLEEPER), rootfs="",
                                        log_dir=os.path.join(agent.cfg.data_dir, "logs", "s-1"))
    d.create(spec)
    d.start("s-1")
    assert "s-1" in running(d)

    async def body():
        await eventually(lambda: "s-1" not in d.list_existing(), timeout=15, what="the container removed")

    await run_for(agent, asyncio.Event().wait(), body)


class HangingStop(ProcessDriver):
    """The first stop hangs (a wedged runtime); later ones work."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.release = threading.Event()
        self.stops = 0

    def stop(self, id: str, grace_s: float = 10.0) -> Observed:
        self.stops += 1
        if self.stops == 1:
            self.release.wait(60)
        return super().stop(id, grace_s)


async def test_a_stop_that_hangs_is_retried_with_sigkill(tmp_path):
    d = HangingStop(str(tmp_path / "proc"))
    a = Agent(AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path / "a")), d)
    a.stopper.grace_s, a.stopper.slack_s = 0.5, 1.0
    a.reconcile_s = 0.2
    try:
        await a.converge([placement("s-1")])
        await eventually(lambda: "s-1" in running(d), what="s-1 running")
        a.placements = converge.typed([placement("s-1", desired="stop")])[0]   # as the reconcile pass holds it
        t0 = time.monotonic()

        async def body():
            await eventually(lambda: "s-1" not in d.list_existing(), timeout=20, what="the container removed")
            print(f"hung stop: container gone {time.monotonic() - t0:.1f}s after the stop was assigned")
            # _stop removes the container, checks it is gone, and only then forgets it and reports "stopped"
            await eventually(lambda: "s-1" not in a.containers, timeout=5, what="the agent done with the stop")
            assert a.stopper.retries >= 1 and "s-1" not in a.containers
            assert [r.state for r in a.reports if r.placement == "s-1"][-1] == "stopped"

        await run_for(a, asyncio.Event().wait(), body)
    finally:
        d.release.set()
        for cid in d.list_existing():
            d.remove(cid)


class SlowStart(ProcessDriver):
    """``start`` blocks until released (a runc/shim start that takes its time)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.entered = threading.Event()
        self.release = threading.Event()

    def start(self, id: str) -> None:
        self.entered.set()
        self.release.wait(60)
        super().start(id)


async def test_a_stop_during_the_start_waits_for_it_and_stops_what_it_started(tmp_path):
    """The stop arrives while the supervisor's driver.start is in flight: it must not run beside the start
    (finding nothing to stop) and let the start leave the container running, supervised by no one."""
    d = SlowStart(str(tmp_path / "proc"))
    a = Agent(AgentConfig(machine="m1", servers=["http://127.0.0.1:1"], token="t", data_dir=str(tmp_path / "a")), d)
    try:
        await a.converge([placement("s-1", state="pending")])
        await eventually(d.entered.is_set, what="the start in flight")
        await a.converge([placement("s-1", desired="stop", state="starting")])
        await asyncio.sleep(0.3)
        d.release.set()
        await eventually(lambda: "s-1" not in a.stopper.attempts and "s-1" not in a.containers, what="the stop done")
        assert "s-1" not in d.list_existing()
        await asyncio.sleep(0.5)
        assert "s-1" not in running(d)
        assert [r.state for r in a.reports if r.placement == "s-1"][-1] == "stopped"
    finally:
        d.release.set()
        for cid in d.list_existing():
            d.remove(cid)


# -- the whole path: a paused replica holding the watch (finding 4) ------------------------------------------

JOB = {"name": "fence", "image": "fence:1", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
       "replicas": 3, "restart": {"policy": "always"}}


def fence_running(c) -> set[str]:
    d = make_driver("process", c.agents[0].data_dir)
    return {cid for cid in d.list_existing() if cid.startswith("fence-") and d.status(cid).state == "running"}


def watch_server(c) -> str | None:
    with open(os.path.join(c.agents[0].data_dir, "agent.log"), errors="replace") as f:
        # "assignment watch on X abandoned: ..." lines name the replica left, or "a rotating replica": not a watch
        found = re.findall(r"assignment watch on (\S+)$", f.read(), re.M)
    return found[-1] if found else None


def test_a_paused_replica_holding_the_watch_delays_a_stop_by_seconds_not_the_watch_timeout(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "fencing", agents=1, runtime="process") as c:
        client_for(c).request("PUT", "/v1/jobs/fence", JOB)
        wait_until(lambda: len(fence_running(c)) == 3, timeout=60, what="3 containers running")
        url = wait_until(lambda: watch_server(c), timeout=20, what="the agent's watch replica in its log")
        victim = next(p for p in c.servers if url.rstrip("/").endswith(":" + p.api.rsplit(":", 1)[1]))
        other = next(p for p in c.servers if p is not victim)
        assert c.leader() is not victim, "the watch is parked on a follower, not on the leader (watchtarget.py)"
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            paused = time.monotonic()
            client_for(c, other).request("POST", "/v1/jobs/fence/scale", {"replicas": 1})
            committed = time.monotonic()
            wait_until(lambda: len(fence_running(c)) == 1, timeout=60, interval=0.05, what="2 containers stopped")
            gone = time.monotonic()
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        print(f"\nwatch on {victim.id} ({url}), paused: scale-down committed {committed - paused:.1f}s after the "
              f"pause; containers gone {gone - committed:.1f}s after the commit")
        assert gone - committed <= 10.0


# -- a replica whose SYNs go unanswered -----------------------------------------------------------------------

async def test_a_replica_that_never_accepts_costs_a_request_one_connect_timeout(tmp_path):
    """A listener whose accept queue is full drops SYNs, as a blackholed replica does: the client moves on to
    the next replica after the connect bound (1 s), not after the request's whole timeout."""
    import socket

    from aiohttp import web

    from raftctl.agent.control import CONNECT_S, ControlClient

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue: later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(hole.getsockname())
        fillers.append(s)
    await asyncio.sleep(0.2)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ControlClient([f"127.0.0.1:{hole.getsockname()[1]}", f"127.0.0.1:{port}"], "t") as ctl:
            t0 = time.monotonic()
            assert await ctl.request("GET", "/v1/ping", timeout=10.0) == {"ok": True}
            took = time.monotonic() - t0
        print(f"\nblackholed replica skipped in {took:.2f}s (connect bound {CONNECT_S}s, request timeout 10s)")
        assert took < 5.0
    finally:
        await runner.cleanup()
        for s in fillers:
            s.close()
        hole.close()


# -- a paused leader ------------------------------------------------------------------------------------------

async def test_a_heartbeat_the_paused_leader_never_answers_goes_to_the_other_replicas_not_to_it_again():
    """The leader accepts and never answers (SIGSTOPped): after the heartbeat's bound the agent asks the other
    replicas, starting past the silent one, and follows a follower's not_leader to the new leader. Asking the
    silent one a second time cost another 2 s bound: a 4 s leader pause outlived the new leader's 3 s TTL and all
    3 machines were declared down (jepsen-style seed 1)."""
    from aiohttp import web

    from raftctl.agent.control import ControlClient

    hits = {"paused": 0, "follower": 0, "leader": 0}
    urls: dict[str, str] = {}

    async def paused(request: web.Request) -> web.Response:
        hits["paused"] += 1
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async def follower(request: web.Request) -> web.Response:
        hits["follower"] += 1
        return web.json_response({"error": {"code": "not_leader", "message": "not the leader",
                                            "details": {"leader_api": urls["leader"]}}}, status=503)

    async def leader(request: web.Request) -> web.Response:
        hits["leader"] += 1
        return web.json_response({"status": "up", "interval_s": 1.0, "ttl_s": 3.0})

    runners = []
    for name, handler in (("paused", paused), ("follower", follower), ("leader", leader)):
        app = web.Application()
        app.router.add_post("/v1/agent/heartbeat", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls[name] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        runners.append(runner)
    try:
        async with ControlClient([urls["paused"], urls["follower"], urls["leader"]], "t") as ctl:
            ctl.leader = urls["paused"]                 # the last heartbeat went to it; the rotation points at it
            assert (await ctl.heartbeat("m1"))["status"] == "up"
            assert ctl.live == urls["leader"]
        assert hits == {"paused": 1, "follower": 1, "leader": 1}, hits
    finally:
        for runner in runners:
            await runner.cleanup()
