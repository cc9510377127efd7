"""The rollout's decision for one job, pass by pass (pure): a deploy's record (start, promote, succeed, fail,
revert), its batches within max_unavailable/max_surge, drains within the disruption budget, and retired
placements stopped after their drain delay. Each case is one observation and the commands it must produce."""
from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from raftctl.clock import FakeClock
from raftctl.node.autoscale import Autoscaler
from raftctl.node.rollout import RolloutController
from raftctl.statemachine import commands as c
from raftctl.statemachine.spec import validate_spec

from .fake_replica import FakeReplica, machine, until
from .rollout_helpers import EPOCH, NEW, NOW, OLD, V1, V2, deployment, job, machines, p, retire, run, spec


def test_a_job_that_is_not_running_is_left_alone():
    assert run(job(V1, V2, status="dead"), OLD).commands == []


def test_a_steady_job_needs_nothing():
    d = run(job(V1), [p("a", 0, 1), p("b", 1, 1), p("c", 2, 1)])
    assert d.commands == [] and d.held is None


def test_placements_that_are_not_live_do_not_count():
    gone = [p("a", 0, 1, state="lost"), p("b", 1, 1, state="stopped"), {**p("c", 2, 1), "desired": "stop"}]
    assert run(job(V1, V2), gone + NEW, dep=deployment()).commands[0].deployment["status"] == "successful"


# -- retired placements are stopped once their drain delay is over --

def test_a_retired_placement_is_stopped_after_the_drain_delay_with_its_reason():
    pl = [p("a", 0, 2, retiring_at=NOW - 500, reason="deploy of version 2"), p("b", 1, 2, retiring_at=NOW - 499),
          p("c", 2, 2, retiring_at=NOW - 9_000)]
    d = run(job(V1, V2), pl, dep=deployment())
    assert d.commands[0] == c.Plan(epoch=EPOCH, place=[], stop=[
        {"placement": "a", "reason": "deploy of version 2"}, {"placement": "c", "reason": "retired"}])


def test_the_stop_goes_first_and_the_pass_goes_on():
    pl = [p("a", 0, 1, retiring_at=NOW - 600), p("b", 1, 1), p("c", 2, 1)]
    d = run(job(V1, V2), pl)
    assert [type(x) for x in d.commands] == [c.Plan, c.SetDeployment]


# -- the deployment record --

def test_a_new_version_starts_a_deployment_and_nothing_else_that_pass():
    d = run(job(V1, V2), OLD)
    assert d.commands == [c.SetDeployment(
        epoch=EPOCH, job="web", message="deploy of web version 2 started: 3 replicas to replace, 1 at a time",
        deployment={"job": "web", "version": 2, "status": "running", "started_at": NOW, "deadline": NOW + 20_000,
                    "total": 3, "surge": 0, "canary": 0, "promoted": True})]


def test_a_deployment_of_an_earlier_version_does_not_count():
    d = run(job(V1, V2), OLD, dep=deployment(version=1, status="successful"))
    assert [x.deployment["version"] for x in d.commands] == [2]


def test_the_start_message_names_canaries_and_surge():
    d = run(job(V1, spec("2", canary=1, max_surge=2)), OLD)
    dep = d.commands[0].deployment
    assert (dep["surge"], dep["canary"], dep["promoted"]) == (2, 1, False)
    assert d.commands[0].message.endswith("3 replicas to replace, 1 canaries first, then 1 at a time, 2 extra")


def test_every_replica_current_and_healthy_long_enough_is_success():
    d = run(job(V1, V2), NEW, dep=deployment())
    assert d.commands == [c.SetDeployment(epoch=EPOCH, job="web", message="deploy of web version 2 succeeded",
                                          deployment={**deployment(), "status": "successful", "finished_at": NOW})]


def test_healthy_for_less_than_min_healthy_is_not_yet_ready():
    pl = NEW[:2] + [p("z", 2, 2, healthy_at=NOW - 299)]
    assert run(job(V1, V2), pl, dep=deployment()).commands == []
    pl = NEW[:2] + [p("z", 2, 2, healthy_at=NOW - 300)]
    assert run(job(V1, V2), pl, dep=deployment()).commands[0].deployment["status"] == "successful"


