"""What the leader's scheduler loop reads for a pass (``scheduling._inputs``), under the apply lock: between two
resyncs the jobs a change can give work to, found from the state's indexes, and only their placements (issue 15:
at 30,000 machines copying all 300,000 placements was 10-13 ms of every pass's read, on the event loop).

Whatever commands were applied (plans, reports, stops, machines lost and drained, purges, restores, jobs of
different priorities), a pass given that read plans exactly what a pass given every placement plans over the
same jobs, and the jobs are at least those a comparison of every placement finds."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from msgspec.structs import replace

from raftctl.node import scheduling
from raftctl.scheduler import schedule
from raftctl.scheduler.reconcile import current_spec
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State
from tests.unit.test_machine_usage_index import JOBS, command_st, run, setup_st, spec
from tests.unit.test_scheduler_dirty import walked

# half the time one priority for all (no pass can preempt: its read is partial), else some above others
priorities_st = st.one_of(st.just([50] * len(JOBS)),
                          st.lists(st.sampled_from([0, 50, 50, 100]), min_size=len(JOBS), max_size=len(JOBS)))


def same_plans(a, b) -> bool:
    return (a.place, a.stop, a.preempt, a.pending) == (b.place, b.stop, b.preempt, b.pending)


@settings(max_examples=200, deadline=None)
@given(setup_st, priorities_st, st.lists(command_st, min_size=1, max_size=40), st.data())
def test_a_pass_over_some_jobs_plans_the_same_from_their_placements_alone(setup, priorities, steps, data):
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    for name, priority in zip(JOBS, priorities):   # the jobs again, some able to preempt others
        assert apply(s, c.PutJob(spec={**spec(name, 2, 300, 1), "priority": priority})).ok
    cut = data.draw(st.integers(0, len(steps) - 1))
    for i, step in enumerate(steps):
        if i == cut:
            before, since = (dict(s.jobs), dict(s.placements), dict(s.machines)), s.index
        s = run(s, step)
    priorities = scheduling.JobPriorities()
    priorities.sync(before[0], None)      # as the loop's last read left it
    jobs, placements, machines, index, usage, groups, names = scheduling._inputs(s, (before[0], before[2]), since,
                                                                                 priorities)
    # the kept priorities are every job's, though only the jobs a change touched were read again
    assert priorities.of == {n: current_spec(j).priority for n, j in s.jobs.items()}
    assert priorities.lowest(0) == min(priorities.of.values(), default=0)
    if names is None:   # a restore since: the per-job index cannot tell, every job and placement is read
        assert s.job_floor > since and placements == s.placements
        return
    assert walked(before, (s.jobs, s.placements, s.machines)) <= set(names)
    if not scheduling.may_preempt(jobs, names, any(n not in jobs for n in groups), priorities.lowest(0)):
        assert set(placements) == {pid for n in groups if n in names or n not in jobs for pid in groups[n]}
    whole = schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, usage=dict(s.usage),
                     job_names=names, groups=s.job_groups())
    part = schedule(jobs, placements, machines, index=index, now=0, usage=usage, job_names=names, groups=groups)
    assert same_plans(part, whole)


def test_a_pass_reads_the_placements_of_the_jobs_a_change_touches_and_of_purged_jobs():
    s = State()
    for cmd in [c.ClaimEpoch(term=1), *[c.RegisterMachine(machine=m, address="127.0.0.2", fault_domain={"zone": m},
                                                          labels={}, resources={"cpu": 1000, "memory": 1 << 30,
                                                                                "pids": 100},
                                                          ports=[31000, 31003], runtime="sim") for m in ("m1", "m2")],
                *[c.PutJob(spec=spec(n, 1, 100, 0)) for n in JOBS]]:
        assert apply(s, cmd).ok
    priorities = scheduling.JobPriorities()
    *_, names = scheduling._inputs(s, None, None, priorities)
    assert names is None                                            # the first pass: every job
    plan = schedule(s.jobs, s.placements, s.machines, index=s.index, now=0)
    assert apply(s, scheduling.plan_command(plan, s.jobs, epoch=1)).ok and len(s.placements) == len(JOBS)
    seen, since = (dict(s.jobs), dict(s.machines)), s.index
    _, placements, *_, names = scheduling._inputs(s, seen, since, priorities)
    assert names == [] and placements == {}
    web = next(pid for pid, p in s.placements.items() if p.job == "web")
    assert apply(s, c.PlacementUpdate(placement=web, machine=s.placements[web].machine, state="running")).ok
    _, placements, *_, names = scheduling._inputs(s, seen, since, priorities)
    assert names == ["web"] and list(placements) == [web]
    m = s.placements[web].machine
    on_m = {p.job for p in s.placements.values() if p.machine == m}
    seen, since = (dict(s.jobs), dict(s.machines)), s.index         # a machine drained: the jobs on it (its record
    assert apply(s, c.DrainMachine(machines=[m], drain=True)).ok    # changed, not their placements)
    _, placements, *_, names = scheduling._inputs(s, seen, since, priorities)
    assert set(names) == on_m and {p.job for p in placements.values()} == on_m
    assert same_plans(schedule(s.jobs, placements, s.machines, index=s.index, now=0, usage=dict(s.usage),
                               job_names=names, groups=s.job_groups()),
                      schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, job_names=names))
    assert apply(s, c.DeleteJob(name="db", purge=True)).ok          # purged: its placements stay until stopped,
    seen, since = (dict(s.jobs), dict(s.machines)), s.index         # and a later pass over web reads them too
    assert apply(s, c.PlacementUpdate(placement=web, machine=m, state="running", health="healthy")).ok
    jobs, placements, machines, index, usage, groups, names = scheduling._inputs(s, seen, since, priorities)
    assert names == ["web"] and {p.job for p in placements.values()} == {"web", "db"}
    assert same_plans(schedule(jobs, placements, machines, index=index, now=0, usage=usage, job_names=names,
                               groups=groups),
                      schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, job_names=names))


def job_with(priority: int, name: str = "j"):
    from raftctl.statemachine.records import Job, from_wire
    wire = {**spec(name, 1, 100, 0), "priority": priority}
    return from_wire(Job, {"name": name, "version": 1, "status": "running", "replicas": 1,
                           "versions": [{"version": 1, "spec": wire, "submitted_at": 0, "index": 1}],
                           "create_index": 1, "modify_index": 1})


def test_may_preempt():
    cases = [   # (priorities of all jobs, the covered ones, a purged job's placements left, could preempt)
        ({"a": 50, "b": 50}, ["a"], False, False),       # equal priorities: nobody is below
        ({"a": 100, "b": 50}, ["a"], False, True),       # a can evict b's
        ({"a": 100, "b": 50}, ["b"], False, False),      # b cannot evict a's
        ({"a": 0, "b": 0}, ["a"], False, False),         # priority 0 never preempts
        ({"a": 100, "b": 100}, ["a"], True, True),       # a purged job's placements count as 50
        ({"a": 50, "b": 50}, ["a"], True, False),
        ({"a": 100}, ["gone"], False, False),            # a job no longer there asks nothing
    ]
    for priorities, names, purged, want in cases:
        jobs = {n: job_with(p, n) for n, p in priorities.items()}
        lowest = min(priorities.values())
        assert scheduling.may_preempt(jobs, names, purged, lowest) is want, (priorities, names, purged)


def test_job_priorities_follow_the_jobs_a_read_names():
    """JobPriorities (the lowest priority may_preempt compares with, without a walk over every job per pass):
    rebuilt from every job, then updated from the named ones only; a job gone leaves no count behind."""
    pr = scheduling.JobPriorities()
    assert pr.lowest(7) == 7                                        # no job yet
    jobs = {"a": job_with(100, "a"), "b": job_with(50, "b"), "c": job_with(50, "c")}
    pr.sync(jobs, ["a"])                                            # never synced: rebuilt whatever is named
    assert pr.of == {"a": 100, "b": 50, "c": 50} and pr.lowest(0) == 50
    jobs = {**jobs, "b": job_with(0, "b")}
    pr.sync(jobs, ["b"])
    assert pr.lowest(0) == 0 and pr.count == {100: 1, 50: 1, 0: 1}
    del jobs["b"]
    pr.sync(jobs, ["b"])                                            # gone: its count goes with it
    assert pr.of == {"a": 100, "c": 50} and pr.lowest(0) == 50 and 0 not in pr.count
    jobs["c"] = job_with(100, "c")
    pr.sync(jobs, ["c", "unknown"])
    assert pr.lowest(0) == 100 and pr.count == {100: 2}
    pr.sync({}, None)
    assert pr.of == {} and pr.lowest(3) == 3


def test_job_priorities_rebuild_after_an_update_that_raised():
    pr = scheduling.JobPriorities()
    jobs = {"a": job_with(100, "a")}
    pr.sync(jobs, None)
    broken = replace(job_with(50, "b"), version=9)                  # no spec for its current version
    try:
        pr.sync({**jobs, "b": broken}, ["b"])
    except KeyError:
        pass
    else:
        raise AssertionError("a job without its current spec raised nothing")
    assert not pr.valid
    pr.sync({**jobs, "b": job_with(0, "b")}, [])                     # nothing named, but rebuilt
    assert pr.of == {"a": 100, "b": 0} and pr.valid


@settings(max_examples=200, deadline=None)
@given(setup_st, st.lists(command_st, min_size=1, max_size=40))
def test_the_usage_the_loop_keeps_is_always_the_states_and_copied_only_when_it_changed(setup, steps):
    """The loop copies State.usage only when an entry was replaced since its last copy (usage_version), and never
    hands the pass the state's own dict; a restore (a new State) is copied again."""
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    held = scheduling.UsageCopy()
    last, version, state = held.take(s), s.usage_version, s
    for step in steps:
        s = run(s, step)
        taken = held.take(s)
        assert taken == s.usage and taken is not s.usage
        if s is state and s.usage_version == version:
            assert taken is last
        last, version, state = taken, s.usage_version, s
