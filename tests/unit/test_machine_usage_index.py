"""State.usage, the per-machine usage index (derived, never in a snapshot): for each machine, what its placements
that hold resources use (cpu, memory, pids), the host ports they hold, how many they are, and per (job, version)
how many of them are wanted running. Apply's fit check and every scheduling pass's machine views read it instead
of walking placements, so after any sequence of commands it must equal a recomputation from the placements; and
its entries are immutable, so a shallow copy taken under the apply lock stays consistent while apply goes on."""
from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping

import cbor2
from hypothesis import given, settings, strategies as st

from raftctl.scheduler import schedule
from raftctl.scheduler.machines import MachineView, build_views
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.records import Machine, Placement
from raftctl.statemachine.state import MachineUsage, State

EPOCH = 1
JOBS = ["web", "api", "db"]
MACHINES = ["m1", "m2", "m3"]


def spec(name: str, replicas: int, cpu: int, ports: int) -> dict:
    return {"name": name, "image": f"{name}:1", "command": ["x"], "replicas": replicas,
            "resources": {"cpu": cpu, "memory": 64 << 20, "pids": 16},
            "ports": [{"name": f"p{i}", "static": None, "to": None} for i in range(ports)], "service": name}


def register(mid: str, narrow: bool) -> c.RegisterMachine:
    # re-registering with a narrower port range leaves held ports outside it (views count free ports in range)
    return c.RegisterMachine(machine=mid, address="127.0.0.2", fault_domain={"zone": mid}, labels={},
                             resources={"cpu": 1000, "memory": 1 << 30, "pids": 100},
                             ports=[31000, 31001] if narrow else [31000, 31003], runtime="sim")


def item(job: str, version: int, replica: int, mid: str, cpu: int, ports: list[int]) -> dict:
    return {"job": job, "version": version, "replica": replica, "machine": mid,
            "resources": {"cpu": cpu, "memory": 64 << 20, "pids": 16},
            "ports": {f"p{i}": port for i, port in enumerate(ports)}}


jobs_st = st.sampled_from(JOBS)
machines_st = st.sampled_from(MACHINES)
item_st = st.builds(item, jobs_st, st.sampled_from([1, 1, 1, 2, 3]), st.integers(0, 3), machines_st,
                    st.sampled_from([100, 100, 300, 500]), st.lists(st.sampled_from([31000, 31001, 31002, 30999]),
                                                                    max_size=2))
RESTORE = "restore"   # the state replaced by its snapshot's restore


class Pick:
    """A command about existing placements, made when it is applied: ``make`` gets the placements' ids, sorted
    (picked by ``k``), and the state; no placement, no command."""

    def __init__(self, k: int, make: Callable[[str, State], c.Command]) -> None:
        self.k, self.make = k, make

    def command(self, s: State) -> c.Command | None:
        pids = sorted(s.placements)
        return self.make(pids[self.k % len(pids)], s) if pids else None

    def __repr__(self) -> str:
        return f"Pick({self.k}, {self.make.__doc__})"


def _report(state: str, health: str, elsewhere: bool) -> Callable[[str, State], c.Command]:
    def make(pid: str, s: State) -> c.Command:
        machine = "m9" if elsewhere else s.placements[pid].machine
        return c.PlacementUpdate(placement=pid, machine=machine, state=state, health=health)
    make.__doc__ = f"report {state} {health} elsewhere={elsewhere}"
    return make


def _stop(pid: str, s: State) -> c.Command:
    """stop"""
    return c.Plan(epoch=EPOCH, place=[], stop=[{"placement": pid, "reason": "x"}])


def _retire(pid: str, s: State) -> c.Command:
    """retire"""
    return c.Retire(epoch=EPOCH, placements=[pid], reason="x")


report_st = st.builds(_report, st.sampled_from(["starting", "running", "exited", "oom_killed", "stopped", "lost"]),
                      st.sampled_from(["healthy", "unhealthy", ""]), st.sampled_from([False, False, False, True]))