@pytest.mark.parametrize("stable,auto_revert,status,rollback", [
    ((1,), True, "reverted", 1),
    ((), True, "failed", None),
    ((1,), False, "failed", None),
])
def test_past_the_deadline_the_deploy_fails_and_reverts_to_the_last_stable_version(stable, auto_revert, status,
                                                                                   rollback):
    v2 = spec("2", auto_revert=auto_revert)
    pl = [p("a", 0, 1), p("b", 1, 1), p("x", 2, 2, health="unhealthy", healthy_at=None)]
    d = run(job(V1, v2, stable=stable), pl, dep=deployment(deadline=NOW - 1))
    msg = "deploy of web version 2 failed: not healthy by its deadline"
    want: list[c.Command] = [c.SetDeployment(
        epoch=EPOCH, job="web", message=msg + (f"; rolling back to version {rollback}" if rollback else ""),
        deployment={**deployment(deadline=NOW - 1), "status": status, "finished_at": NOW,
                    "reason": "not healthy by the deadline (20s)"})]
    if rollback:
        want.append(c.RollbackJob(name="web", version=rollback))
    assert d.commands == want


def test_at_the_deadline_is_not_yet_past_it():
    pl = [p("a", 0, 1), p("b", 1, 1), p("x", 2, 2, health="unhealthy", healthy_at=None)]
    assert all(not isinstance(x, c.SetDeployment) for x in run(job(V1, V2), pl, dep=deployment(deadline=NOW)).commands)


def test_the_last_stable_version_is_one_whose_spec_differs_from_the_current():
    # versions 1 and 3 are stable; 3 has the same spec as 4 (the current one): rolling back to it changes nothing
    pl = [p("a", 0, 2), p("b", 1, 2), p("x", 2, 4, health="unhealthy", healthy_at=None)]
    d = run(job(V1, spec("2"), V2, V2, stable=(1, 3)), pl, dep=deployment(version=4, deadline=NOW - 1))
    assert d.commands[-1] == c.RollbackJob(name="web", version=1)


# -- batches --

def test_one_outdated_replica_at_a_time_lowest_id_first():
    d = run(job(V1, V2), [OLD[2], OLD[0], OLD[1]], dep=deployment())
    assert d.commands == [retire(["a"], "deploy of version 2")]


def test_no_batch_while_one_is_retiring_or_a_new_replica_is_not_ready():
    retiring = [p("a", 0, 1, retiring_at=NOW - 100), p("b", 1, 1), p("c", 2, 1)]
    assert run(job(V1, V2), retiring, dep=deployment()).commands == []
    starting = [p("x", 0, 2, state="starting", health="unknown", healthy_at=None), p("b", 1, 1), p("c", 2, 1)]
    assert run(job(V1, V2), starting, dep=deployment()).commands == []


@pytest.mark.parametrize("max_unavailable,published,retired", [
    (1, 3, ["a"]),
    (1, 2, []),                  # one endpoint already missing: the budget is spent
    (2, 3, ["a", "b"]),
    (2, 2, ["a"]),
    (1, 5, ["a", "b", "c"]),     # two surge replicas serving add to the budget
])
def test_the_batch_size_is_max_unavailable_plus_serving_surge(max_unavailable, published, retired):
    d = run(job(V1, spec("2", max_unavailable=max_unavailable)), OLD, dep=deployment(), published=published)
    assert d.commands == ([retire(retired, "deploy of version 2")] if retired else [])


def test_outdated_replicas_that_are_not_serving_are_retired_at_once():
    pl = [p("a", 0, 1, health="unhealthy"), p("b", 1, 1), p("c", 2, 1)]
    d = run(job(V1, V2), pl, dep=deployment())
    assert d.commands == [retire(["a"], "deploy of version 2 (not serving)"), retire(["b"], "deploy of version 2")]


def test_canaries_run_beside_the_old_version_until_promoted():
    dep = deployment(canary=1, promoted=False)
    pl = OLD + [p("k", 3, 2)]
    assert run(job(V1, spec("2", canary=1)), pl, dep=dep, published=4).commands == []
    # waiting for promotion, the deadline does not fail the deploy
    assert run(job(V1, spec("2", canary=1)), pl, dep={**dep, "deadline": NOW - 1}, published=4).commands == []


def test_healthy_canaries_are_promoted_automatically_when_asked():
    dep = deployment(canary=1, promoted=False)
    d = run(job(V1, spec("2", canary=1, auto_promote=True)), OLD + [p("k", 3, 2)], dep=dep, published=4)
    assert d.commands == [c.SetDeployment(epoch=EPOCH, job="web", deployment={**dep, "promoted": True},
                                          message="1 canaries of web version 2 healthy: promoted automatically")]


