"""Each job's placement ids kept by the state (``State.job_groups``) and a scheduler pass that reads only the jobs it
covers through them (issue 15: grouping 100,000 placements was 16 ms of a one-job pass's 16).

Whatever commands were applied (plans, reports, stops, purges, restores), the groups are exactly the placements'
ids per job, and a pass given them plans what a pass grouping every placement plans, over every job or any
few of them."""
from __future__ import annotations

from unittest import mock

from hypothesis import given, settings, strategies as st

from raftctl.node import scheduling

from raftctl.node.scheduling import plan_command
from raftctl.node.views import dry_run
from raftctl.scheduler import schedule
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.records import JobSpec, from_wire
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.state import State
from tests.unit.test_scheduler_dirty import walked as walked_jobs
from tests.unit.test_machine_usage_index import EPOCH, JOBS, command_st, register, run, setup_st, spec


def walked(s: State) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pid, p in s.placements.items():
        out.setdefault(p.job, set()).add(pid)
    return out


def as_sets(groups: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    assert all(len(set(g)) == len(g) for g in groups.values())
    return {job: set(g) for job, g in groups.items()}


def a_pass(s: State, names: list[str] | None, grouped: bool, reverse: bool = False):
    groups = s.job_groups() if grouped else None
    if groups is not None and reverse:    # the tuples' order is the set's, which differs between processes
        groups = {job: g[::-1] for job, g in groups.items()}
    return schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, usage=dict(s.usage), job_names=names,
                    groups=groups)


@settings(max_examples=150, deadline=None)
@given(setup_st, st.lists(command_st, min_size=1, max_size=40),
       st.lists(st.one_of(st.none(), st.lists(st.sampled_from(JOBS + ["gone"]), max_size=3)), min_size=1,
                max_size=3))
def test_the_groups_are_the_placements_per_job_and_a_pass_given_them_plans_the_same(setup, steps, scopes):
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    for step in steps:
        s = run(s, step)
        assert as_sets(s.job_groups()) == walked(s)
    for names in scopes:
        walk = a_pass(s, names, False)
        assert a_pass(s, names, True) == walk
        assert a_pass(s, names, True, reverse=True) == walk


@settings(max_examples=100, deadline=None)
@given(setup_st, st.lists(command_st, min_size=2, max_size=30), st.data())
def test_the_loop_counts_a_backlog_through_the_groups_as_through_a_walk(setup, steps, data):
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    cut = data.draw(st.integers(0, len(steps)))
    before = None
    for i, step in enumerate(steps):
        if i == cut:
            before = (dict(s.jobs), dict(s.placements), dict(s.machines))
        s = run(s, step)
    after = (dict(s.jobs), dict(s.placements), dict(s.machines))
    names = None if before is None else sorted(walked_jobs(before, after))
    with mock.patch.object(scheduling, "STREAM_ABOVE", 0):   # every scope's backlog is counted
        walk = scheduling._backlog(names, *after[:2])
        assert scheduling._backlog(names, *after[:2], s.job_groups()) == walk


def test_a_group_is_built_again_only_when_its_job_placements_change():
    s = State()
    for cmd in setup_fixed():
        assert apply(s, cmd).ok
    first = s.job_groups()
    assert first and all(isinstance(g, tuple) for g in first.values())
    again = s.job_groups()
    assert all(again[j] is first[j] for j in first)          # nothing changed: the same tuples
    pid = sorted(first["a"])[0]
    assert apply(s, c.Plan(epoch=EPOCH, place=[], stop=[{"placement": pid, "reason": "x"}])).ok
    after = s.job_groups()
    assert as_sets(after) == walked(s)
    # a stop changes the record, not the job's set of ids: every tuple is kept
    assert all(after[j] is first[j] for j in first)
    # the agent's report that it stopped removes the placement: only its job's tuple is built again
    assert apply(s, c.PlacementUpdate(placement=pid, machine=s.placements[pid].machine, state="stopped",
                                      health="")).ok
    final = s.job_groups()
    assert as_sets(final) == walked(s) and set(final["a"]) == set(first["a"]) - {pid} and final["b"] is first["b"]


def setup_fixed() -> list[c.Command]:
    """Two machines, jobs a and b of two replicas each, placed."""
    cmds: list[c.Command] = [c.ClaimEpoch(term=EPOCH)] + [register(m, False) for m in ("m1", "m2")] + \
        [c.PutJob(spec=spec("a", 2, 100, 0)), c.PutJob(spec=spec("b", 2, 100, 0))]
    s = State()
    for cmd in cmds:
        assert apply(s, cmd).ok
    plan = schedule(s.jobs, s.placements, s.machines, index=s.index, now=0)
    return cmds + [plan_command(plan, s.jobs, EPOCH)]


def test_a_dry_run_given_the_groups_answers_what_one_without_them_answers():
    s = State()
    for cmd in setup_fixed():
        assert apply(s, cmd).ok
    new = from_wire(JobSpec, validate_spec(spec("a", 3, 300, 1)))
    args = (s.jobs, s.placements, s.machines, s.index, new)
    assert dry_run(*args, usage=dict(s.usage), groups=s.job_groups()) == dry_run(*args, usage=dict(s.usage))
