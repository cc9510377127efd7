"""Failover monitor: heartbeat TTLs in the leader's memory; only transitions are committed.

``judge`` is the pure decision; :class:`FailoverMonitor` is the thin driver the
leader runs. A new leader re-arms every TTL (everyone gets a fresh TTL) before
judging anybody. When more than ``max_silent_fraction`` of the up machines are
silent at once (more likely a partition than a fire), machines are declared
down at most one per ``mass_interval_s``, and the guard shows in status.

At fleet scale (issue 15) a tick costs O(changes), not O(machines): the up machines are kept in an
ordered dict oldest heartbeat first (a heartbeat moves its machine to the end, the clock being
monotonic), so the silent ones are a prefix of it (give or take the heartbeat credit below); the machines table is re-read only when its table
index moved. Every machine the verdict names is proposed at once (at most ``max_in_flight`` in
flight, oldest silence first): the proposer batches concurrent commands into one log entry. The tick does
not wait for those commits (session 20): the next verdict comes a period later, not a commit later, and a
machine whose proposal is in flight is not proposed again.

The heartbeat budget (issue 15, Nomad's ``max_heartbeats_per_second``): the interval told to agents is
``max(interval_s, up machines / max_heartbeats_per_s)`` (``told_interval``, in 0.1 s steps, at most
``max_interval_s``), and the TTL the same multiple of it as ``ttl_s`` is of ``interval_s``. It grows at once
when the fleet grows and shrinks only when the fleet fell by more than ``hysteresis``, so it does not flap.
Each machine is judged by the larger of the TTL told with its last heartbeat answer and the current one, so
a shrinking interval never declares a machine down before the TTL it was told. A new leader re-arms every
machine with the TTL of the interval for the whole machines table (up or not): the largest a leader with the
same flags could have told, since every interval told was computed from a count of up machines no larger.

Silence survives a leader change (session 11): the leader commits ``MachinesSilent``, the up machines it has not
heard from for half a TTL with how long, every ``silence_every_s`` while there is one (or one to clear). A new leader starts those machines' TTLs that far along (``credit``): re-armed afresh, a frozen machine was
never declared down while leaders changed faster than the TTL (10,000 machines, TTL 30 s: 0 of 100 in 120 s). It
still gives each of them ``leader_grace_s`` plus one interval to find it, so a live machine that could not reach the
old leader is not declared down before it can beat here. The age is as of the commit (no clock of another replica
is compared with ours): the time between that commit and this leader's start is not credited.

A heartbeat counts from when it was sent (session 16): agents stamp it with their monotonic clock (``sent_ms``),
and the time it waited in this leader's queues past the quickest heartbeat from that machine lately (the offset
between the two clocks cancels out) is taken off its age, up to a cap, less any time the leader was held meanwhile
(already left out of every age). A machine frozen right after a heartbeat that was read seconds later is declared
down a TTL after it sent that heartbeat, not a TTL after the leader got to it.
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raftctl.clock import SYSTEM, Clock
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import MAX_SILENT

log = logging.getLogger("raftctl.failover")

STATUS_OLDEST = 20   # machines listed with their heartbeat age in GET /v1/status (all of them: the metric)


@dataclass
class FailoverConfig:
    ttl_s: float = 3.0
    interval_s: float = 1.0            # what agents are told to heartbeat at
    max_silent_fraction: float = 0.5
    mass_interval_s: float = 10.0
    min_machines_for_guard: int = 3
    max_in_flight: int = 256           # MachineDown proposals awaited at once by one tick
    # the heartbeat budget: agents are told an interval that keeps the fleet's heartbeats under this rate
    # (0: no budget, always interval_s). 2,000/s until session 6: at 3,000 machines (1.5 s) the leader's event loop
    # was ~90 % busy at 226-261 us per agent request (heartbeats carry stats). 1,000/s until session 22: at 10,000
    # machines (10 s, TTL 30 s) the leader's loop was ~90 % busy after placing (py-spy, session 21) and a failover's
    # re-placing (or the placing) tipped it into a spiral in 8 of 11 runs (sessions 20-21). 500/s: 10,000 machines
    # beat every 20 s, TTL 60 s
    max_heartbeats_per_s: int = 500
    max_interval_s: float = 60.0       # the longest interval ever told (agents cap what they follow at 60 s too)
    hysteresis: float = 0.2            # the interval shrinks only when the fleet's asks for 20 % less
    # a new leader gives every machine this long on top of the re-arm TTL to find it: an agent whose heartbeat
    # was parked on the old leader (paused, cut off) waits out its request bound (2 s) before it tries the
    # other replicas; without it a 4 s pause of the leader had all 3 machines declared down 3.0 s after the
    # election (jepsen-style seed 1). Nomad's equivalent (failover heartbeat TTL) is 5 minutes.
    leader_grace_s: float = 5.0
    # Local health awareness (Lifeguard, HashiCorp memberlist): time the leader itself was held (its monitor woke
    # more than this late: its event loop busy, the process out of CPU) is not counted against any machine's
    # TTL, as heartbeats sent meanwhile sat unread in its queues or timed out at the agent. At 10,000 machines
    # on 2 cores the leader's loop was held up to 8.9 s while placing and it declared 960 live machines down.
    held_free_s: float = 1.0
    # silence that survives a leader change: machines silent past silence_after (a fraction of the TTL) are
    # committed with their age (MachinesSilent) this often while there are any (or a list to clear)
    silence_after: float = 0.5
    silence_every_s: float = 2.0
    max_silence_listed: int = MAX_SILENT   # the longest-silent ones (what apply takes in one list)
    # a heartbeat is counted from when the agent sent it (its ``sent_ms``), not from when this leader got to it:
    # the time it waited in the leader's queues past the quickest one from that machine lately is credited back,
    # at most credit_max_s and credit_max_ttl of the TTL (0.3 s at a 3 s TTL, 2 s at 30 s). At 10,000 machines
    # the heartbeats a frozen machine sent just before the freeze were read up to 2 s later, and it was declared
    # down 31.96 s after the freeze (TTL 30 s), the whole margin of the aim (bench/scale.py, session 15)
    credit_max_s: float = 2.0
    credit_max_ttl: float = 0.1


def told_interval(n_up: int, cfg: FailoverConfig, current: float | None = None) -> float:
    """The heartbeat interval to tell agents with ``n_up`` up machines (pure): ``max(interval_s, n_up / budget)``
    rounded up to 0.1 s, at most ``max_interval_s``. From ``current`` it grows at once (over budget) and shrinks
    only below ``current * (1 - hysteresis)``."""
    want = cfg.interval_s
    if cfg.max_heartbeats_per_s > 0 and n_up > 0:
        tenths = -(-(n_up * 10) // cfg.max_heartbeats_per_s)          # ceil, in integers: no float residue
        want = max(want, tenths / 10)
    want = min(want, max(cfg.interval_s, cfg.max_interval_s))
    if current is None or want > current or want < current * (1 - cfg.hysteresis):
        return want
    return current


def ttl_for(interval_s: float, cfg: FailoverConfig) -> float:
    """The TTL told with ``interval_s``: the configured multiple (``ttl_s / interval_s``, 3 s / 1 s) of it."""
    return interval_s * cfg.ttl_s / cfg.interval_s


@dataclass
class Verdict:
    down: list[str] = field(default_factory=list)      # oldest silence first
    guard_active: bool = False
    silent: list[str] = field(default_factory=list)    # by name


def judge_silent(n_up: int, silent: list[tuple[float, str]], now: float, cfg: FailoverConfig,
                 last_mass_down: float | None, n_machines: int | None = None) -> Verdict:
    """The verdict from the silent up machines, given as ``(last_seen, machine)`` sorted oldest first,
    out of ``n_up`` up machines of ``n_machines`` in the table (default ``n_up``) (pure). The mass-loss guard
    needs ``min_machines_for_guard`` machines in the table, not up: counted on the up ones, the first machine
    declared down switched the guard off for the rest (3 of 3 down within 0.21 s, jepsen-style seed 1)."""
    if not silent:
        return Verdict()
    names = sorted(m for _, m in silent)
    known = max(n_up, n_machines or 0)
    guard = known >= cfg.min_machines_for_guard and len(silent) / n_up > cfg.max_silent_fraction
    if not guard:
        return Verdict(down=[m for _, m in silent], silent=names)
    if last_mass_down is not None and now - last_mass_down < cfg.mass_interval_s:
        return Verdict(guard_active=True, silent=names)
    # the longest-silent first, one at a time
    return Verdict(down=[silent[0][1]], guard_active=True, silent=names)


def judge(up: list[str], last_seen: dict[str, float], now: float, cfg: FailoverConfig,
          last_mass_down: float | None, *, ttl_s: float | None = None,
          told: Mapping[str, float] | None = None) -> Verdict:
    """Which up machines to declare down now, oldest silence first (pure). A machine is silent past the larger
    of ``ttl_s`` (the current TTL; default ``cfg.ttl_s``) and the TTL it was ``told`` with its last heartbeat."""
    floor = cfg.ttl_s if ttl_s is None else ttl_s
    told = told or {}
    silent = sorted((last_seen.get(m, now), m) for m in up
                    if now - last_seen.get(m, now) > max(floor, told.get(m, floor)))
    return judge_silent(len(up), silent, now, cfg, last_mass_down, len(last_seen))


SENT_FLOOR_RISE = 0.001
"""How fast a machine's lowest recent ``receive - sent`` may rise (s per s): its clock may run slower than ours
(monotonic clocks of two hosts drift; 1,000 ppm is ten times what NTP-less quartz does)."""
SENT_RESET_S = 10.0
"""A ``receive - sent`` this far above the machine's floor is a new clock (the host rebooted, a new agent on
another host under the same name), not a wait: the floor starts over from it and nothing is credited."""


def queued_for(sample: float, floor: tuple[float, float] | None, now: float) -> tuple[float, tuple[float, float]]:
    """How long a heartbeat waited past the quickest one from its machine lately, and the new floor (pure).

    ``sample``: the time it was read here less the agent's send time (two clocks: a constant offset plus the
    wait); ``floor``: ``(the lowest recent sample, when)``, allowed to rise by SENT_FLOOR_RISE per second since
    then, or None for the machine's first heartbeat under this leader (nothing credited)."""
    if floor is None:
        return 0.0, (sample, now)
    low, at = floor
    low = min(sample, low + SENT_FLOOR_RISE * max(0.0, now - at))
    waited = sample - low
    if waited > SENT_RESET_S:
        return 0.0, (sample, now)
    return waited, (low, now)