def test_canaries_not_healthy_by_the_deadline_fail_the_deploy():
    dep = deployment(canary=1, promoted=False, deadline=NOW - 1)
    pl = OLD + [p("k", 3, 2, health="unhealthy", healthy_at=None)]
    d = run(job(V1, spec("2", canary=1, auto_promote=True)), pl, dep=dep, published=3)
    assert d.commands[0].deployment["status"] == "failed"


def test_surge_replicas_retire_once_the_deploy_is_done():
    pl = NEW + [p("s1", 3, 2), p("s2", 4, 2)]
    dep = deployment(surge=2)
    d = run(job(V1, V2), pl, dep=dep, published=5)
    assert d.commands == [retire(["s1", "s2"], "deploy of version 2 done: extra replicas retire"),
                          c.SetDeployment(epoch=EPOCH, job="web", deployment={**dep, "surge": 0})]
    # not while a replica that stays is still unready, nor twice
    unready = [p("x", 0, 2, healthy_at=NOW)] + NEW[1:] + [p("s1", 3, 2)]
    assert run(job(V1, V2), unready, dep=dep, published=4).commands == []
    retiring = NEW + [p("s1", 3, 2, retiring_at=NOW - 1)]
    assert run(job(V1, V2), retiring, dep=dep, published=3).commands == []


# -- drains --

def test_a_drain_moves_one_replica_at_a_time_within_the_disruption_budget():
    pl = [p("b", 1, 1, machine="m1"), p("a", 0, 1, machine="m1"), p("c", 2, 1, machine="m2")]
    d = run(job(V1), pl, ms=machines(m1={"since": 0, "deadline": None}))
    assert d.commands == [retire(["a"], "machine m1 draining")] and d.held is None


def test_a_drain_at_the_budget_is_held_back_and_says_why():
    pl = [p("a", 0, 1, machine="m1"), p("b", 1, 1, machine="m2"), p("c", 2, 1, machine="m2")]
    d = run(job(V1), pl, published=2, ms=machines(m1={"since": 0, "deadline": None}))
    assert d.commands == []
    assert d.held == ("drain held back: job web is at its disruption budget (max_unavailable 1, "
                      "1 of 3 replicas unavailable)")
    d0 = run(job(spec("1", disruption=0)), pl, ms=machines(m1={"since": 0, "deadline": None}))
    assert d0.commands == [] and d0.held is not None


def test_past_the_drain_deadline_everything_left_on_the_machine_goes():
    pl = [p("a", 0, 1, machine="m1"), p("b", 1, 1, machine="m1"), p("c", 2, 1, machine="m1", retiring_at=NOW - 1)]
    d = run(job(V1), pl, published=1, ms=machines(m1={"since": 0, "deadline": NOW - 1}))
    assert d.commands == [retire(["a", "b"], "machine m1 draining")] and d.held is None


def test_a_drain_goes_on_while_a_deploy_waits_for_its_batch():
    pl = [p("a", 0, 1, retiring_at=NOW - 100), p("b", 1, 1), p("x", 2, 2, machine="m2")]
    d = run(job(V1, V2), pl, dep=deployment(), ms=machines(m2={"since": 0, "deadline": None}))
    assert d.commands == [retire(["x"], "machine m2 draining")]


def test_a_deploy_batch_goes_before_a_drain():
    pl = [p("a", 0, 1), p("b", 1, 1), p("x", 2, 2, machine="m2")]
    d = run(job(V1, V2), pl, dep=deployment(), ms=machines(m2={"since": 0, "deadline": None}))
    assert d.commands == [retire(["a"], "deploy of version 2")]


# -- the controller on a fake clock: the committed state and time alone drive it --

RAW = {"name": "web", "image": "web:1", "command": ["web"], "replicas": 3, "ports": [{"name": "http"}],
       "resources": {"cpu": "50m", "memory": "32Mi"},
       "update": {"max_unavailable": 1, "drain_delay": "500ms", "min_healthy": "1s", "deadline": "20s"}}
async def running(clock: FakeClock, raw: dict | None = None) -> FakeReplica:
    """Version 1 of web on three healthy replicas of machine m1."""
    r = FakeReplica(clock)
    v1 = validate_spec(raw or RAW)
    for cmd in (c.ClaimEpoch(term=EPOCH), machine("m1"), c.PutJob(spec=v1)):
        assert (await r.propose(cmd)).ok
    items = [{"job": "web", "version": 1, "replica": i, "machine": "m1", "resources": v1["resources"],
              "ports": {"http": 31000 + i}} for i in range(3)]
    assert (await r.propose(c.Plan(epoch=EPOCH, place=items))).ok
    for pl in r.state.job_placements("web"):
        assert (await r.propose(c.PlacementUpdate(placement=pl.id, machine="m1", state="running",
                                                  health="healthy"))).ok
    assert len(r.state.discovery[v1.get("service") or "web"]["endpoints"]) == 3
    return r


