"""Which jobs a change of the scheduler's inputs can give work to. Pure.

The leader's scheduler loop passes only these jobs between two full passes (its periodic resync), so a health
report or a write to one job costs a pass over that job, not over every job and placement (issue 15: at 3,000
machines a full pass held the GIL long enough to make every API write wait behind it).

Records are immutable and replaced whenever they change (``statemachine/records.py``), so "changed" is "not the
same object" and the comparison is one identity test per row.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from raftctl.statemachine.records import Job, Machine, Placement


def affected_jobs(before: tuple[Mapping[str, Job], Mapping[str, Placement], Mapping[str, Machine]],
                  after: tuple[Mapping[str, Job], Mapping[str, Placement], Mapping[str, Machine]],
                  touched: Iterable[str] | None = None,
                  jobs_on: Callable[[set[str]], Iterable[str]] | None = None) -> set[str]:
    """The jobs that may have work after the inputs went from ``before`` to ``after`` (jobs, placements,
    machines): a job whose record changed, came or went; the job of every placement that changed, came or went;
    every job with a placement on a machine that changed, came or went; and every job still waiting for room
    (a pending reason), since any of these changes may have made room.

    ``touched``, when given, names the jobs whose placements changed (the state machine keeps that index, see
    ``State.job_change_index``), so the placements are not compared one by one: at 30,000 placements that
    walk cost more than the pass it saved. ``jobs_on``, when given, names the jobs with a placement on any of the
    machines it is given (the state's per-machine index), so neither mapping of placements is read at all (the
    leader's loop then copies only the placements of the jobs this returns)."""
    jobs0, placements0, machines0 = before
    jobs, placements, machines = after
    out: set[str] = set()
    for name, job in jobs.items():
        if jobs0.get(name) is not job:
            out.add(name)
    out.update(name for name in jobs0 if name not in jobs)
    if touched is not None:
        out.update(touched)
    else:
        for pid, p in placements.items():
            old = placements0.get(pid)
            if old is not p:
                out.add(p.job)
                if old is not None:
                    out.add(old.job)
        out.update(p.job for pid, p in placements0.items() if pid not in placements)
    moved: set[str] = set()
    if machines0 is not machines:   # the same mapping on both sides: no machine moved (the loop's read says so)
        moved = {mid for mid, m in machines.items() if machines0.get(mid) is not m}
        moved.update(mid for mid in machines0 if mid not in machines)
    if moved:
        if jobs_on is not None:
            out.update(jobs_on(moved))
        else:
            out.update(p.job for p in placements.values() if p.machine in moved)
    if out or moved:
        out.update(name for name, job in jobs.items() if job.pending_reason)
    return out
