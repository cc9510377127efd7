"""The scheduling pass: for each job, highest priority first, reconcile, then place its missing replicas
(feasibility -> ranking), preempting lower-priority placements when nothing else fits. Pure: no I/O, clock or
randomness; the same state gives the same plan."""
from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

from msgspec.structs import replace

from raftctl.scheduler.machines import Candidates, MachineView, ViewCache, build_views, release
from raftctl.scheduler.packing import repair
from raftctl.scheduler.place import JobFit, candidates_for, place_job, place_replicas
from raftctl.scheduler.plan import Check, NewPlacement, Plan, no_check
from raftctl.scheduler.preemption import Priorities, preempt_for
from raftctl.scheduler.reconcile import Reconciled, current_spec, reconcile
from raftctl.statemachine.records import Constraint, Job, JobSpec, Machine, Placement
from raftctl.statemachine.state import MachineUsage


def schedule(jobs: Mapping[str, Job], placements: Mapping[str, Placement], machines: Mapping[str, Machine], *,
             index: int, now: int, job_names: list[str] | None = None, check: Check = no_check,
             pack: bool = True, emit: Callable[[list[NewPlacement]], None] | None = None,
             usage: Mapping[str, MachineUsage] | None = None, cache: ViewCache | None = None,
             groups: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """One scheduling pass over ``job_names`` (default: every job), highest priority first, then the packing
    repair (``pack=False``: the greedy pass alone, for comparisons).

    ``emit``, when given, is called after each job with the new placements the pass has just added to the plan
    (so a caller can commit them while the pass goes on); they are final, so such a pass runs no packing repair.

    ``check`` is called between units of work (a machine filtered, a replica placed); a caller that must give
    up (a dry run past its time bound) makes it raise, and the pass stops there.

    ``usage``, when given, is each machine's usage by ``placements`` (``State.usage``, copied with them): the
    machine views are built from it without a walk over every placement; with ``cache`` too (the caller's
    passes one at a time), only the views of machines that changed since the cache's last pass are built.

    ``groups``, when given, is each job's placement ids (``State.job_groups``, read with ``placements``): a pass
    over some jobs reads theirs, not every placement (at 100,000 placements a one-job pass went from 8.3 to 0.4
    ms: grouping them all was the pass). A pass over every job walks them all anyway: it walks them in their
    order, which is cheaper than looking each id up (62 vs 103 ms at 100,000: the ids' order is a set's)."""
    if job_names is None:
        groups = None
    pass_ = Pass(Plan(index=index), placements, machines, check, usage, cache, groups)
    if groups is None:
        for p in placements.values():
            pass_.by_job.setdefault(p.job, []).append(p)
    # highest priority first; within a priority, biggest replicas first (best-fit decreasing packs tighter)
    names = sorted(job_names if job_names is not None else jobs, key=lambda n: order(jobs.get(n), n))
    pass_.priorities = Priorities(jobs)   # read by preemption alone: not built for every job of every pass
    for name in sorted(n for n in (groups if groups is not None else pass_.by_job) if n not in jobs):  # purged jobs
        for p in sorted(pass_.placements_of(name), key=lambda p: p.id):   # one order, however they were read
            if p.is_live():
                pass_.plan.stop.append((p.id, "job purged"))
    for name in names:
        check()
        job = jobs.get(name)
        if job is not None:
            before = len(pass_.plan.place)
            pass_.job(name, job, now)
            if emit is not None and len(pass_.plan.place) > before:
                emit(pass_.plan.place[before:])
    if pack and emit is None and pass_.plan.place:
        repair(pass_.plan, pass_.views, pass_.fits, pass_.opened, check)
    return pass_.plan


class Pass:
    """The state of one pass: the plan so far, the machine views it updates, what it stops.

    The views are built when the pass first needs them (a replica to place or a preemption): a pass whose jobs
    are all settled, the common case at a health report or a scale to the same count, only reconciles, and
    building views over every placement was two thirds of such a pass (48 ms at 1,000 machines / 10,000
    placements; issue 15). Stops decided before then are released into the views as they are built."""

    def __init__(self, plan: Plan, placements: Mapping[str, Placement], machines: Mapping[str, Machine],
                 check: Check, usage: Mapping[str, MachineUsage] | None = None,
                 cache: ViewCache | None = None, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.plan = plan
        self.groups = groups
        self.cache = cache
        self.placements = placements
        self.usage = usage
        self.machines = machines
        self.check = check
        self.by_job: dict[str, list[Placement]] = {}   # every job's, or (with groups) those read so far
        self.priorities = Priorities({})
        self.stopping: set[str] = set()
        self.fits: dict[str, JobFit] = {}           # jobs whose new placements the packing repair may move
        self._views: dict[str, MachineView] | None = None
        self._opened: set[str] = set()
        self._candidates: dict[Any, Candidates] = {}   # spec.constraints -> candidates_for (see candidates)

    @property
    def views(self) -> dict[str, MachineView]:
        if self._views is None:
            if self.cache is not None and self.usage is not None:
                views = self.cache.views(self.machines, self.usage)
            else:
                views = build_views(self.machines, self.placements, self.usage)
            self._opened = {mid for mid, v in views.items() if v.empty()}   # machines that held nothing before
            for pid in sorted(self.stopping):   # stopped or preempted so far (a purged job's stops hold nothing)
                release(views, self.placements[pid])
            self._views = views
        return self._views

    @property
    def opened(self) -> set[str]:
        self.views  # noqa: B018 (builds them, and with them the set)
        return self._opened

    def candidates(self, spec: JobSpec) -> Candidates:
        """The machines that pass the filters (schedulable, the spec's constraints), in the views' order: they depend
        only on the machine records, fixed for the pass, and on the constraints, so jobs with the same constraints
        share one list. After 100 machines were lost at 10,000, each of the 200 jobs' passes filtered all 10,000
        (19 % of the re-placement's CPU, py-spy, session 16)."""
        key = spec.constraints
        try:
            got = self._candidates.get(key)
        except TypeError:             # a constraint value that does not hash: not shared
            return candidates_for(self.views, spec, self.check)
        if got is None:
            got = self._candidates[key] = candidates_for(self.views, spec, self.check)
        return got

    def placements_of(self, name: str) -> list[Placement]:
        """Job ``name``'s placements (any order: what reads them counts or sorts them)."""
        got = self.by_job.get(name)
        if got is None:   # with groups (else by_job holds every job's, from the walk in schedule)
            got = [] if self.groups is None else list(placements_of_jobs(self.placements, (name,), self.groups).values())
            self.by_job[name] = got
        return got

    def _release(self, pid: str) -> None:
        if self._views is not None:
            release(self._views, self.placements[pid])

    def job(self, name: str, job: Job, now: int) -> None:
        spec = current_spec(job)
        rec = reconcile(job, self.placements_of(name), self.machines, now)
        for pid, reason in rec.stop:
            if pid not in self.stopping:
                self.plan.stop.append((pid, reason))
                self.stopping.add(pid)
                self._release(pid)
        if job.status != "running" or not rec.place:
            self.plan.pending[name] = ""
            return
        placed, pending, fit = place_replicas(name, job, spec, rec.place, self.views, self.placements_of(name),
                                              self.plan.index, self.check, self.candidates(spec))
        self.plan.place.extend(placed)
        self.fits[name] = fit
        if pending and spec.priority > 0:
            more = self.preempt(name, job, spec, rec, len(placed))
            if more:
                del self.fits[name]  # its replicas stay where their victims were evicted
            placed = placed + more
            if len(placed) == len(rec.place):
                pending = None
        self.plan.pending[name] = pending or ""

    def preempt(self, name: str, job: Job, spec: JobSpec, rec: Reconciled, done: int) -> list[NewPlacement]:
        """Place the slots past ``done`` by evicting lower-priority placements, one slot at a time."""
        out: list[NewPlacement] = []
        # the placements not stopped so far: a copy only when some are (100,000 placements copied per slot were
        # a quarter of a pass with a job that fits nowhere at 10,000 machines, cProfile)
        left: Mapping[str, Placement] = self.placements if not self.stopping else \
            {k: v for k, v in self.placements.items() if k not in self.stopping}
        for slot in rec.place[done:]:
            self.check()
            got = preempt_for(name, spec, self.views, left, self.priorities, self.check)
            if got is None:
                break
            mid, victims = got
            for pid in victims:
                self.plan.preempt.append((pid, name))
                self.stopping.add(pid)
                self._release(pid)
            left = {k: v for k, v in left.items() if k not in self.stopping}
            pinned = replace(spec, constraints=spec.constraints + (Constraint(attr="id", op="==", value=mid),))
            more, _ = place_job(name, job, pinned, [slot], self.views, self.placements_of(name), self.plan.index,
                                self.check)
            self.plan.place.extend(more)
            out.extend(more)
        return out


def placements_of_jobs(placements: Mapping[str, Placement], names: Collection[str],
                       groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, Placement]:
    """The placements of the jobs ``names``: through ``groups`` (``State.job_groups``, read with ``placements``)
    when given, else by a walk over every placement. Their order is not the walk's: a reader counts or sorts them."""
    if groups is not None:
        return {pid: placements[pid] for n in names for pid in groups.get(n, ())}
    return {k: p for k, p in placements.items() if p.job in names}


def order(job: Job | None, name: str) -> tuple[int, float, str]:
    """The pass's job order: priority descending, then the replica's size (its largest share of a typical
    16-core / 64 GiB machine) descending, then name."""
    if job is None:
        return (0, 0.0, name)
    spec = current_spec(job)
    r = spec.resources
    size = max(r.cpu / 1000 / 16, r.memory / (64 << 30))
    return (-spec.priority, -size, name)