def heartbeat_credit(waited: float, held: float, cap: float) -> float:
    """Seconds a heartbeat is counted earlier than it was read (pure): the wait less the part of it the leader
    was held (``held``, already left out of every machine's age), between 0 and ``cap``."""
    return max(0.0, min(waited - held, cap))


def _table_index(s: Any) -> int:
    return int(s.table_index["machines"])


def _machines_view(s: Any) -> tuple[int, list[str], list[str]]:
    """The machines table's index, every machine, the up ones: one read, so the three agree."""
    return (s.table_index["machines"], list(s.machines),
            [m for m, v in s.machines.items() if v.status == "up"])


def credit(silence_ms: Mapping[str, int], up: set[str], now: float, ttl_s: float,
           floor_s: float) -> dict[str, tuple[float, float]]:
    """A new leader's start for the up machines the last leader committed as silent (pure): machine -> (last
    seen, TTL to judge by) on the monitor's clock at ``now``. Declared down once silent ``ttl_s`` counting the
    committed silence, but not sooner than ``floor_s`` from now (time to find this leader; never later than a
    fresh re-arm, ``ttl_s`` + grace, since the floor, grace + one interval, is not more than that)."""
    out = {}
    for m, ms in silence_ms.items():
        if m not in up or ms <= 0:
            continue
        silent = ms / 1000
        out[m] = (now - silent, silent + max(ttl_s - silent, floor_s))
    return out


