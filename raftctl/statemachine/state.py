"""The replicated state: tables, snapshot and restore.

The tables ``images``, ``machines``, ``deployments``, ``jobs`` and ``placements`` hold immutable records
(raftctl/statemachine/records.py); apply replaces a record to change it. ``tokens``, ``members``, ``events``,
``dedup`` and ``discovery`` hold plain dicts (shapes in docs/state.md). Derived indexes (placements by machine and
by job, each machine's usage) are rebuilt on restore and never written to a snapshot. A snapshot is the canonical CBOR of every table's
wire form (records.to_wire, at the one boundary in :meth:`State.to_obj`) plus a schema version, so replicas that
applied the same log hold byte-identical snapshots; restore converts back through records.from_wire.
"""
from __future__ import annotations

import hashlib
from typing import Any, Final, Iterable

import cbor2
import msgspec

from raftctl.statemachine.records import (RELEASED_STATES, Deployment, Image, Job, Machine, Placement, RecordError,
                                          table_from_wire, table_to_wire)
from raftctl.statemachine.subnets import subnet_key

# 2: the tables hold records, written with every field of their record (a job spec stored by schema 1 may lack one
# added since, e.g. ``egress``); 1 restores through the same records, a missing field taking its record default
SNAPSHOT_SCHEMA = 2
READABLE_SCHEMAS: Final = (1, 2)     # snapshot schemas restore accepts (older ones are migrated)
RECORD_TABLES: Final = {"images": Image, "machines": Machine, "deployments": Deployment, "jobs": Job,
                        "placements": Placement}
TABLES = ("machines", "jobs", "placements", "deployments", "discovery", "images", "tokens",
          "members", "events", "dedup")
MAX_EVENTS = 2000
MAX_DEDUP = 10000


class MachineUsage(msgspec.Struct, frozen=True, gc=False):
    """What the placements on one machine that hold resources (``Placement.holds_resources``) use: the sums of
    their resources, the host ports they hold, how many they are, and per (job, version) how many of them are
    wanted running (``runs``: ((job, version), count) pairs, sorted, no zero count). What a scheduling pass's machine
    views and apply's fit check start from.

    Immutable: :meth:`State.put_placement` and :meth:`State.drop_placement` replace a machine's entry, so a
    shallow ``dict(state.usage)`` taken under the apply lock is a consistent snapshot another thread can read
    while apply goes on (raftctl/node/scheduling.py). A machine none of whose placements holds resources has
    no entry."""

    cpu: int = 0
    memory: int = 0
    pids: int = 0
    ports: frozenset[int] = frozenset()
    runs: tuple[tuple[tuple[str, int], int], ...] = ()
    held: int = 0


NO_USAGE: Final = MachineUsage()


JOB_COUNTS = ("running", "healthy", "pending", "lost")   # State.counts_of_job, in State.job_counts' order


def _job_slots(p: Placement) -> tuple[int, ...]:
    """The JOB_COUNTS a placement adds to: meant to run and running (healthy too), pending or starting, lost."""
    if p.desired != "run":
        return ()
    if p.state == "running":
        return (0, 1) if p.health == "healthy" else (0,)
    if p.state in ("pending", "starting"):
        return (2,)
    if p.state == "lost":
        return (3,)
    return ()


