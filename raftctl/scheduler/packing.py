"""Packing repair: after the greedy pass, a bounded local search that moves this pass's new placements so that
fewer machines are used. Pure and deterministic (every choice is ordered by load, then id), bounded in work.

The greedy pass places job by job, so it cannot see that a machine it filled with memory-heavy replicas
strands CPU that a later job needed, and it then opens one more machine. The repair undoes such choices:

- **empty** a machine this pass opened (it held nothing before): move each of its new replicas onto another
  machine in use, directly (the fullest one it fits on) or by ejecting one smaller new replica from there
  onto a third machine. All of them move or none does (the moves are undone);
- when no machine can be emptied, **concentrate** load: one move, or one swap of a bigger replica for a
  smaller one, from one of the least-loaded machines to a more loaded one (load: the sum of the CPU and memory
  fractions in use), so that the next emptying has room to work with; then try emptying again.

Only placements made by this pass move, and only where the job's own placement could have put them: the
machine is schedulable and meets the job's constraints, resources and ports fit (ports are allocated again on
the new machine), a hard spread's cap per domain holds, a move never makes a spread level less even (the
destination's domain has no more of the job's replicas than the origin's had) and never stacks more replicas
of one job on one machine than the greedy pass already did (anti-affinity). Jobs that preempted are not moved
(their replicas sit where their victims were evicted).

Bound: every feasibility evaluation (one placement onto one machine) counts as one unit of work. The budget is
``REPAIR_WORK_BASE + REPAIR_WORK_PER_PLACEMENT x (new placements)`` units; it is asked between steps (never
while a placement is lifted), so the repair overshoots it by at most one step's search (machines in use x jobs
on one machine). It also stops when the machines in use equal a lower bound (the load over the largest
machine, per resource) or when no step improves. ``check`` is called every CHECK_EVERY units, so a dry run past
its time bound stops here too.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from msgspec.structs import replace

from raftctl.scheduler.feasibility import allocate_ports, f_constraints, f_ports, f_resources, f_schedulable
from raftctl.scheduler.machines import MachineView
from raftctl.scheduler.place import JobFit
from raftctl.scheduler.plan import RESOURCES, Check, NewPlacement, Plan

REPAIR_WORK_BASE = 50_000
REPAIR_WORK_PER_PLACEMENT = 4
CHECK_EVERY = 64
SOURCES = 16             # the least-loaded machines a concentrating step takes replicas from
TARGETS = 16             # the least-loaded opened machines a round tries to empty


@dataclass
class Repair:
    plan: Plan
    views: dict[str, MachineView]
    fits: dict[str, JobFit]                 # job -> its fit, for the jobs whose new placements may move
    opened: set[str]                        # machines that held nothing before the pass
    check: Check
    budget: int = 0
    work: int = 0
    emptied: int = 0
    on: dict[str, list[int]] = field(default_factory=dict)          # machine -> plan.place indexes on it
    most: dict[tuple[str, int], int] = field(default_factory=dict)   # job key -> most replicas on one machine
    feasible: dict[tuple[str, str], bool] = field(default_factory=dict)
    weight: dict[str, float] = field(default_factory=dict)          # resource -> how scarce it is
    need: int = 0                                                   # measure(), once per repair

    # -- bookkeeping -------------------------------------------------------------------------------------------

    def setup(self, in_use: list[MachineView]) -> None:
        """What the rounds need beyond the bound: the work budget, the plan's placements per machine, the
        resources' weights over the machines in use, and the most replicas of a job on one machine."""
        self.budget = REPAIR_WORK_BASE + REPAIR_WORK_PER_PLACEMENT * len(self.plan.place)
        for i, p in enumerate(self.plan.place):
            if p.job in self.fits:
                self.on.setdefault(p.machine, []).append(i)
        for k in RESOURCES:  # a resource's weight: the fraction of it in use over the machines in use
            self.weight[k] = (sum(v.capacity[k] - v.free[k] for v in in_use) /
                              (sum(v.capacity[k] for v in in_use) or 1))
        for v in self.views.values():
            for key, n in v.by_job.items():
                if key[0] in self.fits and n > self.most.get(key, 0):
                    self.most[key] = n

    def spend(self) -> None:
        self.work += 1
        if self.work % CHECK_EVERY == 0:
            self.check()

    def spent(self) -> bool:
        """Whether the work bound is reached (asked only between steps, when no placement is lifted)."""
        return self.work >= self.budget

    def load(self, v: MachineView) -> float:
        """The fractions of the machine in use, weighted by how scarce each resource is."""
        return sum(self.weight[k] * (v.capacity[k] - v.free[k]) / (v.capacity[k] or 1) for k in RESOURCES)

    def in_use(self) -> list[MachineView]:
        return [v for v in self.views.values() if not v.empty()]

    def measure(self) -> list[MachineView]:
        """One walk over every machine: the machines in use, and ``need``, the fewest machines the load fits on
        (its sum over the largest machine, per resource). Moves do not change the bound: what a move lifts off one
        machine it drops on another, and an empty machine holds nothing, so it is computed once (per round it was
        two walks over every machine, a third of the repair at 10,000)."""
        in_use: list[MachineView] = []
        biggest = dict.fromkeys(RESOURCES, 0)
        used = dict.fromkeys(RESOURCES, 0)
        for v in self.views.values():
            cap, free = v.capacity, v.free
            for k in RESOURCES:
                c = cap[k]
                if c > biggest[k]:
                    biggest[k] = c
                used[k] += c - free[k]
            if not v.empty():
                in_use.append(v)
        self.need = max((math.ceil(used[k] / (biggest[k] or 1)) for k in RESOURCES), default=0)
        return in_use

    def at_bound(self, in_use: list[MachineView]) -> bool:
        """Whether the machines in use are as few as the load allows."""
        return len(in_use) <= self.need

    # -- one placement: lift it off its machine, drop it on another ----------------------------------------------

    def lift(self, i: int) -> MachineView:
        p = self.plan.place[i]
        v, fit = self.views[p.machine], self.fits[p.job]
        v.give(p.resources, p.ports, (p.job, p.version))   # this pass's placement: {cpu, memory, pids} (JobFit.take)
        for level, _ in fit.spread.rules:
            fit.spread.counts[level][v.domain(level)] -= 1
        self.on[v.id].remove(i)
        return v

    def drop(self, i: int, v: MachineView, ports: dict[str, int] | None = None) -> None:
        p = self.plan.place[i]
        fit = self.fits[p.job]
        ports = allocate_ports(v, fit.spec) if ports is None else ports
        v.take(p.resources, ports, (p.job, p.version))
        fit.spread.add(v)
        self.on.setdefault(v.id, []).append(i)
        self.plan.place[i] = replace(p, machine=v.id, ports=ports)

    def can_drop(self, i: int, v: MachineView, origin: MachineView) -> bool:
        """Whether lifted placement ``i`` (from ``origin``) may go onto ``v``."""
        self.spend()
        p = self.plan.place[i]
        fit = self.fits[p.job]
        key = (p.job, v.id)
        if key not in self.feasible:
            self.feasible[key] = f_schedulable(v, fit.spec) is None and f_constraints(v, fit.spec) is None
        if not self.feasible[key] or f_resources(v, fit.spec) or f_ports(v, fit.spec) or fit.spread.violation(v):
            return False
        if v.by_job[(p.job, p.version)] + 1 > self.most.get((p.job, p.version), 0):
            return False  # anti-affinity: no more of the job on one machine than the greedy pass put there
        counts = fit.spread.counts
        return all(v.domain(level) == origin.domain(level) or counts[level][v.domain(level)] <= counts[level][origin.domain(level)]
                   for level, _ in fit.spread.rules)

    def move(self, i: int, dests: list[MachineView], journal: list[tuple[int, str, dict[str, int]]]) -> bool:
        """Move placement ``i`` onto the first of ``dests`` (fullest first) it may go to."""
        p = self.plan.place[i]
        fitting = [v for v in dests if self.room(v, p.resources)]
        if not fitting:
            return False
        origin = self.lift(i)
        for v in fitting:
            if v is not origin and self.can_drop(i, v, origin):
                journal.append((i, origin.id, p.ports))
                self.drop(i, v)
                return True
        self.drop(i, origin, p.ports)
        return False

    def room(self, v: MachineView, need: dict[str, int], also: dict[str, int] | None = None) -> bool:
        """The cheap test first: whether ``need`` fits in ``v``'s free resources (plus ``also``'s, once lifted)."""
        self.spend()
        if also is None:
            return all(v.free[k] >= need[k] for k in RESOURCES)
        return all(v.free[k] + also[k] >= need[k] for k in RESOURCES)

    def undo(self, journal: list[tuple[int, str, dict[str, int]]]) -> None:
        """Put every placement the journal moved back where it was before its first move, with its ports then:
        all are lifted before any is dropped, so none lands on ports another one still holds."""
        first: dict[int, tuple[str, dict[str, int]]] = {}
        for i, mid, ports in journal:
            first.setdefault(i, (mid, ports))
        for i in first:
            self.lift(i)
        for i, (mid, ports) in first.items():
            self.drop(i, self.views[mid], ports)

    # -- the search ------------------------------------------------------------------------------------------------

    def size(self, i: int) -> float:
        p = self.plan.place[i]
        v = self.views[p.machine]
        return sum(self.weight[k] * p.resources[k] / (v.capacity[k] or 1) for k in RESOURCES)

    def distinct(self, mid: str) -> list[int]:
        """One placement per job on machine ``mid`` (replicas of one job are interchangeable), biggest first."""
        seen: dict[tuple[str, int], int] = {}
        for i in sorted(self.on.get(mid, [])):
            p = self.plan.place[i]
            seen.setdefault((p.job, p.version), i)
        return sorted(seen.values(), key=lambda i: (-self.size(i), i))

    def hopeless(self, target: MachineView, pool: FreePool) -> bool:
        """The cheap test first: the other machines' free resources, summed or on the roomiest one, cannot take
        what ``target``'s new placements hold (or its smallest one)."""
        mine = [self.plan.place[i].resources for i in self.on.get(target.id, [])]
        for k in RESOURCES:
            self.spend()
            total, roomiest = pool.others(target, k)
            if total < sum(r[k] for r in mine) or roomiest < min(r[k] for r in mine):
                return True
        return False

    def empty(self, target: MachineView, dests: list[MachineView], pool: FreePool) -> bool:
        """Move every new placement off ``target``; all or nothing (``pool``: the free resources of ``dests``)."""
        journal: list[tuple[int, str, dict[str, int]]] = []
        if self.hopeless(target, pool):
            return False
        others = [v for v in dests if v is not target]
        for i in sorted(self.on.get(target.id, []), key=lambda i: (-self.size(i), i)):
            if not self.spent() and (self.move(i, others, journal) or self.eject_for(i, others, journal)):
                continue
            self.undo(journal)
            return False
        return True

    def eject_for(self, i: int, others: list[MachineView], journal: list[tuple[int, str, dict[str, int]]]) -> bool:
        """Make room for placement ``i`` on one of ``others`` by moving a smaller new placement from there to a
        third machine, then move ``i`` there."""
        mine, need = self.size(i), self.plan.place[i].resources
        for n in others:
            if self.spent():
                return False
            for q in self.distinct(n.id):
                if self.plan.place[q].job == self.plan.place[i].job or self.size(q) >= mine \
                        or not self.room(n, need, self.plan.place[q].resources):
                    continue
                mark = len(journal)
                if self.move(q, [v for v in others if v is not n], journal):
                    if self.move(i, [n], journal):
                        return True
                    self.undo(journal[mark:])
                    del journal[mark:]
        return False

    def concentrate(self, in_use: list[MachineView]) -> bool:
        """One move, or one swap of a bigger replica for a smaller one, from one of the SOURCES least-loaded
        machines with new placements to a more loaded machine, that makes the load more concentrated (the sum
        of the squared loads of the two machines grows: the search cannot cycle)."""
        # each machine's load once: every move tried below is undone unless it ends the call, so the loads stay
        # as they are until then (recomputed per source and per machine, they were 40 % of a 10,000-machine pass)
        loads = {v.id: self.load(v) for v in in_use}
        by_load = sorted(in_use, key=lambda v: (loads[v.id], v.id))
        ordered = [loads[v.id] for v in by_load]
        sources = [v for v in by_load if self.on.get(v.id)][:SOURCES]
        for a in sources:
            # the machines more loaded than a, most loaded first: the sorted list's tail past a's load, reversed
            fuller = by_load[bisect.bisect_right(ordered, loads[a.id]):][::-1]
            for i in self.distinct(a.id):
                for b in fuller:
                    if self.spent():
                        return False
                    before = self.load(a) ** 2 + self.load(b) ** 2
                    journal: list[tuple[int, str, dict[str, int]]] = []
                    if self.move(i, [b], journal) or self.swap(i, a, b, journal):
                        if self.load(a) ** 2 + self.load(b) ** 2 > before + 1e-12:
                            return True
                        self.undo(journal)
        return False

    def swap(self, i: int, a: MachineView, b: MachineView, journal: list[tuple[int, str, dict[str, int]]]) -> bool:
        """Exchange placement ``i`` (on ``a``) for a smaller new placement on ``b``."""
        mine, pi = self.size(i), self.plan.place[i]
        for q in self.distinct(b.id):
            pq = self.plan.place[q]
            if pq.job == pi.job or self.size(q) >= mine or not self.room(b, pi.resources, pq.resources) \
                    or not self.room(a, pq.resources, pi.resources):
                continue
            self.lift(i)
            self.lift(q)
            if self.can_drop(i, b, a):
                self.drop(i, b)
                if self.can_drop(q, a, b):
                    self.drop(q, a)
                    journal += [(i, a.id, pi.ports), (q, b.id, pq.ports)]
                    return True
                self.lift(i)
            self.drop(q, b, pq.ports)
            self.drop(i, a, pi.ports)
        return False

    def run(self) -> None:
        if not self.plan.place:
            return
        # a pass that leaves as few machines in use as the load allows (most passes of a full fleet, as after a
        # failover) has nothing to repair: checked before the rest of the setup, two more walks over every machine
        # (the setup was 213 of the scheduler thread's 1,213 py-spy samples in a 10,000-machine failover, session 18)
        in_use = self.measure()
        if self.at_bound(in_use):
            return
        self.setup(in_use)
        while not self.spent():
            in_use = self.in_use()
            if self.at_bound(in_use):
                return
            dests = sorted(in_use, key=lambda v: (-self.load(v), v.id))
            targets = sorted((v for v in in_use if v.id in self.opened and self.on.get(v.id)),
                             key=lambda v: (self.load(v), v.id))[:TARGETS]
            pool = FreePool.of(dests)   # an emptying that fails is undone: the same for every target
            if any(self.empty(t, dests, pool) for t in targets):
                self.emptied += 1
                continue
            steps = 0
            while steps < len(in_use) and not self.spent() and self.concentrate(in_use):
                steps += 1
            if not steps:
                return


