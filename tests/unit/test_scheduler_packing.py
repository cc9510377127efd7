"""Packing as a specification: the pass uses no more machines than needed on instances where a job-by-job
greedy wastes one, and the packing repair never over-commits a machine, never breaks a spread rule, never
stacks more replicas of a job on one machine than the greedy pass did, and is deterministic."""
from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from raftctl.scheduler import driver, packing, schedule
from raftctl.scheduler.machines import build_views
from raftctl.statemachine.records import Job, Machine
from raftctl.statemachine.spec import validate_spec
from tests.unit.record_fixtures import as_job, as_machine, as_placement

GI = 1 << 30
RESOURCES = ("cpu", "memory", "pids")


def machine(mid: str, zone: str = "z1", cpu: int = 4000, mem: int = 8 * GI, pids: int = 100_000,
            ports: tuple[int, int] = (20000, 20100), rack: str | None = None) -> Machine:
    return as_machine({"id": mid, "address": "10.0.0.1",
                       "fault_domain": {"region": "r1", "zone": zone, "rack": rack or f"k-{mid}"},
                       "labels": {}, "resources": {"cpu": cpu, "memory": mem, "pids": pids}, "ports": list(ports),
                       "status": "up", "drain": None, "eligible": True, "runtime": "sim"})


def job(name: str, replicas: int, cpu: str, mem: str, **spec) -> Job:
    s = validate_spec({"name": name, "image": "x:1", "command": ["x"], "replicas": replicas,
                       "resources": {"cpu": cpu, "memory": mem}, **spec})
    return as_job({"name": name, "version": 1, "versions": [{"version": 1, "spec": s}], "status": "running",
                   "replicas": replicas})


def lower_bound(plan, ms: dict) -> int:
    cap = next(iter(ms.values())).resources
    return max(math.ceil(sum(p.resources[k] for p in plan.place) / cap[k]) for k in ("cpu", "memory"))


# Six 4-core / 8 GiB machines. The pass orders jobs by their share of a typical 16-core / 64 GiB machine, then
# places each job's replicas by best fit: the greedy alone (the code before the repair) used one machine more
# than the lower bound on each of these; the pass now uses the bound.
WASTES_ONE = [
    ("cpu-heavy job first fills a machine's CPU; the memory-heavy replicas then take a machine each",
     {"j0": (2, "2", "1Gi"), "j1": (2, "500m", "6Gi")}, 2),
    ("two CPU-heavy replicas fill one machine; the 6 GiB replica and the 4 GiB one cannot share",
     {"j0": (1, "1", "4Gi"), "j1": (2, "2", "256Mi"), "j2": (1, "500m", "6Gi")}, 2),
    ("tiny replicas were spread over empty machines by the anti-affinity tie-breaker",
     {"big": (1, "4", "128Mi"), "tiny": (3, "10m", "16Mi")}, 2),
    ("a 100m replica opened a machine of its own",
     {"j0": (1, "100m", "1Gi"), "j1": (2, "1500m", "4Gi"), "j2": (2, "2", "256Mi")}, 2),
    ("three 6 GiB replicas took three machines beside a CPU-full one",
     {"j0": (3, "1500m", "6Gi"), "j1": (2, "2", "1Gi")}, 3),
]


@pytest.mark.parametrize("why,jobs,machines", WASTES_ONE, ids=[c[0] for c in WASTES_ONE])
def test_the_pass_uses_the_fewest_machines_where_the_greedy_wasted_one(why, jobs, machines):
    ms = {f"m{i}": machine(f"m{i}") for i in range(6)}
    js = {n: job(n, *v) for n, v in jobs.items()}
    plan = schedule(js, {}, ms, index=1, now=0)
    assert len(plan.place) == sum(v[0] for v in jobs.values())
    assert len({p.machine for p in plan.place}) == machines == lower_bound(plan, ms)
    assert_valid(plan, js, ms, {})


def test_a_pass_with_no_machines_or_nothing_placed_says_why_and_does_not_raise():
    # the leader's first pass runs before any agent registered (the repair raised on max() of no machines and
    # the scheduler loop died)
    js = {"j0": job("j0", 2, "1", "1Gi")}
    assert schedule(js, {}, {}, index=1, now=0).pending == {"j0": "2 replicas unplaced; no machines registered"}
    plan = schedule(js, {}, {"m0": machine("m0", cpu=500)}, index=1, now=0)
    assert plan.place == [] and plan.pending["j0"] == "2 replicas unplaced; 1 machines: 1 insufficient cpu"
    assert schedule({}, {}, {}, index=1, now=0).place == []