async def deployed(clock: FakeClock) -> FakeReplica:
    r = await running(clock)
    clock.advance(60)
    assert (await r.propose(c.PutJob(spec=validate_spec({**RAW, "env": {"V": "2"}})))).ok
    return r


async def test_the_deploy_deadline_passes_on_the_injected_clock():
    clock = FakeClock()
    r = await deployed(clock)
    ctl = RolloutController(r, EPOCH, clock=clock)
    await ctl.tick()
    dep = r.state.deployments["web"]
    assert dep.status == "running" and dep.deadline == clock.now_ms() + 20_000
    await ctl.tick()                                  # the first batch: one replica leaves discovery
    assert [type(x) for x in r.proposed[-1:]] == [c.Retire]
    clock.advance(0.499)
    await ctl.tick()
    assert not isinstance(r.proposed[-1], c.Plan)     # its drain delay is not over
    clock.advance(0.001)
    await ctl.tick()
    assert isinstance(r.proposed[-1], c.Plan) and r.proposed[-1].stop[0]["reason"] == "deploy of version 2"
    # no replacement ever turns healthy (no scheduler here): the deploy fails at its deadline, not a ms before
    clock.advance(19.499)
    await ctl.tick()
    assert r.state.deployments["web"].status == "running"
    clock.advance(0.002)
    await ctl.tick()
    assert r.state.deployments["web"].status == "failed"  # version 1 was never marked stable: no revert


async def test_the_controller_loop_waits_on_its_clock_not_on_real_time():
    clock = FakeClock()
    r = await deployed(clock)
    ctl = RolloutController(r, EPOCH, clock=clock)
    task = asyncio.create_task(ctl.run())
    try:
        await until(lambda: "web" in r.state.deployments and r.state.deployments["web"].status == "failed",
                    "the 20 s deadline passing")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert clock.sleeps and set(clock.sleeps) == {0.2}        # one pass every 200 ms of the injected clock
    assert 100 <= len(clock.sleeps) <= 110                    # 20 s of deadline, 0.5 s of drain delay


async def test_a_held_drain_is_recorded_once_on_the_deployment_and_cleared_when_it_moves():
    clock = FakeClock()
    r = await running(clock, {**RAW, "disruption": {"max_unavailable": 0}})
    done = {"job": "web", "version": 1, "status": "successful", "finished_at": 5}
    assert (await r.propose(c.SetDeployment(epoch=EPOCH, job="web", deployment=done))).ok
    assert (await r.propose(c.DrainMachine(machines=["m1"]))).ok
    ctl = RolloutController(r, EPOCH, clock=clock)
    for _ in range(3):
        clock.advance(0.2)
        await ctl.tick()
    held = [x for x in r.of(c.SetDeployment) if x.deployment.get("held")]
    assert len(held) == 1 and held[0].message.startswith("drain held back: job web is at its disruption budget")
    assert held[0].deployment == {**done, "held": held[0].message}  # the deployment record keeps its fields
    assert ctl.status()["held"] == {"web": held[0].message}
    assert r.of(c.Retire) == []
    assert (await r.propose(c.PutJob(spec=validate_spec(RAW)))).ok  # the budget back to 1 (a new version)
    r.proposed.clear()
    await ctl.tick()
    assert ctl.status()["held"] == {}


async def test_endpoints_are_counted_under_the_jobs_service_name():
    clock = FakeClock()
    r = await running(clock, {**RAW, "service": "api"})  # discovery holds api's endpoints, none under web
    assert (await r.propose(c.DrainMachine(machines=["m1"]))).ok
    ctl = RolloutController(r, EPOCH, clock=clock)
    await ctl.tick()
    assert [x.reason for x in r.of(c.Retire)] == ["machine m1 draining"] and ctl.status()["held"] == {}