@dataclass
class FreePool:
    """The free resources of a round's machines in use, per resource: their sum and the two roomiest machines,
    so the test that one machine's placements cannot fit on all the others is O(1) per machine (it summed all
    10,000 machines per target: 40 % of the repair after a re-placement at 10,000 machines, cProfile)."""
    total: dict[str, int]
    top: dict[str, list[tuple[int, str]]]     # resource -> [(free, machine id)] of the two roomiest

    @classmethod
    def of(cls, machines: list[MachineView]) -> FreePool:
        total = {k: 0 for k in RESOURCES}
        top: dict[str, list[tuple[int, str]]] = {k: [] for k in RESOURCES}
        for v in machines:
            for k in RESOURCES:
                f = v.free[k]
                total[k] += f
                t = top[k]
                if len(t) < 2 or f > t[-1][0]:
                    t.append((f, v.id))
                    t.sort(key=lambda e: -e[0])
                    del t[2:]
        return cls(total, top)

    def others(self, v: MachineView, k: str) -> tuple[int, int]:
        """The sum of resource ``k`` free on every machine but ``v`` (one of them), and the most on one."""
        roomiest = next((f for f, mid in self.top[k] if mid != v.id), 0)
        return self.total[k] - v.free[k], roomiest


def repair(plan: Plan, views: dict[str, MachineView], fits: dict[str, JobFit], opened: set[str],
           check: Check) -> int:
    """Run the packing repair over ``plan`` (in place: its placements' machines and ports, and ``views``);
    returns the units of work it spent."""
    r = Repair(plan, views, fits, opened, check)
    r.run()
    return r.work


__all__ = ["NewPlacement", "REPAIR_WORK_BASE", "REPAIR_WORK_PER_PLACEMENT", "repair"]