def test_existing_placements_never_move_and_machines_in_use_are_not_emptied():
    # m0 runs a replica already: the repair moves only this pass's placements
    ms = {f"m{i}": machine(f"m{i}") for i in range(4)}
    existing = {"p0": as_placement({"id": "p0", "job": "old", "version": 1, "replica": 0, "machine": "m0",
                                    "desired": "run", "state": "running",
                                    "resources": {"cpu": 100, "memory": GI // 4, "pids": 256}, "ports": {}})}
    js = {"old": job("old", 1, "100m", "256Mi"), "j0": job("j0", 2, "2", "1Gi"), "j1": job("j1", 2, "500m", "6Gi")}
    plan = schedule(js, existing, ms, index=1, now=0)
    assert all(p.job != "old" for p in plan.place) and plan.stop == [] and plan.preempt == []
    assert len({p.machine for p in plan.place} | {"m0"}) == 2
    assert_valid(plan, js, ms, existing)


def test_the_repair_is_bounded_by_its_work_budget(monkeypatch):
    # a pids-bound cluster the load bound cannot see (3 replicas a machine): the repair gives up within its
    # budget instead of searching on
    ms = {f"m{i:03d}": machine(f"m{i:03d}", cpu=64000, mem=1 << 40, pids=1000) for i in range(200)}
    js = {"web": job("web", 500, "500m", "1Gi")}
    spent = []
    real = packing.repair
    monkeypatch.setattr(driver, "repair", lambda *a: spent.append(real(*a)) or spent[-1])
    plan = schedule(js, {}, ms, index=1, now=0)
    assert len(plan.place) == 500 and len({p.machine for p in plan.place}) == 167
    budget = packing.REPAIR_WORK_BASE + packing.REPAIR_WORK_PER_PLACEMENT * 500
    assert 0 < spent[0] <= budget + len(ms)


def assert_valid(plan, jobs: dict, ms: dict, existing: dict) -> None:
    """No machine over-committed (with what already runs there), no port taken twice or outside its range."""
    used = {m: Counter() for m in ms}
    ports = {m: [] for m in ms}
    for p in existing.values():
        for k in RESOURCES:
            used[p.machine][k] += p.resources[k]
        ports[p.machine].extend(p.ports.values())
    for p in plan.place:
        for k, v in p.resources.items():
            used[p.machine][k] += v
        ports[p.machine].extend(p.ports.values())
        assert jobs[p.job].versions[0].spec.resources.amounts() == p.resources
    for m in ms:
        assert all(used[m][k] <= ms[m].resources[k] for k in RESOURCES), (m, used[m])
        assert len(ports[m]) == len(set(ports[m]))
        lo, hi = ms[m].ports
        assert all(lo <= x <= hi for x in ports[m])


def repair_then_recount(ms: dict):
    """driver.repair, then a check that the views it updated move by move equal views built afresh from the
    repaired plan (free resources, ports taken, replicas per job)."""
    def run(plan, views, fits, opened, check):
        work = packing.repair(plan, views, fits, opened, check)
        as_state = {f"new{i}": as_placement({"id": f"new{i}", "job": p.job, "version": p.version, "replica": p.replica,
                                             "machine": p.machine, "desired": "run", "state": "pending",
                                             "resources": p.resources, "ports": p.ports})
                    for i, p in enumerate(plan.place)}
        fresh = build_views(ms, as_state)
        for mid, v in views.items():
            assert (v.free, v.ports, v.free_ports) == (fresh[mid].free, fresh[mid].ports, fresh[mid].free_ports)
            assert +v.by_job == +fresh[mid].by_job
        return work
    return run


def spread_gap(plan, ms: dict, name: str, level: str) -> int:
    """The most minus the fewest of the job's replicas in one domain of ``level`` (every domain counted)."""
    per = Counter({ms[m].fault_domain[level]: 0 for m in ms})
    per.update(ms[p.machine].fault_domain[level] for p in plan.place if p.job == name)
    return max(per.values(), default=0) - min(per.values(), default=0)


def most_on_one_machine(plan, name: str) -> int:
    return max(Counter(p.machine for p in plan.place if p.job == name).values(), default=0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([2000, 4000, 8000]), st.sampled_from([4, 8, 16])), min_size=0, max_size=8),
       st.lists(st.tuples(st.integers(1, 8), st.sampled_from(["10m", "100m", "500m", "1", "2", "3"]),
                          st.sampled_from(["16Mi", "256Mi", "1Gi", "3Gi", "6Gi"]),
                          st.sampled_from([None, "hard", "soft"]), st.sampled_from(["zone", "rack"]),
                          st.booleans()), min_size=1, max_size=5),
       st.integers(0, 1000))
def test_the_repair_never_overcommits_nor_breaks_spread_or_anti_affinity(mspecs, jspecs, index):
    ms = {f"m{i}": machine(f"m{i}", zone=f"z{i % 3}", cpu=c, mem=g * GI, ports=(20000, 20005), rack=f"k{i % 2}")
          for i, (c, g) in enumerate(mspecs)}
    jobs = {}
    for i, (n, cpu, mem, mode, level, static) in enumerate(jspecs):
        ports = [{"name": "http"}] + ([{"name": "admin", "static": 20005}] if static else [])
        jobs[f"j{i}"] = job(f"j{i}", n, cpu, mem, ports=ports,
                            spread=[{"level": level, "mode": mode}] if mode else [])
    with pytest.MonkeyPatch.context() as m:   # the repair's running account of the machines stays exact
        m.setattr(driver, "repair", repair_then_recount(ms))
        plan = schedule(jobs, {}, ms, index=index, now=0)
    assert plan == schedule(jobs, {}, ms, index=index, now=0)
    greedy = schedule(jobs, {}, ms, index=index, now=0, pack=False)
    assert_valid(plan, jobs, ms, {})
    assert [(p.job, p.replica) for p in plan.place] == [(p.job, p.replica) for p in greedy.place]
    assert len({p.machine for p in plan.place}) <= len({p.machine for p in greedy.place})
    for name, j in jobs.items():
        spec = j.versions[0].spec
        assert most_on_one_machine(plan, name) <= most_on_one_machine(greedy, name)
        for rule in spec.spread:
            assert spread_gap(plan, ms, name, rule.level) <= spread_gap(greedy, ms, name, rule.level)
            if rule.mode == "hard":
                domains = {m[rule.level] for m in (x.fault_domain for x in ms.values())}
                per = Counter(ms[p.machine].fault_domain[rule.level] for p in plan.place if p.job == name)
                assert all(c <= -(-j.replicas // len(domains)) for c in per.values())


def test_the_lower_bound_the_repair_stops_at_does_not_move_with_its_moves(monkeypatch):
    # computed once per repair (session 17): what a move lifts off one machine it drops on another
    seen = []
    real = packing.Repair.run

    def run(self):
        self.measure()
        before = self.need
        real(self)
        self.measure()
        seen.append((before, self.need, self.emptied))

    monkeypatch.setattr(packing.Repair, "run", run)
    for _, jobs, machines in WASTES_ONE:
        ms = {f"m{i}": machine(f"m{i}") for i in range(6)}
        plan = schedule({n: job(n, *v) for n, v in jobs.items()}, {}, ms, index=1, now=0)
        assert len({p.machine for p in plan.place}) == machines
    assert len(seen) == len(WASTES_ONE)
    assert all(before == after for before, after, _ in seen) and any(emptied for _, _, emptied in seen)


def test_a_pass_already_at_the_bound_skips_the_rest_of_the_repairs_setup(monkeypatch):
    # session 18: most passes of a full fleet (every one after a failover) leave as few machines in use as the
    # load allows; the setup's walks over every machine (weights, the most replicas per job) are then not done
    setups = []
    real = packing.Repair.setup

    def setup(self, in_use):
        setups.append(len(in_use))
        real(self, in_use)

    monkeypatch.setattr(packing.Repair, "setup", setup)
    ms = {f"m{i}": machine(f"m{i}") for i in range(6)}
    at_bound = schedule({"j0": job("j0", 4, "2", "1Gi")}, {}, ms, index=1, now=0)
    assert len({p.machine for p in at_bound.place}) == lower_bound(at_bound, ms) == 2
    assert setups == []
    _, jobs, machines = WASTES_ONE[0]
    plan = schedule({n: job(n, *v) for n, v in jobs.items()}, {}, ms, index=1, now=0)
    assert len({p.machine for p in plan.place}) == machines
    assert setups == [machines + 1]    # the greedy's machines in use, one more than the bound: repaired
