"""Placing one job's replicas: a lazy-greedy heap of the feasible machines by score, re-scoring only what a
placement changed; what cannot be placed says why.

In a large fleet a job scores a sample of the machines that fit it, not all of them (``to_score``, ``Scan``): a
few replicas to place again after a machine loss no longer score every machine of 10,000 (the heap build was
63 % of the re-placement pass, cProfile, session 17). The sample is taken over the whole candidate list in a
permuted order seeded by the job, and grows by another sample whenever the machines scored so far fill up, so
a job that fits somewhere is placed as before."""
from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Iterator

from raftctl.scheduler.feasibility import Spec, allocate_ports, explain, f_constraints, f_ports, f_schedulable
from raftctl.scheduler.machines import Candidates, MachineView
from raftctl.scheduler.plan import Check, NewPlacement, no_check
from raftctl.scheduler.ranking import WEIGHTS, Spread, score_anti_affinity, score_binpack, tie
from raftctl.statemachine.records import Job, Placement

HeapItem = tuple[float, int, str]   # (-score, tie-break, machine id)


@dataclass
class JobFit:
    """One job's view of the machines during its placement: whether one more replica fits, and its score."""
    name: str
    version: int
    spec: Spec
    spread: Spread
    seed: bytes
    # what ``fits`` asks of every machine, taken from the spec once (it runs for every heap entry a pass pops)
    want: tuple[tuple[str, int], ...] = field(init=False)
    dynamic_ports: int | None = field(init=False)   # None: the spec has static ports (f_ports decides)

    def __post_init__(self) -> None:
        self.want = tuple(self.spec.resources.amounts().items())
        ports = self.spec.ports
        self.dynamic_ports = None if any(p.static is not None for p in ports) else len(ports)

    def fits(self, v: MachineView) -> str | None:
        """f_resources, then f_ports, then the hard spread rules: the first reason ``v`` cannot take one more."""
        free = v.free
        for k, need in self.want:
            if free[k] < need:
                return f"insufficient {k}"
        if self.dynamic_ports is None:
            why = f_ports(v, self.spec)
            if why:
                return why
        elif self.dynamic_ports and v.free_ports < self.dynamic_ports:
            return "no free ports"
        return self.spread.violation(v) if self.spread.limit else None

    def score(self, v: MachineView) -> float:
        total = WEIGHTS["binpack"] * score_binpack(v, self.spec)
        if not v.empty():  # a tie-breaker never opens a machine: spreading tiny replicas over empty machines
            total += WEIGHTS["anti_affinity"] * score_anti_affinity(v, self.name, self.version)
        return self.spread.score(total, v)

    def entry(self, v: MachineView) -> HeapItem:
        return (-self.score(v), tie(self.seed, v.id), v.id)

    def take(self, v: MachineView, slot: int) -> NewPlacement:
        """Place one replica in ``slot`` on ``v`` and account for it."""
        ports = allocate_ports(v, self.spec)
        resources = dict(self.want)
        v.take(resources, ports, (self.name, self.version))
        self.spread.add(v)
        return NewPlacement(job=self.name, version=self.version, replica=slot, machine=v.id,
                            resources=resources, ports=ports)


def candidates_for(views: dict[str, MachineView], spec: Spec, check: Check) -> Candidates:
    """The machines that are schedulable and meet the job's constraints."""
    out = []
    for v in views.values():
        check()
        if f_schedulable(v, spec) is None and f_constraints(v, spec) is None:
            out.append(v)
    return Candidates(out)


# Up to this many candidates a job scores every machine that fits (the plans of every fleet up to this size are
# exactly best fit; bench/schedule.py's packing runs on 400). Past it, a sample of to_score(...) of them.
EXACT_UP_TO = 1000
SCORE_AT_LEAST = 100   # machines that fit, scored per sample (Kubernetes' scheduler finds at least 100 too)
LOOK_IN_USE = 1000     # machines in use a sample looks at before it looks at empty ones


def to_score(candidates: int, slots: int) -> int:
    """How many machines that fit a job's placement scores before it picks: all of its ``candidates`` up to
    ``EXACT_UP_TO``, past it ``SCORE_AT_LEAST`` or twice the replicas to place, whichever is more."""
    if candidates <= EXACT_UP_TO:
        return candidates
    return max(SCORE_AT_LEAST, 2 * slots)