async def test_after_a_rejected_command_the_rest_of_that_jobs_pass_waits_for_the_next():
    clock = FakeClock()
    r = await deployed(clock)
    await RolloutController(r, EPOCH, clock=clock).tick()  # the deployment starts
    await RolloutController(r, EPOCH, clock=clock).tick()  # a batch retires
    clock.advance(0.5)
    tried: list[c.Command] = []

    class Refusing:
        def read(self, fn):
            return r.read(fn)

        async def propose(self, cmd):
            tried.append(cmd)
            return SimpleNamespace(ok=False, error="refused", index=0, value={})
    clock.advance(20)  # the drain delay is over and the deadline passed: a stop, then the deployment fails
    await RolloutController(Refusing(), EPOCH, clock=clock).tick()
    assert [type(x) for x in tried] == [c.Plan]


def test_the_controllers_leadership_builds_run_on_the_replicas_clock():
    """Leadership calls each controller factory with (replica, epoch): the controller's time is the replica's."""
    clock = FakeClock()
    r = FakeReplica(clock)
    assert RolloutController(r, EPOCH).clock is clock and Autoscaler(r, 1).clock is clock


# -- a pass decides only the jobs whose inputs moved (or whose decision reads the clock) --

async def test_a_settled_job_is_decided_once_until_one_of_its_inputs_moves():
    clock = FakeClock()
    r = await running(clock)
    ctl = RolloutController(r, EPOCH, clock=clock)
    await ctl.tick()
    assert ctl.decided == 1 and ctl.status()["quiet_jobs"] == 1
    for _ in range(5):                                   # nothing changed: not decided again, however late
        clock.advance(60)
        await ctl.tick()
    assert ctl.decided == 1
    pl = r.state.job_placements("web")[0]               # a placement of the job changes: decided again
    for health in ("unhealthy", "healthy"):
        assert (await r.propose(c.PlacementUpdate(placement=pl.id, machine="m1", state="running",
                                                  health=health))).ok
        await ctl.tick()
        await ctl.tick()
    assert ctl.decided == 3
    assert (await r.propose(machine("m2"))).ok          # a machine registered, lost or back: not an input
    assert (await r.propose(c.MachineDown(machine="m2", reason="test"))).ok
    await ctl.tick()
    assert ctl.decided == 3
    assert (await r.propose(c.DrainMachine(machines=["m2"]))).ok   # a drain: every job is decided again
    await ctl.tick()
    assert ctl.decided == 4 and r.of(c.Retire) == []
    assert (await r.propose(c.DrainMachine(machines=["m1"]))).ok   # and a drain of its machine is acted on at once
    await ctl.tick()
    assert [x.reason for x in r.of(c.Retire)] == ["machine m1 draining"]


async def test_a_new_version_and_a_running_deploy_are_decided_every_pass():
    clock = FakeClock()
    r = await deployed(clock)
    ctl = RolloutController(r, EPOCH, clock=clock)
    await ctl.tick()                                     # the deployment starts (a command: not quiet)
    assert r.state.deployments["web"].status == "running" and ctl.status()["quiet_jobs"] == 0
    n = ctl.decided
    for _ in range(3):
        clock.advance(0.2)
        await ctl.tick()
    assert ctl.decided == n + 3                          # a running deploy reads the clock: every pass


async def test_a_skipped_pass_loses_no_work_against_a_fresh_controller():
    """The memo is only a shortcut: after each change, a pass of the memoizing controller proposes what a
    controller without a memo (a new leader's) would propose on the same state."""
    clock = FakeClock()
    r = await running(clock)
    ctl = RolloutController(r, EPOCH, clock=clock)

    class Recorder:                                      # reads the same state, proposes nothing
        tried: list[c.Command] = []

        def read(self, fn):
            return r.read(fn)

        async def propose(self, cmd):
            self.tried.append(cmd)
            return SimpleNamespace(ok=True, error=None, index=0, value={})
    steps = [machine("m2"), c.PutJob(spec=validate_spec({**RAW, "env": {"V": "2"}})), c.DrainMachine(machines=["m2"]),
             c.DrainMachine(machines=["m1"])]
    seen = []
    for step in steps:
        await ctl.tick()
        await ctl.tick()
        assert (await r.propose(step)).ok
        clock.advance(1)
        rec = Recorder()
        rec.tried = []
        await RolloutController(rec, EPOCH, clock=clock).tick()
        before = len(r.proposed)
        await ctl.tick()
        mine = [type(x).__name__ for x in r.proposed[before:]]
        assert mine == [type(x).__name__ for x in rec.tried], step
        seen += mine
    assert "SetDeployment" in seen and "Plan" in seen     # the steps made work to do
