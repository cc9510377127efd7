"""The leader's machine views kept from one scheduling pass to the next (scheduler/machines.py ViewCache).

A view is kept when its machine's record and usage entry are the very objects it was built from and no pass took
or gave anything on it; every other view is built again. So whatever happened between two passes (plans committed
or dropped, reports, machines re-registered, down, drained, a restore), a pass given the cache plans exactly what a
pass building every view plans, and the views the cache hands out equal freshly built ones."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from raftctl.node.scheduling import plan_command
from raftctl.scheduler import schedule
from raftctl.scheduler.machines import ViewCache, build_views
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State
from tests.unit.test_machine_usage_index import EPOCH, command_st, register, run, setup_st, spec

COMMIT, DROP = "pass, plan committed", "pass, plan dropped"


def a_pass(s: State, cache: ViewCache | None):
    return schedule(s.jobs, s.placements, s.machines, index=s.index, now=0, usage=dict(s.usage), cache=cache)


@settings(max_examples=150, deadline=None)
@given(setup_st, st.lists(st.one_of(command_st, st.sampled_from([COMMIT, COMMIT, DROP])), min_size=1, max_size=40))
def test_a_pass_given_the_cache_plans_what_a_pass_building_every_view_plans(setup, steps):
    s = State()
    for cmd in setup:
        assert apply(s, cmd).ok
    cache = ViewCache()
    for step in steps + [COMMIT, COMMIT]:
        if step not in (COMMIT, DROP):
            s = run(s, step)
            continue
        fresh = a_pass(s, None)
        cached = a_pass(s, cache)
        assert cached == fresh
        if step == COMMIT:
            cmd = plan_command(cached, s.jobs, EPOCH)
            if cmd is not None:
                apply(s, cmd)
        # what the next pass starts from: the views it would be handed equal freshly built ones
        assert cache.views(s.machines, dict(s.usage)) == build_views(s.machines, s.placements, dict(s.usage))


def settled(replicas: int = 4) -> tuple[State, ViewCache]:
    """Four machines holding one job's replicas, and a cache that has seen a pass with work."""
    s = State()
    for cmd in [c.ClaimEpoch(term=EPOCH)] + [register(m, False) for m in ("m1", "m2", "m3", "m4")] + \
            [c.PutJob(spec=spec("web", replicas, 300, 1))]:
        assert apply(s, cmd).ok
    cache = ViewCache()
    plan = a_pass(s, cache)
    assert len(plan.place) == replicas
    assert apply(s, plan_command(plan, s.jobs, EPOCH)).ok
    return s, cache


def test_only_the_machines_that_changed_are_built_again():
    s, cache = settled()
    assert (cache.built, cache.reused) == (4, 0)
    held = {p.machine for p in s.placements.values()}
    apply(s, c.ScaleJob(name="web", replicas=5))
    plan = a_pass(s, cache)
    # the machines the first plan's placements went to have new usage entries; the others are kept
    assert (cache.built, cache.reused) == (4 + len(held), 4 - len(held))
    assert len(plan.place) == 1


def test_a_view_a_pass_changed_is_built_again_when_its_plan_was_not_committed():
    s, cache = settled()
    apply(s, c.ScaleJob(name="web", replicas=5))
    first = a_pass(s, cache)       # places one more on some machine: that view now holds it
    built = cache.built
    again = a_pass(s, cache)       # the plan was dropped: the same state, so the same plan
    assert again == first
    assert cache.built == built + 1    # the view the dropped plan changed, and only it


def test_a_report_that_leaves_the_share_the_same_keeps_the_view():
    s, cache = settled()
    apply(s, c.ScaleJob(name="web", replicas=5))
    a_pass(s, cache)
    pid = sorted(s.placements)[0]
    p = s.placements[pid]
    assert apply(s, c.PlacementUpdate(placement=pid, machine=p.machine, state="running", health="healthy")).ok
    built = cache.built
    a_pass(s, cache)
    assert cache.built == built + 1    # the previous pass's changed view; the reported machine's is kept


def test_a_re_registered_machine_is_built_again():
    s, cache = settled()
    apply(s, c.ScaleJob(name="web", replicas=5))
    a_pass(s, cache)
    a_pass(s, cache)
    built = cache.built
    assert apply(s, register("m4", True)).ok    # a new record, narrower ports
    plan = a_pass(s, cache)
    assert plan == a_pass(s, None)
    assert cache.built == built + 2            # m4, and the view the pass before changed
