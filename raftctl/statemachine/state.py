"""The replicated state: tables, snapshot and restore.

The tables ``images``, ``machines``, ``deployments``, ``jobs`` and ``placements`` hold immutable records
(raftctl/statemachine/records.py); apply replaces a record to change it. ``tokens``, ``members``, ``events``,
``dedup`` and ``discovery`` hold plain dicts (shapes in docs/state.md). Derived indexes (placements by machine and
by job) are rebuilt on restore and never written to a snapshot. A snapshot is the canonical CBOR of every table's
wire form (records.to_wire, at the one boundary in :meth:`State.to_obj`) plus a schema version, so replicas that
applied the same log hold byte-identical snapshots; restore converts back through records.from_wire.
"""
from __future__ import annotations

import hashlib
from typing import Any, Final

import cbor2
import msgspec

from raftctl.statemachine.records import (Deployment, Image, Job, Machine, Placement, RecordError, table_from_wire,
                                          table_to_wire)
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
        # The rollout controller skips a job whose record, deployment, placements and machines have not moved.
        self.job_index: dict[str, int] = {}
        self.job_floor = 0

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
            "entries": self.entries, "chain": self.chain,
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
        self.machine_index = {}
        self.machine_floor = self.index
        self.changed_machines = set()
        self.changed_all = True
        self.job_index = {}
        self.job_floor = self.index
        self.subnets = {k for m in self.machines.values()
                        if isinstance(m.subnet, str) and (k := subnet_key(m.subnet)) is not None}
        for pid, p in self.placements.items():
            self.by_machine.setdefault(p.machine, set()).add(pid)
            self.by_job.setdefault(p.job, set()).add(pid)

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

    def machine_placements(self, machine: str) -> list[Placement]:
        return [self.placements[p] for p in sorted(self.by_machine.get(machine, ()))]

    def machine_live(self, machine: str) -> bool:
        """Whether a placement on ``machine`` still holds its resources (what Machine.state asks)."""
        return any(self.placements[p].holds_resources() for p in self.by_machine.get(machine, ()))

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


def machine_usage(state: State, machine: str) -> tuple[dict[str, int], set[int]]:
    """Resources and host ports held on a machine by its live placements."""
    used = {"cpu": 0, "memory": 0, "pids": 0}
    ports: set[int] = set()
    placements = state.placements
    for pid in state.by_machine.get(machine, ()):
        p = placements[pid]
        if not p.holds_resources():
            continue
        res = p.resources
        for k in used:
            used[k] += res.get(k, 0)
        ports.update(p.ports.values())
    return used, ports
