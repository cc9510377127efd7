"""The leader's scheduler loop: observe committed state, compute a plan (pure), propose it.

Triggered by changes to jobs, machines or placements, plus a periodic resync.
The plan carries the state index it was computed at and this leader's epoch;
the state machine re-checks every placement and rejects what no longer fits,
and the next pass recomputes. Safe to kill at any line: the log is the truth.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from raftctl.clock import Clock
from raftctl.errors import Unavailable
from raftctl.scheduler import schedule
from raftctl.scheduler.dirty import affected_jobs
from raftctl.scheduler.driver import placements_of_jobs
from raftctl.scheduler.machines import ViewCache
from raftctl.scheduler.preemption import PURGED_PRIORITY
from raftctl.scheduler.reconcile import current_spec
from raftctl.statemachine import commands as c
from raftctl.statemachine.records import Job, Machine, Placement, list_to_wire
from raftctl.statemachine.state import MachineUsage

log = logging.getLogger("raftctl.scheduler")

RESYNC_S = 5.0
FAILED_PASS_PAUSE_S = 1.0   # before retrying a pass that raised

# -- dry runs (POST /v1/jobs/{name}/plan): bounded work off the event loop ---------------------------------------
# A dry run is pure computation on a worker thread of its own pool, never on the event loop. It answers within
# PLAN_TIMEOUT_S or is abandoned: the scheduler's check() then raises at its next unit of work (a machine
# filtered, a replica placed), so an abandoned plan stops within milliseconds instead of running on. At most
# PLAN_CONCURRENCY dry runs compute at once per replica; past that a request is refused at once (429), so
# readers cannot queue up CPU-heavy work behind each other.
PLAN_TIMEOUT_S = 2.0
PLAN_CONCURRENCY = 2
GIL_OFFER_S = 0.002  # at most this long between two offers of the GIL to the event loop by a pass's check()

_plan_pool = ThreadPoolExecutor(max_workers=PLAN_CONCURRENCY, thread_name_prefix="raftctl-plan")
_plans_running = 0

T = TypeVar("T")


class PlanAbandoned(Exception):
    """Raised inside an abandoned dry run by its check()."""


async def run_plan(work: Callable[[Callable[[], None]], T], *, timeout: float | None = None) -> T:
    """``work(check)`` on a plan worker thread; Unavailable 503 (plan_timeout) when it cannot answer within
    ``timeout`` (default PLAN_TIMEOUT_S), 429 (plan_busy) when PLAN_CONCURRENCY dry runs are already computing."""
    global _plans_running
    timeout = PLAN_TIMEOUT_S if timeout is None else timeout
    if _plans_running >= PLAN_CONCURRENCY:
        raise Unavailable(f"{_plans_running} plans are being computed on this replica already; retry in a moment",
                          code="plan_busy", http_status=429)
    stop = threading.Event()
    offer = gil_offer()

    def check() -> None:
        if stop.is_set():
            raise PlanAbandoned()
        offer()

    def done(_: Any) -> None:
        global _plans_running
        _plans_running -= 1

    _plans_running += 1
    fut = asyncio.get_running_loop().run_in_executor(_plan_pool, work, check)
    fut.add_done_callback(done)   # the slot frees when the thread really ends, not when the request gives up
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except asyncio.TimeoutError:
        stop.set()
        fut.add_done_callback(_swallow)
        raise Unavailable(f"the plan needed more than {timeout:g}s of computation and was abandoned; plan fewer "
                          f"replicas or simpler constraints", code="plan_timeout") from None
    except asyncio.CancelledError:  # the client went away
        stop.set()
        fut.add_done_callback(_swallow)
        raise


def gil_offer() -> Callable[[], None]:
    """A scheduler ``check`` that, once GIL_OFFER_S has passed since its last offer, offers the GIL to the event
    loop's thread: a pass on a worker thread otherwise keeps it for a whole switch interval each time the loop needs
    it (measured: /healthz max 160-240 ms during a 2 s plan without, 47-64 ms with an offer every 32 calls). Offering
    every 32 calls made the leader's pass several times slower than the same pass alone: each offer can wait a
    switch interval for the GIL to come back, and a pass filters every machine for every job (py-spy, leader
    during bench/schedule.py: the check in candidates_for was 58 % of the pass)."""
    last = time.monotonic()

    def offer() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= GIL_OFFER_S:
            time.sleep(0)
            last = time.monotonic()
    return offer


def _swallow(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: an abandoned plan's PlanAbandoned is expected, not "never retrieved"


Inputs = tuple[dict[str, Job], dict[str, Placement], dict[str, Machine], int, dict[str, MachineUsage],
               dict[str, tuple[str, ...]], list[str] | None]


class JobPriorities:
    """Each job's priority and how many jobs hold each, kept in step with the jobs of the scheduler loop's last read
    (``_inputs``): the lowest priority of all jobs is what ``may_preempt`` compares with, and computing it over
    every job for every pass was O(jobs) on the event loop under the apply lock (1.6-3.2 ms at 10,000 jobs,
    session 33). A pass over every job rebuilds it; a pass over some jobs updates the ones it covers, which are
    every job whose record changed, came or went (``affected_jobs``), so every job whose priority can have moved."""

    def __init__(self) -> None:
        self.of: dict[str, int] = {}
        self.count: Counter[int] = Counter()
        self.valid = False    # nothing read yet, or an update that raised: the next sync rebuilds

    def sync(self, jobs: Mapping[str, Job], changed: Iterable[str] | None) -> None:
        """Bring it to ``jobs``: ``changed`` None rebuilds, else only the jobs named (every job whose record
        differs from the last sync's must be among them)."""
        try:
            if changed is None or not self.valid:
                self.of = {n: current_spec(j).priority for n, j in jobs.items()}
                self.count = Counter(self.of.values())
            else:
                for name in changed:
                    old = self.of.pop(name, None)
                    if old is not None:
                        self.count[old] -= 1
                        if not self.count[old]:
                            del self.count[old]
                    job = jobs.get(name)
                    if job is not None:
                        self.of[name] = priority = current_spec(job).priority
                        self.count[priority] += 1
            self.valid = True
        except BaseException:
            self.valid = False
            raise

    def lowest(self, default: int) -> int:
        """The lowest priority of all jobs (``default`` when there is none)."""
        return min(self.count) if self.count else default


class UsageCopy:
    """The scheduler loop's last copy of State.usage, reused while the state's ``usage_version`` says no entry was
    replaced since (copying 10,000 machines' entries for every pass was most of ``_inputs`` in
    bench/api_scale.py, where the writes scale empty jobs). The entries are immutable; the pass only reads them."""

    def __init__(self) -> None:
        self.of: Any = None          # the State copied (a restore brings a new one; the old one is kept until the
        #                              next pass reads the new one)
        self.version: int | None = -1
        self.copy: dict[str, MachineUsage] = {}

    def take(self, s: Any) -> dict[str, MachineUsage]:
        version = getattr(s, "usage_version", None)   # None (a test's stand-in state): copied every time
        if version is None or self.of is not s or self.version != version:
            self.of, self.version, self.copy = s, version, dict(s.usage)
        return self.copy


def _inputs(s: Any, before: tuple[dict[str, Job], dict[str, Machine]] | None, since: int | None,
            priorities: JobPriorities, usage_copy: UsageCopy | None = None) -> Inputs:
    """What a pass reads, under the apply lock (shallow copies; the pure scheduler runs outside it), and the jobs it
    covers: (jobs, placements, machines, index, usage, groups, names), names None for a pass over every job.

    Each machine's usage entry is immutable (apply replaces it), so the copy of State.usage matches the copy of the
    placements, and so do the per-job id tuples (State.job_groups). A pass over every job (no ``before``: the first,
    a resync, after a failed or refused pass; or a restore since ``since``, which the per-job change index cannot
    tell) gets every placement. Between resyncs a pass covers the jobs a change can give work to (dirty.py), found
    here from the state's indexes (the jobs whose placements changed since ``since``, those with a placement on a
    machine that changed), and gets only their placements and those of purged jobs, unless one of them could
    preempt another job's (a priority above the lowest): at 30,000 machines copying all 300,000 placements was
    10-13 ms of this read, for every pass (session 30)."""
    usage = usage_copy.take(s) if usage_copy is not None else dict(s.usage)
    jobs, groups, index = dict(s.jobs), s.job_groups(), s.index
    if before is None or since is None or s.job_floor > since:
        priorities.sync(jobs, None)
        return jobs, dict(s.placements), dict(s.machines), index, usage, groups, None
    touched = {job for job, at in s.job_index.items() if at > since}
    jobs0, machines0 = before
    # no machine record changed since the last read (every change bumps the table): its copy is still exact
    machines = machines0 if s.table_index["machines"] <= since else dict(s.machines)

    def jobs_on(moved: set[str]) -> set[str]:
        return {s.placements[pid].job for mid in moved for pid in s.by_machine.get(mid, ())}
    names = sorted(affected_jobs(jobs0, jobs, machines0, machines, touched, jobs_on))
    priorities.sync(jobs, names)
    purged = [n for n in groups if n not in jobs]
    if may_preempt(jobs, names, bool(purged), priorities.lowest(0)):
        return jobs, dict(s.placements), machines, index, usage, groups, names
    return jobs, placements_of_jobs(s.placements, [*names, *purged], groups), machines, index, usage, groups, names


def may_preempt(jobs: Mapping[str, Job], names: Sequence[str], purged: bool, lowest: int) -> bool:
    """Whether a pass over ``names`` could evict another job's placement: one of them (a job still there) asks a
    priority above 0 and above ``lowest``, the lowest of all jobs (``JobPriorities.lowest``; a purged job's
    placements count as PURGED_PRIORITY, as the pass takes them). Preemption reads every placement; nothing else in
    a pass over some jobs reads another job's."""
    top = max((current_spec(jobs[n]).priority for n in names if n in jobs), default=0)
    if top <= 0:
        return False
    return top > (min(lowest, PURGED_PRIORITY) if purged else lowest)


def _watch_key(s: Any) -> int:
    return max(s.table_index["jobs"], s.table_index["machines"], s.table_index["placements"])


# At most this many new placements per Plan command (one log entry). A replica applies an entry on its raft tick
# thread, which sends no heartbeat and answers no vote meanwhile: at 60-200 us per placement (bench of the apply on
# this loaded 2-core machine), 1,000 per entry held it long enough to depose the leader (election timeout 0.3-0.6 s)
# in bench/schedule.py; 250 keeps an apply near 50 ms. A pass's whole plan is proposed, slice after slice, before
# the next pass: proposing one 100-placement slice per pass made a 20,000-replica backlog cost 200 full passes,
# each over every replica still unplaced.
MAX_PLACE_PER_PLAN = 250


def plan_commands(plan: Any, jobs: Mapping[str, Job], epoch: int) -> list[c.Plan]:
    """The Plan commands for a scheduler plan, in order: its new placements in slices of MAX_PLACE_PER_PLAN; the
    first command also carries the plan's stops, preemptions and pending reasons. Empty when it changes nothing.

    Each command carries the plan's index and this leader's epoch; the state machine re-checks every item of each
    slice against the state it is applied to, so a slice applied after others (or after another write) is as safe
    as the first one: what no longer fits is rejected, and the next pass recomputes."""
    place = list_to_wire(plan.place)
    stop = [{"placement": pid, "reason": reason} for pid, reason in plan.stop]
    stop += [{"placement": pid, "reason": f"preempted by higher-priority job {by}"} for pid, by in plan.preempt]
    pending = {}
    for name, want in plan.pending.items():   # the jobs the pass covered (all of them, or the affected ones)
        job = jobs.get(name)
        if job is not None and (job.pending_reason or "") != want:
            pending[name] = want
    if not place and not stop and not pending:
        return []
    slices = [place[i:i + MAX_PLACE_PER_PLAN] for i in range(0, len(place), MAX_PLACE_PER_PLAN)] or [[]]
    return [c.Plan(epoch=epoch, index=plan.index, place=sl, stop=stop if i == 0 else [],
                   pending=pending if i == 0 else {}) for i, sl in enumerate(slices)]


def plan_command(plan: Any, jobs: Mapping[str, Job], epoch: int) -> c.Plan | None:
    """The first of ``plan_commands`` (its first MAX_PLACE_PER_PLAN placements), or None when it changes nothing."""
    cmds = plan_commands(plan, jobs, epoch)
    return cmds[0] if cmds else None


# A pass that changes nothing but jobs' pending reasons ("3 replicas unplaced; ...": what `raftctl job status` says
# of replicas that wait) does not propose them at once: they are held, the next passes' reasons for the same jobs
# replacing them, and proposed PENDING_HOLD_S after the first was held, or with the next pass that places or stops.
# Each scale of a job that cannot be placed changed its reason, so every such write was followed by the scheduler's
# own Plan entry through Raft (a sequential client through the leader: p50 2.52-3.25 ms with it, 1.94-2.77 without;
# through a follower 3.35-4.59 and 2.37-3.81 ms; session 32).
PENDING_HOLD_S = 0.25

# A pass whose backlog (replicas wanted by running jobs minus their live placements) exceeds this streams its plan:
# each job's new placements are committed, a slice at a time, while the pass goes on with the next jobs (measured
# on bench/schedule.py: the pass and the commit of 20,000 placements took 11.0 s and 4.2 s one after the other).
# Such a pass runs no packing repair: its placements are final as they are handed over (on the 20,000-replica
# bench the repair spends its whole budget to save 1 machine of 618).
STREAM_ABOVE = 4 * MAX_PLACE_PER_PLAN

PASS_RATE = 50.0
PASS_BURST = 4.0
"""The passes a leader starts: a burst of PASS_BURST at once, then PASS_RATE a second (a token bucket). A change
after a quiet spell (a job PUT, a machine lost) is planned at once, as are the few passes one change leads to (its
Plan's own commit, the agents' reports); under a sustained write load a pass is started at most every 1/PASS_RATE
s and covers every job changed meanwhile (``affected_jobs`` over the state since the last pass), instead of one
pass per handful of writes, each with its fixed cost (the inputs, a worker thread's round trip, a Plan command)."""


class PassBucket:
    """PASS_BURST passes at once, then PASS_RATE a second: ``wait(now)`` is how long to wait before the next pass
    (0: start it, and it is counted)."""

    def __init__(self, rate: float = PASS_RATE, burst: float = PASS_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at: float | None = None

    def wait(self, now: float) -> float:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens > 1.0 - 1e-6:   # not >= 1: a wait of 1e-14 s, added to a large clock, would not move it
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


def backlog(jobs: Mapping[str, Job], placements: Mapping[str, Placement]) -> int:
    """How many more replicas the running jobs want than they have live placements (roughly: the pass's work)."""
    want = sum(j.replicas for j in jobs.values() if j.status == "running")
    have = sum(1 for p in placements.values() if p.is_live())
    return want - have


INLINE_BACKLOG_JOBS = 64
"""A pass over at most this many jobs learns on the event loop, with no count, that its backlog is 0 when the jobs
cannot want more than STREAM_ABOVE replicas (a sum over the jobs, a few microseconds). Only a larger pass, or one
that might stream, hands the count to a worker thread: under a steady write load most passes cover a handful of
jobs, and the hop to the worker and back cost as much of the leader's time as the count."""


def _wants_few(names: list[str], jobs: Mapping[str, Job]) -> bool:
    """Whether the jobs of ``names`` cannot want more than STREAM_ABOVE replicas in all (so their backlog is 0)."""
    return sum(j.replicas + j.surge_slots for n in names
               if (j := jobs.get(n)) is not None and j.status == "running") <= STREAM_ABOVE


def _backlog(names: list[str] | None, jobs: Mapping[str, Job], placements: Mapping[str, Placement],
             groups: Mapping[str, Sequence[str]] | None = None) -> int:
    """A pass's backlog: over every job (``names`` None) counted over every placement; over some jobs 0 when they
    cannot want more than STREAM_ABOVE replicas (no count then), else counted over their placements."""
    if names is None:
        return backlog(jobs, placements)
    if _wants_few(names, jobs):
        return 0
    covered = {n: jobs[n] for n in names if n in jobs}
    return backlog(covered, placements_of_jobs(placements, covered, groups))


class Streamed:
    """A streaming pass's hand-over: the worker thread emits each job's new placements; on the event loop,
    ``consume`` commits them MAX_PLACE_PER_PLAN at a time until the pass ends (a None on the queue). After a
    slice fails or is refused, nothing more is proposed from this pass."""

    def __init__(self, sched: "SchedulerLoop", loop: asyncio.AbstractEventLoop, index: int) -> None:
        self.sched = sched
        self.loop = loop
        self.index = index
        self.queue: asyncio.Queue[list[Any] | None] = asyncio.Queue()
        self.received = 0           # placements handed over so far (a prefix of the plan's place list)
        self.held: list[Any] = []   # handed over, not proposed yet
        self.outcome = "ok"
        self.rejected = False

    def emit(self, items: list[Any]) -> None:  # on the worker thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, list(items))

    async def consume(self) -> None:
        while (items := await self.queue.get()) is not None:
            self.received += len(items)
            self.held.extend(items)
            while len(self.held) >= MAX_PLACE_PER_PLAN and self.outcome == "ok":
                part, self.held = self.held[:MAX_PLACE_PER_PLAN], self.held[MAX_PLACE_PER_PLAN:]
                place = list_to_wire(part)
                got = await self.sched.commit([c.Plan(epoch=self.sched.epoch, index=self.index, place=place,
                                                      stop=[], pending={})])
                if got == "rejected":
                    self.rejected = True
                else:
                    self.outcome = got


class SchedulerLoop:
    """The leader's passes. Its time (the resync period, the pauses, the ``now`` a pass plans at) is the replica's
    clock (``replica.clock``, or ``clock`` when given); a pass's own duration is measured on the real perf counter
    (a figure for status and metrics, not a decision)."""

    def __init__(self, replica: Any, epoch: int, clock: Clock | None = None) -> None:
        self.replica = replica
        self.epoch = epoch
        self.clock: Clock = replica.clock if clock is None else clock
        self.passes = 0
        self.placed = 0
        self.rejected = 0
        self.failed = 0
        self.last_pass_ms = 0.0
        self.pass_ms = 0.0        # all passes' time (the pure pass on its worker thread)
        self.commit_ms = 0.0      # all time spent proposing and awaiting the apply of Plan commands
        self.commands = 0         # Plan commands proposed
        self.largest_plan = 0     # most new placements one pass planned
        self.full_passes = 0      # passes over every job (the first, each resync, after a failed or refused one)
        self.skipped = 0          # changes no job could have work from: no pass
        self.at_index = 0         # the state index of the last pass's inputs, set once its plan is committed
        # the machine views of the last pass, kept for the next (only changed machines' views are built again);
        # the passes below run one after another, which the cache needs
        self.views = ViewCache()
        self.priorities = JobPriorities()   # in step with the jobs of the last _inputs (may_preempt's lowest)
        self.usage_copy = UsageCopy()       # State.usage as the last _inputs copied it
        self.held_reasons: dict[str, str] = {}   # job -> its latest pending reason, not proposed yet (PENDING_HOLD_S)
        self.held_due: float | None = None      # when the held reasons are proposed (the clock's monotonic time)
        self.held_plan: Any = None              # the latest pass's plan (its index goes with the held reasons)
        self.held_commands = 0                  # Plan commands that carried only held reasons
        self.bucket = PassBucket()
        self.paced = 0                          # passes put off by the bucket (PASS_RATE)

    def _hold(self, plan: Any) -> None:
        """Keep a pass's pending reasons (every job it covered, changed or not: a newer pass's word replaces an
        older one's) to propose later."""
        self.held_reasons.update(plan.pending)
        self.held_plan = plan
        if self.held_due is None and self.held_reasons:
            self.held_due = self.clock.monotonic() + PENDING_HOLD_S

    def _with_held(self, plan: Any) -> Any:
        """``plan`` carrying the held reasons as well (its own, newer, win); nothing is held after it."""
        held, self.held_reasons, self.held_due = self.held_reasons, {}, None
        return dataclasses.replace(plan, pending={**held, **plan.pending}) if held else plan

    async def _propose_held(self) -> str:
        """Propose the held reasons that differ from the jobs' stored ones (read now); the commit's outcome."""
        plan = self._with_held(dataclasses.replace(self.held_plan, place=[], stop=[], preempt=[], pending={}))
        jobs = self.replica.read(lambda s: {n: s.jobs[n] for n in plan.pending if n in s.jobs})
        cmds = plan_commands(plan, jobs, self.epoch)
        self.held_commands += len(cmds)
        return await self.commit(cmds)

    async def run(self) -> None:
        seen = -1
        last_resync = 0.0
        last: tuple[dict[str, Job], dict[str, Machine]] | None = None  # the last pass's jobs and machines
        last_index = 0                                                # and their state index
        loop = asyncio.get_running_loop()
        while True:
            if self.held_due is not None and self.clock.monotonic() >= self.held_due:
                outcome = await self._propose_held()
                if outcome == "deposed":
                    return
                if outcome != "ok":
                    last = None   # a reason not stored: the next pass covers every job and says it again
            key = self.replica.read(_watch_key)
            resync = self.clock.monotonic() - last_resync >= RESYNC_S
            if key == seen and not resync:
                wait = 1.0 if self.held_due is None else max(0.0, min(1.0, self.held_due - self.clock.monotonic()))
                await self.replica.wait_for(_watch_key, key, wait)
                continue
            pause = self.bucket.wait(self.clock.monotonic())
            if pause > 0:
                self.paced += 1
                await self.clock.sleep(pause)
                continue   # what changed meanwhile joins the pass
            seen = key
            # Between two resyncs a pass covers only the jobs the change can give work to (dirty.py), with only
            # their placements; a resync, the first pass and the pass after a failed or refused one cover every
            # job (_inputs). The backlog's count (every placement, in a full pass) runs on a worker thread: at
            # 30,000 placements it cost ~7 ms, on the event loop at every change; a pass over a few small jobs
            # needs no count (INLINE_BACKLOG_JOBS).
            before = None if resync or last is None else last
            jobs, placements, machines, index, usage, groups, names = self.replica.read(
                lambda s: _inputs(s, before, last_index, self.priorities, self.usage_copy))  # noqa: B023
            if names is None:
                last_resync = self.clock.monotonic()
                self.full_passes += 1
            last, last_index = (jobs, machines), index
            if names == []:
                self.skipped += 1
                self.at_index = index
                continue
            if names is not None and len(names) <= INLINE_BACKLOG_JOBS and _wants_few(names, jobs):
                behind = 0
            else:
                behind = await loop.run_in_executor(None, _backlog, names, jobs, placements, groups)
            now = self.clock.now_ms()
            t0 = time.perf_counter()
            stream = behind > STREAM_ABOVE
            streamed = Streamed(self, loop, index) if stream else None
            # the pure pass runs on a worker thread, never on the event loop; it is not abandoned (the leader
            # needs its plan) but offers the GIL to the loop as a dry run does. A pass with a big backlog hands
            # its placements over job by job, and they are committed while it goes on (no packing repair then).
            try:
                fut = loop.run_in_executor(None, lambda: schedule(  # noqa: B023
                    jobs, placements, machines, index=index, now=now, check=gil_offer(),  # noqa: B023
                    job_names=names, pack=not stream, emit=streamed.emit if streamed else None,  # noqa: B023
                    usage=usage, cache=self.views, groups=groups))  # noqa: B023
                if streamed is not None:
                    fut.add_done_callback(lambda _: streamed.queue.put_nowait(None))  # noqa: B023
                    await streamed.consume()
                plan = await fut
            except Exception:  # a bug (the pass is pure): say so and retry, never let the loop die unseen
                log.exception("scheduler pass failed at index %d", index)
                self.failed += 1
                self.views = ViewCache()   # the failed pass's thread may still hold the old one
                await self.clock.sleep(FAILED_PASS_PAUSE_S)
                seen, last = -1, None
                continue
            self.last_pass_ms = (time.perf_counter() - t0) * 1000
            self.pass_ms += self.last_pass_ms
            self.passes += 1
            self.largest_plan = max(self.largest_plan, len(plan.place))
            t1 = time.perf_counter()
            if streamed is None and not plan.place and not plan.stop and not plan.preempt:
                self._hold(plan)   # reasons only: proposed PENDING_HOLD_S later, or with the next pass's work
                outcome = "ok"
            elif streamed is None:
                outcome = await self.commit(plan_commands(self._with_held(plan), jobs, self.epoch))
            elif streamed.outcome != "ok":
                outcome = streamed.outcome   # the rest of the plan is dropped; the next pass recomputes it
            else:
                rest = plan.place[streamed.received:]
                tail = plan_commands(self._with_held(dataclasses.replace(plan, place=streamed.held + rest)), jobs,
                                     self.epoch)
                outcome = await self.commit(tail)
                if streamed.rejected and outcome == "ok":
                    outcome = "rejected"
            self.commit_ms += (time.perf_counter() - t1) * 1000
            if outcome == "deposed":
                return  # leadership is over; Leadership stops us
            if outcome == "failed":
                await self.clock.sleep(0.2)
            if outcome in ("failed", "rejected"):
                seen = -1  # recompute at once against the newer state (a refused command waits for a change)
            if outcome != "ok":
                last = None  # and over every job: what the plan left undone is no change the next diff would see
            self.at_index = index

    async def commit(self, cmds: list[c.Plan]) -> str:
        """Propose a pass's commands in order, each once the one before it is applied (so a log entry holds one
        slice and the apply lock is held for one slice at a time). "ok"; "rejected" when the state machine
        rejected an item; "refused" when it rejected a whole command; "failed" when one was not committed;
        "deposed" on a stale epoch. What is left of the plan after a failure or a refusal is dropped: the next
        pass recomputes it."""
        outcome = "ok"
        for cmd in cmds:
            self.commands += 1
            try:
                res = await self.replica.propose(cmd, timeout=10.0)
            except Exception as exc:
                log.warning("plan not committed: %s", exc)
                return "failed"
            if not res.ok:
                log.info("plan rejected: %s", res.error)
                return "deposed" if res.error and res.error.code == "stale_epoch" else "refused"
            self.placed += len(res.value.get("placed", []))
            self.rejected += len(res.value.get("rejected", []))
            if res.value.get("rejected"):
                outcome = "rejected"
        return outcome

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "placed": self.placed, "rejected": self.rejected, "failed": self.failed,
                "last_pass_ms": round(self.last_pass_ms, 2), "pass_ms": round(self.pass_ms, 1),
                "commit_ms": round(self.commit_ms, 1), "commands": self.commands, "largest_plan": self.largest_plan,
                "full_passes": self.full_passes, "skipped": self.skipped, "held_commands": self.held_commands,
                "paced": self.paced,
                "views_built": self.views.built, "views_reused": self.views.reused}
