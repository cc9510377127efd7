"""Which jobs a change gives work to (scheduler/dirty.py), and the promise the leader's loop relies on: after a
settled pass, a pass over just those jobs plans exactly what a pass over every job would."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from msgspec.structs import replace

from raftctl.scheduler import schedule
from raftctl.scheduler.dirty import affected_jobs
from raftctl.statemachine.records import Job, Machine, Placement
from tests.unit.record_fixtures import as_placement
from tests.unit.test_scheduler import GI, job, machine, placement

M = {"a": machine("a"), "b": machine("b")}
J = {"web": job("web", replicas=2), "db": job("db", replicas=1), "idle": job("idle", replicas=0)}
P = {"w0": placement("w0", 0, "a"), "w1": placement("w1", 1, "b"), "d0": placement("d0", 0, "b", jobname="db", port=20001)}
BASE = (J, P, M)


def walked(before: tuple[dict, dict, dict], after: tuple[dict, dict, dict]) -> set[str]:
    """``affected_jobs`` given what a comparison of every placement finds (jobs, placements, machines before and
    after): the definition the state's indexes (``State.job_index``, ``State.by_machine``) stand in for."""
    jobs0, placements0, machines0 = before
    jobs, placements, machines = after
    touched: set[str] = set()
    for pid, p in placements.items():
        old = placements0.get(pid)
        if old is not p:
            touched.add(p.job)
            if old is not None:
                touched.add(old.job)
    touched.update(p.job for pid, p in placements0.items() if pid not in placements)
    return affected_jobs(jobs0, jobs, machines0, machines, touched,
                         lambda moved: {p.job for p in placements.values() if p.machine in moved})


def changed(jobs=None, placements=None, machines=None):
    return ({**J, **(jobs or {})}, {**P, **(placements or {})}, {**M, **(machines or {})})


def without(table: dict, key: str) -> dict:
    return {k: v for k, v in table.items() if k != key}


CASES = [
    ("nothing changed", BASE, set()),
    ("an equal but new copy of nothing: still nothing", (dict(J), dict(P), dict(M)), set()),
    ("a job's record replaced (a scale, even to the same count)", changed(jobs={"idle": replace(J["idle"])}), {"idle"}),
    ("a job added", changed(jobs={"new": job("new")}), {"new"}),
    ("a job deleted", (without(J, "db"), P, M), {"db"}),
    ("a placement's record replaced (a health report)", changed(placements={"d0": replace(P["d0"], health="healthy")}),
     {"db"}),
    ("a placement gone", (J, without(P, "w0"), M), {"web"}),
    ("a machine changed: every job with a placement there", changed(machines={"b": replace(M["b"], status="down")}),
     {"web", "db"}),
    ("a machine added: nobody's work unless a job waits for room", changed(machines={"c": machine("c")}), set()),
]


def test_affected_jobs_table():
    for name, after, want in CASES:
        assert walked(BASE, after) == want, name


def test_a_job_waiting_for_room_is_affected_by_any_change():
    waiting = {**J, "big": replace(job("big", replicas=1), pending_reason="1 replicas unplaced")}
    before = (waiting, P, M)
    assert walked(before, (waiting, P, M)) == set()
    assert walked(before, (waiting, P, {**M, "c": machine("c")})) == {"big"}
    assert walked(before, (waiting, without(P, "w1"), M)) == {"big", "web"}


# -- the promise: settle, change one thing, compare a pass over the affected jobs with a full pass ---------------

