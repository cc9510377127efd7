"""A job scores a sample of the machines that fit it once the fleet is past ``place.EXACT_UP_TO`` candidates
(session 17): a few replicas placed again after a machine loss no longer score all 10,000 machines. The sample
covers the fleet (a permuted order, not a run of machines registered together), grows when its machines fill
up, so a job that fits somewhere is placed, and never breaks a hard spread rule; up to EXACT_UP_TO the plans
are exactly best fit, as before."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftctl.scheduler import place
from raftctl.scheduler.driver import schedule
from raftctl.scheduler.machines import build_views, stride_for
from raftctl.scheduler.place import JobFit, Scan, candidates_for, to_score
from raftctl.scheduler.ranking import Spread
from raftctl.scheduler.reconcile import current_spec

from .test_scheduler import job, machine

TO_SCORE = [
    # (candidates, slots, scored): every candidate up to EXACT_UP_TO, then max(SCORE_AT_LEAST, 2 x slots)
    (0, 1, 0),
    (10, 5, 10),
    (1000, 3, 1000),
    (1001, 3, 100),
    (10_000, 5, 100),
    (10_000, 80, 160),
    (10_000, 500, 1000),
]


@pytest.mark.parametrize("candidates,slots,scored", TO_SCORE)
def test_how_many_machines_a_job_scores(candidates: int, slots: int, scored: int) -> None:
    assert to_score(candidates, slots) == scored


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 999, 1000, 1001, 1024, 9900, 10_000, 30_000])
def test_the_stride_visits_every_candidate_once(n: int) -> None:
    s = stride_for(n)
    assert sorted((7 + i * s) % n for i in range(n)) == list(range(n))


def fleet(n: int, **kw: Any) -> dict[str, Any]:
    return {m.id: m for m in (machine(f"m{i:05d}", **{k: f(i) for k, f in kw.items()}) for i in range(n))}


def fits_counted(monkeypatch: Any) -> list[int]:
    calls = [0]
    real = JobFit.fits

    def counted(self: JobFit, v: Any) -> Any:
        calls[0] += 1
        return real(self, v)

    monkeypatch.setattr(JobFit, "fits", counted)
    return calls


def test_a_large_fleet_is_sampled_a_small_one_is_not(monkeypatch: Any) -> None:
    calls = fits_counted(monkeypatch)
    big = schedule({"web": job(replicas=3)}, {}, fleet(3000), index=1, now=0, pack=False)
    sampled = calls[0]
    monkeypatch.setattr(place, "EXACT_UP_TO", 10**9)
    calls[0] = 0
    schedule({"web": job(replicas=3)}, {}, fleet(3000), index=1, now=0, pack=False)
    assert len(big.place) == 3 and big.pending["web"] == ""
    assert calls[0] >= 3000 and sampled <= 2 * place.SCORE_AT_LEAST, (sampled, calls[0])


def test_the_sample_spans_the_fleet_not_the_machines_registered_first() -> None:
    # zones handed out in registration order: the first 500 machines in z0, the next 500 in z1, ...
    ms = fleet(2000, zone=lambda i: f"z{i // 500}")
    views = build_views(ms, {})
    spec = current_spec(job(replicas=2))
    cands = candidates_for(views, spec, lambda: None)
    fit = JobFit("web", 1, spec, Spread.of(spec, 2, 1, cands, views, []), b"web:1")
    scan = Scan(cands, fit, to_score(len(cands), 2))
    sample = scan.more()
    assert len(sample) == place.SCORE_AT_LEAST and scan.scanned == place.SCORE_AT_LEAST
    assert {views[mid].domain("zone") for _, _, mid in sample} == {"z0", "z1", "z2", "z3"}


def test_a_mostly_empty_fleet_fills_the_machines_in_use_before_opening_others(monkeypatch: Any) -> None:
    # 150 replicas of 500m / 1Gi in a fresh fleet of 3,000 machines of 4 CPUs / 8 GiB: 19 machines at the least.
    # Sampled from the whole fleet, each job's sample misses most of the machines the jobs before it opened (26
    # machines); the machines in use are looked at first, so the plan uses 19, as scoring every machine does.
    ms = fleet(3000, zone=lambda i: f"z{i % 4}")
    jobs = {f"j{k}": job(f"j{k}", replicas=3 + k % 5, resources={"cpu": "500m", "memory": "1Gi", "pids": 16})
            for k in range(30)}
    sampled = schedule(jobs, {}, ms, index=1, now=0, pack=False)
    monkeypatch.setattr(place, "EXACT_UP_TO", 10**9)
    exact = schedule(jobs, {}, ms, index=1, now=0, pack=False)
    assert len(sampled.place) == len(exact.place) == 150
    assert len({p.machine for p in sampled.place}) == len({p.machine for p in exact.place}) == 19


def test_a_sample_that_fills_up_grows_until_the_job_is_placed() -> None:
    # hard zone spread over two zones: one replica per zone. Only one machine of 1,500 is in zone b, so the first
    # sample (100 machines of zone a) has no room for the second replica once the first is placed.
    ms = fleet(1500, zone=lambda i: "b" if i == 1234 else "a")
    plan = schedule({"web": job(replicas=2, spread=[{"level": "zone", "mode": "hard"}])}, {}, ms, index=1, now=0)
    assert plan.pending["web"] == ""
    assert sorted(ms[p.machine].fault_domain["zone"] for p in plan.place) == ["a", "b"]


def test_a_fleet_up_to_the_exact_size_gets_the_plan_it_got_before(monkeypatch: Any) -> None:
    jobs = {n: job(n, replicas=r) for n, r in (("a", 40), ("b", 7), ("c", 90))}
    ms = fleet(place.EXACT_UP_TO, cpu=lambda i: 1000 + 500 * (i % 5))
    now = schedule(jobs, {}, ms, index=3, now=0)
    monkeypatch.setattr(place, "EXACT_UP_TO", 10**9)
    exact = schedule(jobs, {}, ms, index=3, now=0)
    assert [(p.job, p.replica, p.machine) for p in now.place] == [(p.job, p.replica, p.machine) for p in exact.place]


@settings(max_examples=60, deadline=None)
@given(cpus=st.lists(st.sampled_from([0, 500, 1000, 2000]), min_size=1, max_size=40),
       zones=st.integers(1, 4), replicas=st.integers(1, 30), hard=st.booleans(), sample=st.integers(1, 5))
def test_sampling_places_as_many_replicas_as_scoring_every_machine(cpus: list[int], zones: int, replicas: int,
                                                                   hard: bool, sample: int) -> None:
    ms = {f"m{i:03d}": machine(f"m{i:03d}", zone=f"z{i % zones}", cpu=max(cpu, 1)) for i, cpu in enumerate(cpus)}
    spread = [{"level": "zone", "mode": "hard" if hard else "soft"}]
    jobs = {"web": job(replicas=replicas, spread=spread)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(place, "EXACT_UP_TO", 0)
        mp.setattr(place, "SCORE_AT_LEAST", sample)
        sampled = schedule(jobs, {}, ms, index=1, now=0)
    exact = schedule(jobs, {}, ms, index=1, now=0)
    assert len(sampled.place) == len(exact.place)
    if hard:
        per_zone: dict[str, int] = {}
        for p in sampled.place:
            z = ms[p.machine].fault_domain["zone"]
            per_zone[z] = per_zone.get(z, 0) + 1
        domains = len({i % zones for i in range(len(cpus))})   # the zones the machines span
        assert max(per_zone.values(), default=0) <= -(-replicas // domains)