# (weight, strategy): plans placing and commands on the placements made most of a sequence
WEIGHTED = [
    (30, st.builds(lambda items: c.Plan(epoch=EPOCH, place=items), st.lists(item_st, min_size=1, max_size=4))),
    (8, st.builds(Pick, st.integers(0, 50), st.just(_stop))),
    (16, st.builds(Pick, st.integers(0, 50), report_st)),
    (4, st.builds(Pick, st.integers(0, 50), st.just(_retire))),
    (5, st.builds(register, machines_st, st.booleans())),
    (7, st.builds(lambda n, r, cpu, p: c.PutJob(spec=spec(n, r, cpu, p)), jobs_st, st.integers(0, 4),
                  st.sampled_from([100, 300]), st.integers(0, 2))),
    (4, st.builds(lambda m: c.MachineDown(machine=m, reason="ttl"), machines_st)),
    (4, st.builds(lambda m: c.MachineUp(machine=m), machines_st)),
    (4, st.builds(lambda m, d: c.DrainMachine(machines=[m], drain=d), machines_st, st.booleans())),
    (3, st.builds(lambda n, p: c.DeleteJob(name=n, purge=p), jobs_st, st.booleans())),
    (4, st.builds(lambda n, r: c.ScaleJob(name=n, replicas=r), jobs_st, st.integers(0, 4))),
    (3, st.builds(lambda n, v: c.RollbackJob(name=n, version=v), jobs_st, st.integers(1, 3))),
    (8, st.just(RESTORE)),
]
command_st = st.sampled_from([k for k, (w, _) in enumerate(WEIGHTED) for _ in range(w)]).flatmap(
    lambda k: WEIGHTED[k][1])
# every sequence starts with the machines registered and the jobs submitted (else most of it is rejected)
setup_st = st.builds(lambda narrow, specs: [c.ClaimEpoch(term=EPOCH)]
                     + [register(m, n) for m, n in zip(MACHINES, narrow)]
                     + [c.PutJob(spec=spec(j, r, cpu, p)) for j, (r, cpu, p) in zip(JOBS, specs)],
                     st.lists(st.booleans(), min_size=3, max_size=3),
                     st.lists(st.tuples(st.integers(1, 4), st.sampled_from([100, 300]), st.integers(0, 2)),
                              min_size=3, max_size=3))


def run(s: State, cmd: c.Command | Pick | str) -> State:
    """``s`` after ``cmd`` (a restore gives a new state)."""
    if cmd == RESTORE:
        return State.restore(s.snapshot())
    if isinstance(cmd, Pick):
        made = cmd.command(s)
        if made is None:
            return s
        cmd = made
    assert isinstance(cmd, c.Command)
    apply(s, cmd)
    return s


# -- the references, written here from the definitions ------------------------------------------------------

def reference_usage(placements: Mapping[str, Placement]) -> dict[str, MachineUsage]:
    out = {}
    for mid in {p.machine for p in placements.values()}:
        held = [p for p in placements.values() if p.machine == mid and p.state not in ("lost", "stopped")]
        if not held:
            continue
        runs = Counter((p.job, p.version) for p in held if p.desired == "run")
        out[mid] = MachineUsage(cpu=sum(p.resources.get("cpu", 0) for p in held),
                                memory=sum(p.resources.get("memory", 0) for p in held),
                                pids=sum(p.resources.get("pids", 0) for p in held),
                                ports=frozenset(port for p in held for port in p.ports.values()),
                                runs=tuple(sorted(runs.items())), held=len(held))
    return out


def walked_views(machines: Mapping[str, Machine], placements: Mapping[str, Placement]) -> dict[str, MachineView]:
    """Machine views built by walking every placement (how build_views computed them before the index)."""
    views = {}
    for mid in sorted(machines):
        m = machines[mid]
        lo, hi = m.ports
        views[mid] = MachineView(mid, m, dict(m.resources), dict(m.resources), set(), Counter(),
                                 dict(m.fault_domain), hi - lo + 1)
    for p in placements.values():
        v = views.get(p.machine)
        if v is None or p.state in ("lost", "stopped"):
            continue
        for k in ("cpu", "memory", "pids"):
            v.free[k] -= p.resources.get(k, 0)
        v.take_ports(p.ports)
        if p.desired == "run":
            v.by_job[(p.job, p.version)] += 1
    return views


def check(s: State) -> None:
    assert s.usage == reference_usage(s.placements)
    assert build_views(s.machines, s.placements, s.usage) == walked_views(s.machines, s.placements)
    assert build_views(s.machines, s.placements) == walked_views(s.machines, s.placements)
    for mid in s.machines:
        assert s.machine_live(mid) == any(p.holds_resources() for p in s.machine_placements(mid))
    # the other derived indexes the same two methods keep
    assert {pid for pids in s.by_machine.values() for pid in pids} == set(s.placements)
    assert {pid for pids in s.by_job.values() for pid in pids} == set(s.placements)
    assert all(s.placements[pid].machine == mid for mid, pids in s.by_machine.items() for pid in pids)
    assert all(s.placements[pid].job == job for job, pids in s.by_job.items() for pid in pids)
    # the placements by (state, health) that /metrics reports
    assert s.placement_counts == Counter((p.state, p.health) for p in s.placements.values())
    assert 0 not in s.placement_counts.values()