def settle(jobs: dict[str, Job], placements: dict[str, Placement], machines: dict[str, Machine]):
    """Run full passes, applying each plan as the state machine would, until a pass has nothing to do."""
    n = 0
    for round_ in range(6):
        plan = schedule(jobs, placements, machines, index=round_, now=0)
        if not plan.place and not plan.stop and not plan.preempt and all(
                (jobs[k].pending_reason or "") == v for k, v in plan.pending.items()):
            return jobs, placements
        for pid, _ in plan.stop + plan.preempt:
            placements[pid] = replace(placements[pid], desired="stop", state="stopped")
        for item in plan.place:
            n += 1
            pid = f"{item.job}-{round_}-{n}"
            placements[pid] = as_placement({"id": pid, "job": item.job, "version": item.version, "replica": item.replica,
                                            "machine": item.machine, "desired": "run", "state": "running",
                                            "resources": dict(item.resources), "ports": dict(item.ports)})
        jobs = {k: replace(j, pending_reason=plan.pending.get(k) or None) for k, j in jobs.items()}
    raise AssertionError("did not settle in 6 passes")


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(1000, 4000), st.integers(2, 8)), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["500m", "1", "2"]), st.sampled_from(["512Mi", "1Gi", "3Gi"]),
                          st.integers(0, 100)), min_size=1, max_size=4),
       st.sampled_from(["scale", "machine down", "drain", "machine added", "placement lost", "job deleted"]),
       st.integers(0, 50))
def test_a_pass_over_the_affected_jobs_plans_what_a_full_pass_plans(mspecs, jspecs, change, pick):
    machines = {f"m{i}": machine(f"m{i}", zone=f"z{i % 2}", cpu=c, mem=g * GI, ports=(20000, 20005))
                for i, (c, g) in enumerate(mspecs)}
    jobs = {f"j{i}": job(f"j{i}", replicas=n, resources={"cpu": cpu, "memory": mem}, priority=prio)
            for i, (n, cpu, mem, prio) in enumerate(jspecs)}
    jobs, placements = settle(jobs, {}, machines)
    before = (dict(jobs), dict(placements), dict(machines))
    names, mids = sorted(jobs), sorted(machines)
    live = sorted(pid for pid, p in placements.items() if p.is_live())
    if change == "scale":
        name = names[pick % len(names)]
        jobs[name] = replace(jobs[name], replicas=(jobs[name].replicas + 1 + pick) % 7)
    elif change == "machine down":
        mid = mids[pick % len(mids)]
        machines[mid] = replace(machines[mid], status="down")
    elif change == "drain":
        mid = mids[pick % len(mids)]
        machines[mid] = replace(machines[mid], drain={"since": 1})
    elif change == "machine added":
        machines["new"] = machine("new", zone="z9")
    elif change == "placement lost" and live:
        pid = live[pick % len(live)]
        placements[pid] = replace(placements[pid], state="lost")
    elif change == "job deleted":
        del jobs[names[pick % len(names)]]
    after = (jobs, placements, machines)
    full = schedule(jobs, placements, machines, index=99, now=0)
    some = schedule(jobs, placements, machines, index=99, now=0, job_names=sorted(walked(before, after)))
    assert (some.place, some.stop, some.preempt) == (full.place, full.stop, full.preempt)
    for name, reason in full.pending.items():   # a job the partial pass left out has no new reason to wait
        assert some.pending.get(name, jobs[name].pending_reason or "") == reason


# -- the loop on the real state machine: the jobs a placement change touches come from the state's job index ------