class Scan:
    """The candidates in the order one job's placement looks at them, taken a sample at a time. When it scores
    all of them, in list order. Otherwise machines in use first (those this pass opened, the latest first, then
    those that held something when the pass began), at most ``LOOK_IN_USE`` of them, then the empty ones, then
    the rest of those in use: best fit never prefers an empty machine to one in use that fits, so a sample must
    not miss the few machines in use of a fleet that is mostly empty, nor look at all 10,000 of a fleet that is
    full to find the empty ones. The machines in use and the empty ones are each in a ``stride_for`` order
    (``Candidates.by_use``), which each job starts at an offset hashed from its seed; a machine this pass opened
    is also among the empty ones (looked at twice: harmless, ``pop_best`` checks every entry it pops).
    ``more`` scores the next ``bound`` machines that fit one replica."""

    def __init__(self, candidates: Candidates, fit: JobFit, bound: int) -> None:
        self.fit, self.bound = fit, max(1, bound)
        self.scanned = 0    # candidates looked at (fits called), for the tests' and the bench's counts
        self._parts: list[Iterator[MachineView]]    # what is left to look at, in order
        if self.bound >= len(candidates):
            self._parts = [iter(candidates)]
            return
        used, empty = candidates.by_use()
        start = int.from_bytes(hashlib.blake2b(fit.seed + b"/scan", digest_size=8).digest(), "big")
        u = start % len(used) if used else 0
        e = start % len(empty) if empty else 0
        in_use = chain(list(candidates.opened.values())[::-1], used[u:], used[:u])   # a copy: it grows meanwhile
        self._parts = [islice(in_use, LOOK_IN_USE), chain(empty[e:], empty[:e]), in_use]

    def done(self) -> bool:
        return not self._parts

    def more(self) -> list[HeapItem]:
        """Heap entries for the next ``bound`` candidates that fit one replica ([] once all were looked at)."""
        out: list[HeapItem] = []
        fit, bound, parts = self.fit, self.bound, self._parts
        looked = 0
        while parts:
            for v in parts[0]:
                looked += 1
                if fit.fits(v) is None:
                    out.append(fit.entry(v))
                    if len(out) >= bound:
                        self.scanned += looked
                        return out    # the part's iterator goes on from here next time
            parts.pop(0)
        self.scanned += looked
        return out


def pop_best(heap: list[HeapItem], views: dict[str, MachineView], fit: JobFit) -> MachineView | None:
    """The best machine that still fits one replica; stale heap entries are dropped or re-scored."""
    while heap:
        neg, t, mid = heapq.heappop(heap)
        v = views[mid]
        if fit.fits(v) is not None:
            continue  # no longer fits (it only gets fuller within a pass)
        fresh = -fit.score(v)
        if heap and fresh > heap[0][0] + 1e-9:
            heapq.heappush(heap, (fresh, t, mid))  # stale: it scores worse now
            continue
        return v
    return None


def place_job(name: str, job: Job, spec: Spec, slots: list[int], views: dict[str, MachineView],
              placements: list[Placement], index: int, check: Check = no_check) -> tuple[list[NewPlacement], str | None]:
    """New placements for ``slots`` (as many as fit, in order) and, when some do not, why."""
    out, pending, _ = place_replicas(name, job, spec, slots, views, placements, index, check)
    return out, pending


def place_replicas(name: str, job: Job, spec: Spec, slots: list[int], views: dict[str, MachineView],
                   placements: list[Placement], index: int, check: Check = no_check,
                   candidates: Candidates | None = None) -> tuple[list[NewPlacement], str | None, JobFit]:
    """``place_job``, and the job's fit as the placements left it (the packing repair moves them with it).
    ``candidates``: ``candidates_for(views, spec)`` when the caller has it (it depends only on the machine records
    and the spec's constraints, so one pass computes it once per set of constraints)."""
    if candidates is None:
        candidates = candidates_for(views, spec, check)
    fit = JobFit(name, job.version, spec,
                 Spread.of(spec, job.replicas, job.version, candidates, views, placements), f"{name}:{index}".encode())
    scan = Scan(candidates, fit, to_score(len(candidates), len(slots)))
    heap = scan.more()
    heapq.heapify(heap)
    out: list[NewPlacement] = []
    for slot in slots:
        check()
        chosen = pop_best(heap, views, fit)
        while chosen is None and not scan.done():   # the sample filled up: score the next one
            check()
            heap.extend(scan.more())
            heapq.heapify(heap)
            chosen = pop_best(heap, views, fit)
        if chosen is None:
            break
        if chosen.empty():
            candidates.note_opened(chosen)
        out.append(fit.take(chosen, slot))
        if fit.fits(chosen) is None:
            heapq.heappush(heap, fit.entry(chosen))
    if len(out) == len(slots):
        return out, None, fit
    return out, unplaced_reason(len(slots) - len(out), fit, candidates, views, check), fit


def unplaced_reason(left: int, fit: JobFit, candidates: list[MachineView], views: dict[str, MachineView],
                    check: Check) -> str:
    rejected: Counter[str] = Counter()
    for v in candidates:
        why = fit.fits(v)
        if why:
            rejected[why] += 1
    chosen = {v.id for v in candidates}
    # by id: ``v not in candidates`` compared every view field by field, O(machines^2), 1.4 s a pass at 4,000
    # machines for one job that fits nowhere
    others = [v for v in views.values() if v.id not in chosen]
    return f"{left} replicas unplaced; " + explain(others, fit.spec, rejected, total=len(views), check=check)