@settings(max_examples=200, deadline=None)
@given(setup_st, st.lists(command_st, min_size=1, max_size=50), st.integers(0, 50))
def test_the_index_equals_a_recomputation_after_every_command(setup, cmds, copy_at):
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    copied = None
    for i, cmd in enumerate(cmds):
        if i == copy_at:   # what the scheduler loop takes under the apply lock, read after apply went on
            copied = dict(s.placements), dict(s.usage)
        s = run(s, cmd)
        check(s)
    if copied is not None:
        placements, usage = copied
        assert usage == reference_usage(placements)
    # never in a snapshot
    assert set(cbor2.loads(s.snapshot())) == set(cbor2.loads(State().snapshot()))


@settings(max_examples=60, deadline=None)
@given(setup_st, st.lists(command_st, max_size=40), st.lists(st.tuples(jobs_st, st.integers(0, 6)), max_size=3))
def test_a_pass_given_the_index_plans_what_a_pass_walking_the_placements_plans(setup, cmds, wants):
    s = State()
    for cmd in setup + cmds:
        s = run(s, cmd)
    for name, replicas in wants:   # something to place
        apply(s, c.PutJob(spec=spec(name, replicas, 100, 1)))
    given_index = schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, usage=dict(s.usage))
    assert given_index == schedule(s.jobs, s.placements, s.machines, index=s.index, now=0)


def test_a_plan_counts_each_placement_at_once_so_the_next_item_sees_it() -> None:
    s = State()
    for cmd in (c.ClaimEpoch(term=EPOCH), register("m1", False), c.PutJob(spec=spec("web", 4, 300, 1))):
        assert apply(s, cmd).ok
    r = apply(s, c.Plan(epoch=EPOCH, place=[item("web", 1, 0, "m1", 300, [31000]),
                                            item("web", 1, 1, "m1", 300, [31000]),     # the port the first took
                                            item("web", 1, 2, "m1", 300, [31001]),
                                            item("web", 1, 3, "m1", 500, [31002])]))   # 1100 of 1000 cpu
    assert [x["reason"] for x in r.value["rejected"]] == ["port 31000 already in use on m1", "insufficient cpu on m1"]
    assert s.usage["m1"] == MachineUsage(cpu=600, memory=128 << 20, pids=32, ports=frozenset({31000, 31001}),
                                         runs=((("web", 1), 2),), held=2)
    first = r.value["placed"][0]
    assert apply(s, c.Plan(epoch=EPOCH, place=[], stop=[{"placement": first, "reason": "x"}])).ok
    assert s.usage["m1"].runs == ((("web", 1), 1),) and s.usage["m1"].held == 2   # stopping: still holds its share
    assert apply(s, c.PlacementUpdate(placement=first, machine="m1", state="stopped")).ok
    assert s.usage["m1"] == MachineUsage(cpu=300, memory=64 << 20, pids=16, ports=frozenset({31001}),
                                         runs=((("web", 1), 1),), held=1)
    assert apply(s, c.MachineDown(machine="m1", reason="ttl")).ok
    assert "m1" not in s.usage and not s.machine_live("m1")


def test_placement_counts_follow_a_placement_through_its_life():
    """/metrics' placements by (state, health) after each step of one placement's life and a neighbour's, ending
    with the placement removed (a stop the agent reported done)."""
    s = State()
    for cmd in [c.ClaimEpoch(term=EPOCH), register("m1", False), c.PutJob(spec=spec("web", 2, 100, 0))]:
        assert apply(s, cmd).ok
    assert apply(s, c.Plan(epoch=EPOCH, place=[item("web", 1, 0, "m1", 100, []),
                                               item("web", 1, 1, "m1", 100, [])])).ok
    first, second = sorted(s.placements)
    steps = [
        (None, {("pending", "unknown"): 2}),
        (c.PlacementUpdate(placement=first, machine="m1", state="running", health="healthy"),
         {("pending", "unknown"): 1, ("running", "healthy"): 1}),
        (c.PlacementUpdate(placement=second, machine="m1", state="running", health="unhealthy"),
         {("running", "healthy"): 1, ("running", "unhealthy"): 1}),
        (c.PlacementUpdate(placement=second, machine="m1", state="running", health="healthy"),
         {("running", "healthy"): 2}),
        (c.Plan(epoch=EPOCH, place=[], stop=[{"placement": first, "reason": "x"}]), {("running", "healthy"): 2}),
        (c.PlacementUpdate(placement=first, machine="m1", state="stopped", health=""),
         {("running", "healthy"): 1}),
    ]
    for cmd, want in steps:
        if cmd is not None:
            assert apply(s, cmd).ok
        assert s.placement_counts == want
        assert State.restore(s.snapshot()).placement_counts == want
    assert set(s.placements) == {second}