async def test_the_loop_on_the_state_machine_replaces_a_lost_placement_in_a_pass_over_its_job_alone(monkeypatch):
    import asyncio

    from raftctl.clock import SYSTEM
    from raftctl.node import scheduling
    from raftctl.statemachine import commands as c
    from raftctl.statemachine.spec import validate_spec
    from tests.unit.fake_replica import FakeReplica, record_passes, until
    from tests.unit.fake_replica import machine as register

    class Replica(FakeReplica):
        async def wait_for(self, fn, key, timeout):
            await asyncio.sleep(0.01)

    monkeypatch.setattr(scheduling, "RESYNC_S", 60.0)   # no resync within the test: every later pass is partial
    r = Replica(SYSTEM)
    for cmd in (c.ClaimEpoch(term=1), register("m1"), register("m2"),
                c.PutJob(spec=validate_spec({"name": "web", "image": "x:1", "command": ["x"], "replicas": 2,
                                             "resources": {"cpu": "100m", "memory": "64Mi"}})),
                c.PutJob(spec=validate_spec({"name": "db", "image": "x:1", "command": ["x"], "replicas": 1,
                                             "resources": {"cpu": "100m", "memory": "64Mi"}}))):
        assert (await r.propose(cmd)).ok
    covered = record_passes(monkeypatch)
    loop = scheduling.SchedulerLoop(r, epoch=1)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: len(r.state.placements) == 3, "3 placements", within=5.0, every=0.01)
        for pid, p in list(r.state.placements.items()):
            assert (await r.propose(c.PlacementUpdate(placement=pid, machine=p.machine, state="running"))).ok
        await until(lambda: loop.at_index >= r.state.index, "the loop seeing the reports", within=5.0, every=0.01)
        lost = next(pid for pid, p in r.state.placements.items() if p.job == "web")
        passes, before = len(covered), r.state.index
        seen = (dict(r.state.jobs), dict(r.state.machines))
        assert (await r.propose(c.PlacementUpdate(placement=lost, machine=r.state.placements[lost].machine,
                                                  state="lost"))).ok
        # from the state's job index, no walk; and the pass reads web's placements alone
        priorities = scheduling.JobPriorities()
        priorities.sync(seen[0], None)
        _, placements, *_, names = scheduling._inputs(r.state, seen, before, priorities)
        assert names == ["web"] and {p.job for p in placements.values()} == {"web"}
        await until(lambda: sum(1 for p in r.state.placements.values() if p.job == "web" and p.is_live()) == 2,
                    "2 live web placements", within=5.0, every=0.01)
    finally:
        task.cancel()
    assert covered[0] is None and ["web"] in covered[passes:]
    assert all(names is not None and "db" not in names for names in covered[passes:])


# -- pacing: a burst of passes at once, then PASS_RATE a second --------------------------------------------------

def test_the_pass_bucket_lets_a_burst_through_then_paces():
    from raftctl.node.scheduling import PassBucket

    b = PassBucket(rate=50.0, burst=4.0)
    # (time, the wait it answers): four at once, the fifth waits a fiftieth of a second, then one per 20 ms
    for now, wait in [(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.02), (0.01, 0.01), (0.02, 0.0),
                      (0.02, 0.02), (10.0, 0.0), (10.0, 0.0), (10.0, 0.0), (10.0, 0.0), (10.0, 0.02)]:
        assert abs(b.wait(now) - wait) < 1e-9, (now, wait)


async def test_changes_that_come_faster_than_the_pass_rate_start_passes_at_that_rate(monkeypatch):
    # a write load of one job change after another, each taken in by the loop before the next: the loop used to
    # start a pass for each (each with its fixed cost and its Plan command) however fast they came; now, after a
    # burst of PASS_BURST, a pass waits its turn (time moves only when the loop sleeps on the fake clock, so without
    # the pacing no time passes at all). Every job is still placed.
    import asyncio

    from raftctl.clock import FakeClock
    from raftctl.node import scheduling
    from raftctl.statemachine import commands as c
    from raftctl.statemachine.spec import validate_spec
    from tests.unit.fake_replica import FakeReplica, record_passes, until
    from tests.unit.fake_replica import machine as register

    class Replica(FakeReplica):
        async def wait_for(self, fn, key, timeout):
            await asyncio.sleep(0)

    monkeypatch.setattr(scheduling, "RESYNC_S", 3600.0)
    clock = FakeClock()
    r = Replica(clock)
    for cmd in (c.ClaimEpoch(term=1), register("m1"), register("m2")):
        assert (await r.propose(cmd)).ok
    covered = record_passes(monkeypatch)
    loop = scheduling.SchedulerLoop(r, epoch=1)
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: loop.at_index >= r.state.index, "the first pass", every=0.001)
        start, n = clock.monotonic(), 20
        for i in range(n):
            spec = {"name": f"j{i}", "image": "x:1", "command": ["x"], "replicas": 1,
                    "resources": {"cpu": "10m", "memory": "16Mi", "pids": 10}}
            assert (await r.propose(c.PutJob(spec=validate_spec(spec)))).ok
            await until(lambda: loop.at_index >= r.state.index, f"the loop taking j{i} in", every=0.001)
        elapsed = clock.monotonic() - start
    finally:
        task.cancel()
    passes = len(covered) - 1
    assert len(r.state.placements) == n and passes >= n
    assert loop.paced > 0
    assert passes <= scheduling.PASS_BURST + elapsed * scheduling.PASS_RATE + 1, (passes, elapsed)