class State:
    """All replicated tables plus counters. Mutated only by :mod:`apply`."""

    def __init__(self) -> None:
        self.machines: dict[str, Machine] = {}
        self.jobs: dict[str, Job] = {}
        self.placements: dict[str, Placement] = {}
        self.deployments: dict[str, Deployment] = {}
        self.discovery: dict[str, dict[str, Any]] = {}
        self.images: dict[str, Image] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        # request id -> {ok, index, value, error (the result), op, digest, seq}; dict order = seq order
        self.dedup: dict[str, dict[str, Any]] = {}
        # the up machines the last leader's failover monitor had not heard from for a while: machine -> ms silent
        # as of ``silence_at`` (MachinesSilent; a new leader's TTLs start that far along)
        self.silence: dict[str, int] = {}
        self.silence_at = 0
        self.index = 0                        # bumped by every command that changes something
        self.epoch = 0                        # the term of the leader that last claimed leadership
        self.epoch_node = ""
        self.seq = {"placement": 0, "event": 0, "dedup": 0}
        self.table_index = {t: 0 for t in TABLES}
        self.entries = 0                      # log entries applied (including no-ops)
        self.chain = ""                       # hash chain over applied entries
        # derived, not in snapshots
        self.by_machine: dict[str, set[str]] = {}
        self.by_job: dict[str, set[str]] = {}
        # per job, its placements' ids as a tuple, built when asked (job_groups) and dropped whenever the job's set
        # changes: a scheduler pass over a few jobs reads theirs, not a walk over every placement
        self._groups: dict[str, tuple[str, ...]] = {}
        # per machine, what its placements that hold resources use (MachineUsage, replaced on change); every
        # placement is stored and removed through put_placement / drop_placement, which keep it (and by_machine,
        # by_job) in step
        self.usage: dict[str, MachineUsage] = {}
        # placements by (state, health), kept by put_placement / drop_placement: what /metrics reports, read
        # under the apply lock without a walk over every placement (42-77 ms at 300,000, session 29)
        self.placement_counts: dict[tuple[str, str], int] = {}
        # per job, its placements meant to run by what a job read reports (JOB_COUNTS: running, healthy, pending,
        # lost), kept the same way: GET /v1/jobs/{name} sorted and walked every placement of the job under the
        # apply lock (a job of 500 replicas: its reads 16-18 % of the leader's GIL time in bench/api_scale.py)
        self.job_counts: dict[str, list[int]] = {}
        # bumped whenever an entry of ``usage`` is replaced: a reader that keeps a copy reuses it while unchanged
        self.usage_version = 0
        self.subnets: set[int] = set()        # container subnets held by machines (subnets.subnet_key)
        # Per machine, the state index of the last command that changed what that machine's agent is assigned
        # (a placement on it added, changed or removed, its job's spec of that placement's version gone, or the
        # machine's own record). Derived, never in a snapshot: a restore cannot know the true values, so every
        # machine reads as changed at the restored index (machine_floor; at most one spurious wake, never a
        # missed one). changed_machines collects the machines apply touched since the replica last took them
        # (it wakes only their watches); changed_all says "every machine" (a restore).
        self.machine_index: dict[str, int] = {}
        self.machine_floor = 0
        self.changed_machines: set[str] = set()
        self.changed_all = False
        # Per job, the index of the last command that added, changed or removed one of its placements (derived,
        # never in a snapshot: after a restore every job reads as changed at the restored index, job_floor).
        # The rollout controller skips a job whose record, deployment, placements and drains have not moved.
        self.job_index: dict[str, int] = {}
        self.job_floor = 0
        # The index of the last command that set or cleared a machine's drain (derived, never in a snapshot: the
        # restored index after a restore). A rollout decision reads the machines only for their drains, so a
        # machine registered, lost or back does not make every job be decided again: at 10,000 machines and
        # 100,000 placements that was 76-88 ms of the leader's event loop per MachineDown (issue 15).
        self.drain_index = 0

    # -- snapshots -------------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        """The snapshot's map: every table in its wire form (records.to_wire of the record tables)."""
        return {**self.to_obj_shallow(), **{name: table_to_wire(getattr(self, name)) for name in RECORD_TABLES}}

    def snapshot(self) -> bytes:
        """The canonical CBOR of :meth:`to_obj`, encoding each record's wire form as the encoder reaches it (the
        same bytes, without first building every table's dicts: they are short-lived, which spares the cyclic GC
        most of its passes over a big state)."""
        obj = {**self.to_obj_shallow(), **{name: getattr(self, name) for name in RECORD_TABLES}}
        return cbor2.dumps(obj, canonical=True, default=_encode_record)

    def to_obj_shallow(self) -> dict[str, Any]:
        """:meth:`to_obj` without the record tables."""
        return {
            "schema": SNAPSHOT_SCHEMA, "discovery": self.discovery, "tokens": self.tokens, "members": self.members,
            "events": self.events, "dedup": self.dedup, "index": self.index, "epoch": self.epoch,
            "epoch_node": self.epoch_node, "seq": self.seq, "table_index": self.table_index,
            "entries": self.entries, "chain": self.chain, "silence": self.silence, "silence_at": self.silence_at,
        }

    def digest(self) -> str:
        return hashlib.sha256(self.snapshot()).hexdigest()

    @classmethod
    def restore(cls, data: bytes) -> "State":
        obj = cbor2.loads(data)
        if not isinstance(obj, dict) or obj.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"unknown snapshot schema {obj.get('schema') if isinstance(obj, dict) else None!r}")
        s = cls()
        for name in ("discovery", "tokens", "members", "events", "dedup", "index", "epoch", "epoch_node",
                     "seq", "table_index", "entries", "chain"):
            setattr(s, name, obj[name])
        s.silence, s.silence_at = obj.get("silence", {}), obj.get("silence_at", 0)   # absent before session 11
        for name in RECORD_TABLES:
            setattr(s, name, obj[name])
        s.dedup = _ordered_dedup(s.dedup, s.seq)
        s.rebuild_derived()
        return s

    def _adopt_wire_tables(self) -> None:
        """Convert a record table that holds wire dicts (as restore sets them, or a caller that decoded a snapshot's
        tables itself and attached them: raftctl/node/raft/snapshot.py) into its records: the one boundary, where
        a field an older schema lacked gets its record default. ValueError names a row that is not a record."""
        for name, kind in RECORD_TABLES.items():
            table = getattr(self, name)
            if table and not isinstance(next(iter(table.values())), kind):
                try:
                    setattr(self, name, table_from_wire(kind, table))
                except RecordError as exc:
                    raise ValueError(f"snapshot table {name}: a row is not a valid record: {exc}") from None

    def rebuild_derived(self) -> None:
        self._adopt_wire_tables()
        self.by_machine = {}
        self.by_job = {}
        self._groups = {}
        self.machine_index = {}
        self.machine_floor = self.index
        self.changed_machines = set()
        self.changed_all = True
        self.job_index = {}
        self.job_floor = self.index
        self.drain_index = self.index
        self.subnets = {k for m in self.machines.values()
                        if isinstance(m.subnet, str) and (k := subnet_key(m.subnet)) is not None}
        self.placement_counts = {}
        self.job_counts = {}
        for pid, p in self.placements.items():
            self.by_machine.setdefault(p.machine, set()).add(pid)
            self.by_job.setdefault(p.job, set()).add(pid)
            self._count(p, 1)
            self._count_job(p.job, _job_slots(p), 1)
        self.usage = usage_of(self.placements.values())
        self.usage_version += 1

    # -- the one way to store or remove a placement ---------------------------
    def put_placement(self, p: Placement) -> None:
        """Store placement ``p``, new or replacing the one with its id, keeping the derived indexes in step
        (placements by machine and by job, each machine's usage)."""
        old = self.placements.get(p.id)
        self.placements[p.id] = p
        if old is None or old.machine != p.machine:
            if old is not None:
                self.by_machine.get(old.machine, set()).discard(p.id)
            self.by_machine.setdefault(p.machine, set()).add(p.id)
        if old is None or old.job != p.job:
            if old is not None:
                self.by_job.get(old.job, set()).discard(p.id)
                self._groups.pop(old.job, None)
            self.by_job.setdefault(p.job, set()).add(p.id)
            self._groups.pop(p.job, None)
        self._recount(old, p)
        if old is None or old.state != p.state or old.health != p.health:
            if old is not None:
                self._count(old, -1)
            self._count(p, 1)
        slots, was = _job_slots(p), (() if old is None else _job_slots(old))
        if old is None or old.job != p.job or was != slots:   # a report within a slot changes no count
            if old is not None:
                self._count_job(old.job, was, -1)
            self._count_job(p.job, slots, 1)

    def drop_placement(self, pid: str) -> Placement:
        """Remove placement ``pid`` (it must exist) and its share of the derived indexes; the removed record."""
        p = self.placements.pop(pid)
        self.by_machine.get(p.machine, set()).discard(pid)
        self.by_job.get(p.job, set()).discard(pid)
        self._groups.pop(p.job, None)
        self._recount(p, None)
        self._count(p, -1)
        self._count_job(p.job, _job_slots(p), -1)
        return p

    def _count(self, p: Placement, by: int) -> None:
        key = (p.state, p.health)
        n = self.placement_counts.get(key, 0) + by
        if n:
            self.placement_counts[key] = n
        else:
            del self.placement_counts[key]

    def _count_job(self, job: str, slots: tuple[int, ...], by: int) -> None:
        if not slots:
            return
        counts = self.job_counts.get(job)
        if counts is None:
            counts = self.job_counts[job] = [0, 0, 0, 0]
        for i in slots:
            counts[i] += by
        if by < 0 and not any(counts):
            del self.job_counts[job]

    def counts_of_job(self, job: str) -> dict[str, int]:
        """What a job read reports of ``job``'s placements meant to run (kept at apply time: _count_job)."""
        return dict(zip(JOB_COUNTS, self.job_counts.get(job) or (0, 0, 0, 0)))

    def _recount(self, old: Placement | None, new: Placement | None) -> None:
        """Move ``old``'s share of its machine's usage out and ``new``'s in (either may be None or hold nothing)."""
        old = old if old is not None and old.holds_resources() else None
        new = new if new is not None and new.holds_resources() else None
        if old is None and new is None or old is not None and new is not None and _share(old) == _share(new):
            return   # the common change (a health or state report): the same share, the same entry
        if old is not None:
            self._set_usage(old.machine, _moved(self.usage.get(old.machine, NO_USAGE), old, -1))
        if new is not None:
            self._set_usage(new.machine, _moved(self.usage.get(new.machine, NO_USAGE), new, 1))

    def _set_usage(self, machine: str, u: MachineUsage) -> None:
        self.usage_version += 1
        if u.held:
            self.usage[machine] = u
        else:
            self.usage.pop(machine, None)

    # -- the per-machine change index ---------------------------------------
    def touch_machine(self, machine: str) -> None:
        """Record that ``machine``'s assignments changed at the current index (call after the command's bump)."""
        self.machine_index[machine] = self.index
        self.changed_machines.add(machine)

    def machine_change_index(self, machine: str) -> int:
        """The index of the last change to ``machine``'s assignments (the restored index at least)."""
        return max(self.machine_index.get(machine, 0), self.machine_floor)

    def touch_job(self, job: str) -> None:
        """Record that one of ``job``'s placements was added, changed or removed at the current index."""
        self.job_index[job] = self.index

    def job_change_index(self, job: str) -> int:
        """The index of the last change to ``job``'s placements (the restored index at least)."""
        return max(self.job_index.get(job, 0), self.job_floor)

    # -- small read helpers (pure) ----------------------------------------
    def job_placements(self, job: str) -> list[Placement]:
        return [self.placements[p] for p in sorted(self.by_job.get(job, ()))]

    def job_groups(self) -> dict[str, tuple[str, ...]]:
        """Each job that has placements: their ids in a tuple, in no particular order (the set's, which differs
        between processes: a reader must not depend on it). The dict is new and the tuples immutable, so a reader
        may keep them beside a copy of ``placements`` taken in the same read. Only the tuples of jobs whose set
        changed since the last call are built again (not sorted: the reader is the event loop, under the apply
        lock; sorting all 100,000 ids of 10,000 machines took 25 ms)."""
        out: dict[str, tuple[str, ...]] = {}
        groups = self._groups
        for job, pids in self.by_job.items():
            if pids:
                g = groups.get(job)
                if g is None:
                    g = groups[job] = tuple(pids)
                out[job] = g
        return out

    def machine_placements(self, machine: str) -> list[Placement]:
        return [self.placements[p] for p in sorted(self.by_machine.get(machine, ()))]

    def machine_live(self, machine: str) -> bool:
        """Whether a placement on ``machine`` still holds its resources (what Machine.state asks)."""
        return machine in self.usage

    def machine_state(self, m: Machine) -> str:
        """The operator-facing state of machine ``m``: active, draining, drained, down or maintenance."""
        return m.state(m.drain is not None and m.status != "down" and self.machine_live(m.id))


