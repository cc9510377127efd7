"""What one scheduler pass computes once (session 16): the machines that pass the filters are shared by the jobs
with the same constraints, and a job that fits nowhere is explained without comparing machine views field by
field (``v not in candidates`` on a list was O(machines^2): 1.4 s a pass at 4,000 machines). Plans are the same
as computed job by job."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from raftctl.scheduler import driver
from raftctl.scheduler.driver import schedule
from raftctl.scheduler.machines import MachineView, build_views
from raftctl.scheduler.packing import FreePool
from raftctl.scheduler.plan import RESOURCES

from .test_scheduler import job, machine

MACHINES = {m.id: m for m in [machine(f"m{i}", zone=f"z{i % 3}", labels={"disk": "ssd" if i % 2 else "hdd"})
                              for i in range(12)]}
SSD = [{"attr": "labels.disk", "op": "==", "value": "ssd"}]


def jobs() -> dict[str, Any]:
    return {"a": job("a", replicas=3), "b": job("b", replicas=4), "c": job("c", replicas=2, constraints=SSD),
            "d": job("d", replicas=2, constraints=SSD)}


def test_jobs_with_the_same_constraints_share_one_filtering_of_the_machines(monkeypatch: Any) -> None:
    calls: list[tuple] = []
    real = driver.candidates_for

    def counted(views: Any, spec: Any, check: Any) -> Any:
        calls.append(spec.constraints)
        return real(views, spec, check)

    monkeypatch.setattr(driver, "candidates_for", counted)
    plan = schedule(jobs(), {}, MACHINES, index=7, now=0)
    assert len(calls) == 2 and len(set(calls)) == 2          # () for a and b, the ssd constraint for c and d
    assert len(plan.place) == 11 and all(plan.pending[j] == "" for j in "abcd")
    ssd = {m for m, rec in MACHINES.items() if rec.labels.get("disk") == "ssd"}
    assert {p.machine for p in plan.place if p.job in "cd"} <= ssd


def test_the_shared_filtering_places_as_each_job_alone_would() -> None:
    together = schedule(jobs(), {}, MACHINES, index=7, now=0)
    one_by_one = []
    placements: dict[str, Any] = {}
    for name in sorted(jobs()):
        plan = schedule(jobs(), placements, MACHINES, index=7, now=0, job_names=[name])
        one_by_one.extend(plan.place)
        placements.update({f"{p.job}-{p.replica}": _placed(p) for p in plan.place})
    key = lambda p: (p.job, p.replica)   # noqa: E731
    assert sorted(((p.job, p.replica, p.machine) for p in together.place)) == \
        sorted(((p.job, p.replica, p.machine) for p in sorted(one_by_one, key=key)))


def _placed(p: Any) -> Any:
    from .test_scheduler import placement
    return placement(f"{p.job}-{p.replica}", p.replica, p.machine, jobname=p.job, cpu=p.resources["cpu"],
                     mem=p.resources["memory"], port=next(iter(p.ports.values()), 20000))


def test_a_job_that_fits_nowhere_is_explained_without_comparing_views(monkeypatch: Any) -> None:
    def no_eq(self: MachineView, other: object) -> bool:
        raise AssertionError("machine views compared field by field")

    monkeypatch.setattr(MachineView, "__eq__", no_eq)
    ms = {f"m{i}": machine(f"m{i}", cpu=1000, status="down" if i == 0 else "up") for i in range(50)}
    plan = schedule({"web": job(replicas=110)}, {}, ms, index=1, now=0)     # 2 a machine fit: 98 of 110
    assert plan.pending["web"] == "12 replicas unplaced; 50 machines: 49 insufficient cpu, 1 down"


def test_constraints_that_do_not_hash_are_filtered_for_that_job_alone() -> None:
    # validated specs hold tuples; were a list to reach the pass, it filters for that job instead of failing
    from msgspec.structs import replace

    from raftctl.scheduler.driver import Pass
    from raftctl.scheduler.plan import Plan, no_check
    from raftctl.scheduler.reconcile import current_spec
    spec = current_spec(jobs()["c"])
    listed = replace(spec, constraints=list(spec.constraints))
    p = Pass(Plan(index=1), {}, MACHINES, no_check)
    assert [v.id for v in p.candidates(listed)] == [v.id for v in p.candidates(spec)]
    assert sorted(v.id for v in p.candidates(spec)) == sorted(m for m in MACHINES if MACHINES[m].labels["disk"] == "ssd")


@settings(max_examples=50, deadline=None)
@given(frees=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 8 << 30), st.integers(0, 1000)),
                      min_size=1, max_size=12))
def test_the_repairs_free_pool_answers_as_summing_every_other_machine(frees: list[tuple[int, int, int]]) -> None:
    views = []
    for i, (cpu, mem, pids) in enumerate(frees):
        v = build_views({f"m{i}": machine(f"m{i}")}, {})[f"m{i}"]
        v.free.update(cpu=cpu, memory=mem, pids=pids)
        views.append(v)
    pool = FreePool.of(views)
    for v in views:
        for k in RESOURCES:
            others = [o.free[k] for o in views if o is not v]
            assert pool.others(v, k) == (sum(others), max(others, default=0))
