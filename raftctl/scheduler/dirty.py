"""Which jobs a change of the scheduler's inputs can give work to. Pure.

The leader's scheduler loop passes only these jobs between two full passes (its periodic resync), so a health
report or a write to one job costs a pass over that job, not over every job and placement (issue 15: at 3,000
machines a full pass held the GIL long enough to make every API write wait behind it).

Records are immutable and replaced whenever they change (``statemachine/records.py``), so "changed" is "not the
same object" and the comparison is one identity test per row.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from raftctl.statemachine.records import Job, Machine


def affected_jobs(jobs0: Mapping[str, Job], jobs: Mapping[str, Job], machines0: Mapping[str, Machine],
                  machines: Mapping[str, Machine], touched: Iterable[str],
                  jobs_on: Callable[[set[str]], Iterable[str]]) -> set[str]:
    """The jobs that may have work after the jobs and machines went from ``jobs0``, ``machines0`` to ``jobs``,
    ``machines``: a job whose record changed, came or went; every job of ``touched``, the jobs whose placements
    changed, came or went (the state machine keeps that index: ``State.job_index``); every job ``jobs_on`` names
    for the machines that changed, came or went, those with a placement on one of them (``State.by_machine``); and
    every job still waiting for room (a pending reason), since any of these changes may have made room. The same
    mapping of machines on both sides means no machine moved (the loop's read says so).

    No placement is compared or walked here: at 30,000 placements comparing them cost more than the pass it saved,
    and the leader's loop copies only the placements of the jobs this returns (``scheduling._inputs``)."""
    out: set[str] = set()
    for name, job in jobs.items():
        if jobs0.get(name) is not job:
            out.add(name)
    out.update(name for name in jobs0 if name not in jobs)
    out.update(touched)
    moved: set[str] = set()
    if machines0 is not machines:
        moved = {mid for mid, m in machines.items() if machines0.get(mid) is not m}
        moved.update(mid for mid in machines0 if mid not in machines)
    if moved:
        out.update(jobs_on(moved))
    if out or moved:
        out.update(name for name, job in jobs.items() if job.pending_reason)
    return out