def _encode_record(encoder: Any, value: Any) -> None:
    """cbor2's hook for what it cannot encode itself: a record, as its wire form (the same map records.to_wire
    gives: no UNSET field; a tuple encodes as the list it is on the wire)."""
    if not isinstance(value, msgspec.Struct):
        raise TypeError(f"cannot encode {type(value).__name__} in a snapshot")
    encoder.encode(msgspec.to_builtins(value))


def _ordered_dedup(dedup: dict[str, dict[str, Any]], seq: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The dedup table in eviction order (lowest ``seq`` first), whatever order the snapshot's
    canonical CBOR put its keys in; ``seq["dedup"]`` is at least the highest ``seq`` held.

    Migration from snapshots written before entries carried ``seq``: those entries get seqs in key
    order, below every newer entry, so every replica restoring the same snapshot evicts alike; they
    have no ``op``/``digest`` and still deduplicate by id alone."""
    old = sorted(k for k, e in dedup.items() if "seq" not in e)
    if old:
        first = min((e["seq"] for e in dedup.values() if "seq" in e), default=len(old) + 1)
        for i, k in enumerate(old):
            dedup[k] = {**dedup[k], "seq": first - len(old) + i}
    seq["dedup"] = max([seq.get("dedup", 0)] + [e["seq"] for e in dedup.values()])
    return dict(sorted(dedup.items(), key=lambda kv: (kv[1]["seq"], kv[0])))


def _share(p: Placement) -> tuple[str, str, int, bool, dict[str, int], dict[str, int]]:
    """What a placement that holds resources adds to its machine's usage (and the key it adds under)."""
    return (p.machine, p.job, p.version, p.desired == "run", p.resources, p.ports)


def _moved(u: MachineUsage, p: Placement, sign: int) -> MachineUsage:
    """``u`` with placement ``p`` (which holds resources) added (``sign`` 1) or taken out (-1)."""
    res = p.resources
    ports = u.ports
    if p.ports:
        ports = ports.union(p.ports.values()) if sign > 0 else ports.difference(p.ports.values())
    runs = u.runs
    if p.desired == "run":
        counts = dict(runs)
        key = (p.job, p.version)
        n = counts.get(key, 0) + sign
        if n:
            counts[key] = n
        else:
            counts.pop(key, None)
        runs = tuple(sorted(counts.items()))
    return MachineUsage(cpu=u.cpu + sign * res.get("cpu", 0), memory=u.memory + sign * res.get("memory", 0),
                        pids=u.pids + sign * res.get("pids", 0), ports=ports, runs=runs, held=u.held + sign)


def usage_of(placements: Iterable[Placement]) -> dict[str, MachineUsage]:
    """Each machine's usage computed from scratch from ``placements``: what :meth:`State.rebuild_derived` builds
    the index with, and what a scheduling pass given no index computes (raftctl/scheduler/machines.py)."""
    acc: dict[str, tuple[list[int], set[int], dict[tuple[str, int], int]]] = {}
    for p in placements:
        if p.state in RELEASED_STATES:   # not Placement.holds_resources: the same test, without two calls each
            continue
        a = acc.get(p.machine)
        if a is None:
            a = acc[p.machine] = ([0, 0, 0, 0], set(), {})
        sums, ports, runs = a
        res = p.resources
        sums[0] += res.get("cpu", 0)
        sums[1] += res.get("memory", 0)
        sums[2] += res.get("pids", 0)
        sums[3] += 1
        if p.ports:
            ports.update(p.ports.values())
        if p.desired == "run":
            key = (p.job, p.version)
            runs[key] = runs.get(key, 0) + 1
    return {mid: MachineUsage(cpu=sums[0], memory=sums[1], pids=sums[2], ports=frozenset(ports),
                              runs=tuple(sorted(runs.items())), held=sums[3])
            for mid, (sums, ports, runs) in acc.items()}