def silence_due(listed: Mapping[str, float], committed: set[str], since_commit: float, every_s: float) -> bool:
    """Whether to commit the silent list ``listed`` (pure): at most every ``every_s``, and only when there is
    something to say (machines silent now, or a list committed before that must be cleared)."""
    return since_commit >= every_s and bool(listed or committed)


class FailoverMonitor:
    """Heartbeat ages on ``clock``'s monotonic seconds; ``judge`` every ``min(0.2, ttl / 5)`` seconds.

    ``interval_s``/``ttl_s`` are what a heartbeat answered now tells (they follow the up machines' count when
    the table changes); ``told`` is the TTL each machine was told with its last heartbeat."""

    def __init__(self, replica: Any, epoch: int, cfg: FailoverConfig, clock: Clock = SYSTEM) -> None:
        self.replica = replica
        self.epoch = epoch
        self.cfg = cfg
        self.clock = clock
        now = clock.monotonic()
        index, machines, up = replica.read(_machines_view)
        # re-arm: every machine gets a fresh TTL from the moment this leader starts, the longest one the last
        # leader could have told (the interval for every machine in the table, up or not), plus the time an
        # agent needs to find this leader (leader_grace_s)
        widest = told_interval(len(machines), cfg)
        self.rearm_ttl_s = ttl_for(widest, cfg) + cfg.leader_grace_s
        self.last_seen: dict[str, float] = {m: now for m in machines}
        self.told: dict[str, float] = dict.fromkeys(machines, self.rearm_ttl_s)
        self.interval_s = told_interval(len(up), cfg)
        self.ttl_s = ttl_for(self.interval_s, cfg)
        # what the last leader committed as silent: those TTLs start that far along
        silence = replica.read(lambda s: dict(s.silence))
        self.credited = credit(silence, set(up), now, ttl_for(widest, cfg), cfg.leader_grace_s + widest)
        for m, (seen, ttl) in self.credited.items():
            self.last_seen[m], self.told[m] = seen, ttl
        if self.credited:
            log.info("%d machines were silent under the last leader (up to %.1fs): their TTLs go on from there",
                     len(self.credited), max(now - seen for seen, _ in self.credited.values()))
        # the up machines, least recently heard first (values unused); rebuilt from the table on change
        self._up: OrderedDict[str, None] = OrderedDict.fromkeys(sorted(up, key=lambda m: (self.last_seen[m], m)))
        self._silence_sent: set[str] = set(silence)    # the machines last committed as silent
        self._silence_sent_at = now
        self._silence_task: asyncio.Task[None] | None = None
        self._index: int = index
        self._n_machines = len(machines)
        self.last_mass_down: float | None = None
        self.held_s = 0.0                 # time the leader was held, not counted (was_held)
        self._held_log: list[tuple[float, float]] = []   # (monotonic wake-up, held_s after it), the recent ones
        self._floor: dict[str, tuple[float, float]] = {}    # machine -> (lowest recent receive - sent, when)
        self.credited_heartbeats = 0
        self.credit_max_given = 0.0
        self._declaring: dict[str, asyncio.Task[None]] = {}   # machine -> its MachineDown proposal in flight
        self._slots = asyncio.Semaphore(max(1, cfg.max_in_flight))   # MachineDown proposals awaited at once
        self.ticks = 0
        self.tick_gap_max_s = 0.0         # the longest time between two ticks' starts (the period + the loop's lag)
        self._last_tick_at: float | None = None
        self.late_max_s = 0.0             # the most a machine was silent past its TTL when proposed down
        self.guard_active = False
        self.silent: list[str] = []

    def observed(self) -> float:
        """The monitor's clock: monotonic time less the time the leader was held (``held_s``, FailoverConfig's
        held_free_s). Heartbeat ages and TTLs are counted on it."""
        return self.clock.monotonic() - self.held_s

    def was_held(self, late_s: float) -> None:
        """The monitor woke ``late_s`` after it asked: past held_free_s, that time is not counted against anyone."""
        over = late_s - self.cfg.held_free_s
        if over > 0:
            self.held_s += over
            log_ = self._held_log
            log_.append((self.clock.monotonic(), self.held_s))
            if len(log_) > 64:
                del log_[:32]
            log.info("failover monitor woke %.1fs late: the leader was held; %.1fs not counted against any "
                     "machine's TTL (%.1fs so far)", late_s, over, self.held_s)

    def credit_cap(self) -> float:
        """The most a heartbeat is counted earlier than it was read: credit_max_s, at most credit_max_ttl of the
        TTL told now. Also how far past the first young machine ``_silent`` looks (a credited heartbeat's
        machine moves to the end of ``_up`` seen up to this much earlier than the ones before it)."""
        return max(0.0, min(self.cfg.credit_max_s, self.cfg.credit_max_ttl * self.ttl_s))

    def _held_since(self, t: float) -> float:
        """The time the leader was held (counted in held_s) at wake-ups after monotonic ``t``; all of held_s when
        ``t`` is older than every wake-up kept (the most it can be)."""
        for at, total in reversed(self._held_log):
            if at <= t:
                return self.held_s - total
        return self.held_s

    def heartbeat(self, machine: str, sent_ms: int | None = None) -> tuple[float, float]:
        """Note ``machine``'s heartbeat; the interval and TTL its answer tells (the TTL it is judged by).
        ``sent_ms``: the agent's monotonic clock when it sent it (agents since session 16): the time it waited
        here past the quickest one from that machine lately is credited back (``queued_for``,
        ``heartbeat_credit``), so a machine frozen right after sending is judged from its send."""
        mono = self.clock.monotonic()
        seen = mono - self.held_s
        cap = self.credit_cap()
        if sent_ms is not None and cap > 0:
            waited, self._floor[machine] = queued_for(mono - sent_ms / 1000, self._floor.get(machine), mono)
            if waited > 0:
                given = heartbeat_credit(waited, self._held_since(mono - waited), cap)
                if given > 0:
                    seen -= given
                    self.credited_heartbeats += 1
                    self.credit_max_given = max(self.credit_max_given, given)
        last = self.last_seen.get(machine)
        self.last_seen[machine] = seen if last is None or seen > last else last
        self.told[machine] = self.ttl_s
        if machine in self._up:
            self._up.move_to_end(machine)
        return self.interval_s, self.ttl_s

    async def run(self) -> None:
        period = min(0.2, self.cfg.ttl_s / 5)
        try:
            while True:
                asked = self.clock.monotonic() + period
                await self.clock.sleep(period)
                self.was_held(self.clock.monotonic() - asked)
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("failover tick failed: %s: %s", type(exc).__name__, exc)
        finally:   # the leadership ended: nothing more is proposed under it
            if self._silence_task is not None:
                self._silence_task.cancel()
            for task in list(self._declaring.values()):
                task.cancel()

    def _refresh(self, now: float) -> None:
        """Follow the machines table if its index moved: O(machines), but only after a change."""
        if self.replica.read(_table_index) == self._index:
            return
        index, machines, up = self.replica.read(_machines_view)
        for m in machines:
            self.last_seen.setdefault(m, now)
        now_up = set(up)
        order = self._up
        for m in [m for m in order if m not in now_up]:
            del order[m]
        added = [m for m in up if m not in order]
        # appending keeps the order only if none was heard before the newest one already in it
        tail = self.last_seen[next(reversed(order))] if order else float("-inf")
        if all(self.last_seen[m] >= tail for m in added):
            order.update((m, None) for m in sorted(added, key=lambda m: (self.last_seen[m], m)))
        else:
            order = OrderedDict.fromkeys(sorted(now_up, key=lambda m: (self.last_seen[m], m)))
        self._n_machines = len(machines)
        self._up, self._index = order, index   # assigned last: a tick killed above re-reads next time
        interval = told_interval(len(order), self.cfg, self.interval_s)
        if interval != self.interval_s:
            log.info("heartbeat interval %gs -> %gs (ttl %gs): %d up machines, budget %d/s", self.interval_s,
                     interval, ttl_for(interval, self.cfg), len(order), self.cfg.max_heartbeats_per_s)
            self.interval_s, self.ttl_s = interval, ttl_for(interval, self.cfg)

    def _silent(self, now: float) -> list[tuple[float, str]]:
        """The up machines silent past their TTL, oldest first. The current TTL is every machine's floor, so
        the candidates are a prefix of ``_up`` (up to the heartbeat credit cap younger than the TTL: a credited
        heartbeat's machine may sit behind younger ones): O(silent + machines heard within the cap), plus, for
        about one old interval after the interval shrank, the machines told a longer TTL than the current one."""
        out = []
        floor, told = self.ttl_s, self.told
        edge = floor - self.credit_cap()   # a credited heartbeat's machine may sit behind younger ones
        for m in self._up:
            seen = self.last_seen[m]
            age = now - seen
            if age <= edge:
                break
            if age > floor and age > told.get(m, floor):
                out.append((seen, m))
        out.sort()          # ties (same heartbeat instant) by name
        return out

    def _listed(self, now: float) -> dict[str, float]:
        """The up machines silent past ``silence_after`` of the TTL, longest first (at most max_silence_listed):
        seconds each. A prefix of ``_up``."""
        after = self.ttl_s * self.cfg.silence_after
        edge = after - self.credit_cap()
        out: dict[str, float] = {}
        for m in self._up:
            age = now - self.last_seen[m]
            if age <= edge or len(out) >= self.cfg.max_silence_listed:
                break
            if age > after:
                out[m] = age
        return out

    def _commit_silence(self, now: float) -> None:
        """Propose MachinesSilent when due (silence_due), beside the ticks: a tick never waits for its commit (under
        load a commit takes seconds, and the next verdict must not wait behind it). One in flight at a time; a
        failure is logged and the list proposed again when next due."""
        if self._silence_task is not None and not self._silence_task.done():
            return
        listed = self._listed(now)
        if not silence_due(listed, self._silence_sent, now - self._silence_sent_at, self.cfg.silence_every_s):
            return
        self._silence_task = asyncio.get_running_loop().create_task(self._propose_silence(listed, now),
                                                                    name="failover silence")

    async def _propose_silence(self, listed: dict[str, float], now: float) -> None:
        try:
            res = await self.replica.propose(c.MachinesSilent(
                epoch=self.epoch, silent={m: int(age * 1000) for m, age in listed.items()}))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("committing the silent machines failed (proposed again when next due): %s", exc)
            self._silence_sent_at = now
            return
        if res.ok:
            self._silence_sent = set(listed)
        else:
            log.info("committing the silent machines refused: %s", res.error)
        self._silence_sent_at = now

    @property
    def declaring(self) -> int:
        """MachineDown proposals started by a tick and not answered yet (waiting for a slot, or proposed)."""
        return len(self._declaring)

    async def tick(self) -> list[asyncio.Task[None]]:
        """One verdict. Its MachineDown proposals (at most ``max_in_flight`` awaited at once, oldest silence first;
        one at a time under the mass-loss guard) run beside the next ticks, as ``_commit_silence``'s does: a tick
        that waited for them waited a commit, 0.1-0.5 s under load at 10,000 machines, before the next verdict
        could see the machines whose TTL ran out meanwhile (session 20: the last three of 100 frozen machines
        were proposed 2.2-2.6 s past their TTL). A machine whose proposal is in flight is not proposed again; a
        failed one is retried by a later tick. Returns the proposals started (tests await them)."""
        mono = self.clock.monotonic()
        if self._last_tick_at is not None:
            self.tick_gap_max_s = max(self.tick_gap_max_s, mono - self._last_tick_at)
        self._last_tick_at = mono
        self.ticks += 1
        now = self.observed()
        self._refresh(now)
        verdict = judge_silent(len(self._up), self._silent(now), now, self.cfg, self.last_mass_down,
                               self._n_machines)
        self.guard_active, self.silent = verdict.guard_active, verdict.silent
        self._commit_silence(now)
        if not verdict.down or (verdict.guard_active and self._declaring):
            return []      # under the guard, one at a time: the one in flight sets last_mass_down when committed
        loop = asyncio.get_running_loop()
        started: list[asyncio.Task[None]] = []
        for m in verdict.down:
            if m in self._declaring:
                continue
            task = loop.create_task(self._declare_in_turn(m, now, verdict.guard_active), name=f"failover: {m} down")
            self._declaring[m] = task
            task.add_done_callback(functools.partial(self._settled, m))
            started.append(task)
        return started

    async def _declare_in_turn(self, m: str, now: float, guard: bool) -> None:
        """``_declare`` once one of the ``max_in_flight`` slots is free (first come, first served: the oldest
        silence first, as the verdict lists them)."""
        async with self._slots:
            await self._declare(m, now, guard)

    def _settled(self, machine: str, task: asyncio.Task[None]) -> None:
        if self._declaring.get(machine) is task:
            del self._declaring[machine]

    async def _declare(self, m: str, now: float, guard: bool) -> None:
        """Propose one MachineDown; a refusal or failure is logged and retried by a later tick (the machine
        stays up and silent)."""
        silent_for = now - self.last_seen.get(m, now)
        ttl = max(self.ttl_s, self.told.get(m, self.ttl_s))
        self.late_max_s = max(self.late_max_s, silent_for - ttl)
        try:
            res = await self.replica.propose(c.MachineDown(
                machine=m, epoch=self.epoch,
                reason=f"no heartbeat for {silent_for:.1f}s (ttl {ttl:g}s)"
                + ("; mass-loss guard rate-limits re-placement" if guard else "")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("declaring machine %s down failed (retried next tick): %s", m, exc)
            return
        if res.ok:
            log.warning("machine %s declared down: %d placements lost", m, len(res.value.get("lost", [])))
            if guard:
                self.last_mass_down = now
        else:
            log.info("declaring machine %s down refused: %s", m, res.error)

    def ages(self) -> dict[str, float]:
        """Seconds since each machine's last heartbeat, every machine (for the per-machine metric), on the
        monitor's clock (``observed``: the time the leader was held is not counted)."""
        now = self.observed()
        return {m: round(now - t, 2) for m, t in sorted(self.last_seen.items())}

    def status(self) -> dict[str, Any]:
        """The monitor for GET /v1/status: the STATUS_OLDEST machines heard from longest ago, not every machine
        (at 3,000 machines every status answer carried a 3,000-entry map; the metric has them all)."""
        now = self.observed()
        # a copy first (C calls only, no Python code between: a /metrics scrape reads this on a worker thread
        # while heartbeats add machines), as (time, machine) tuples compared in C without a key function
        # (10,000 machines: 1.17 -> 0.70 ms a call)
        oldest = heapq.nsmallest(STATUS_OLDEST, list(zip(self.last_seen.values(), self.last_seen.keys())))
        return {"ttl_s": self.ttl_s, "interval_s": self.interval_s,
                "max_heartbeats_per_s": self.cfg.max_heartbeats_per_s, "guard_active": self.guard_active, "silent": self.silent,
                "machines_heard": len(self.last_seen), "held_s": round(self.held_s, 1),
                "credited": len(self.credited), "silence_committed": len(self._silence_sent),
                "heartbeat_credit": {"cap_s": round(self.credit_cap(), 2), "heartbeats": self.credited_heartbeats,
                                     "max_s": round(self.credit_max_given, 3)},
                "ticks": self.ticks, "tick_gap_max_s": round(self.tick_gap_max_s, 2),
                "declaring": len(self._declaring), "declared_late_max_s": round(self.late_max_s, 2),
                "heartbeat_age_s": {m: round(now - t, 2) for t, m in sorted(oldest, key=lambda tm: tm[1])}}
