"""Restoring a snapshot received from the leader beside the tick thread (issue 13; snapshot.py).

A big state took seconds to restore on pysyncobj's tick thread (100,000 placements, a 26.7 MB snapshot:
2.0-2.8 s with no tick), longer than an election timeout. The follower now restores it on a worker thread
while its tick goes on, and swaps it in on the tick thread. These tests drive a RaftNode by hand (no tick
thread; a transport that records what it sends) and gate the restore, so what they check does not depend
on timing: the tick is not held by the restore, nothing is appended or applied to the state being replaced,
and a power cut before the swap leaves the old snapshot and log.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import cbor2
import pysyncobj.syncobj as psyncobj
import pytest
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from raftctl.node import raft
from raftctl.node.raft import snapshot as snapshot_mod
from raftctl.node.raft.disk import OsDisk
from raftctl.node.raft.snapshot import restore_state
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.state import State
from tests.sim.disk import SimDisk

LEADER = TCPNode("127.0.0.1:7002")
NOOP = psyncobj._COMMAND_TYPE.NO_OP


def noop(i: int, term: int = 1) -> tuple[bytes, int, int]:
    return psyncobj._bchr(NOOP) + b"%d/%d" % (i, term), i, term


# -- restore_state: State.restore, callable beside the tick thread ------------------------------------
def a_state(n_machines: int = 3, replicas: int = 4) -> State:
    """A state built with the state machine's own commands: machines, jobs, placements, dedup, events."""
    s = State()
    assert apply(s, c.ClaimEpoch(term=3, node="n1", id="claim")).ok
    for i in range(n_machines):
        assert apply(s, c.RegisterMachine(machine=f"m{i}", address=f"10.0.0.{i + 1}", runtime="sim",
                                          resources={"cpu": 8000, "memory": 8 << 30, "pids": 1000},
                                          ports=[20000, 21000], fault_domain={"zone": f"z{i % 2}"},
                                          id=f"reg-{i}")).ok
    spec = {"name": "web", "image": "web:1", "command": ["serve"], "replicas": replicas,
            "resources": {"cpu": "100m", "memory": "64Mi"}}
    assert apply(s, c.PutJob(spec=validate_spec(spec), id="put-web")).ok
    place = [{"job": "web", "version": 1, "replica": r, "machine": f"m{r % n_machines}",
              "resources": {"cpu": 100, "memory": 64 << 20}, "ports": {}} for r in range(replicas)]
    assert apply(s, c.Plan(epoch=3, index=s.index, place=place, id="plan-1")).ok
    return s


def test_restore_state_gives_what_state_restore_gives() -> None:
    original = a_state()
    data = original.snapshot()
    want, got = State.restore(data), restore_state(data)
    assert got.snapshot() == want.snapshot() == data
    assert list(got.dedup) == list(want.dedup)                       # eviction order kept
    assert (got.by_machine, got.by_job) == (want.by_machine, want.by_job) != ({}, {})
    assert got.placement_counts == want.placement_counts == {("pending", "unknown"): 4}
    assert len(got.placements) == 4 and got.events and got.dedup


@pytest.mark.parametrize("bad", [
    cbor2.dumps([1, 2]),                                            # not a map
    cbor2.dumps({**State().to_obj(), "schema": 99}),                # a schema State.restore refuses
    cbor2.dumps({**State().to_obj(), "placements": [1]}),          # a table of the wrong kind
    cbor2.dumps({k: v for k, v in State().to_obj().items() if k != "machines"}),   # a table missing
])
def test_restore_state_refuses_what_would_not_load(bad: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        restore_state(bad)


# -- a follower restoring the leader's snapshot -------------------------------------------------------
class Recorder(Transport):
    def __init__(self) -> None:
        super().__init__(None, None, [])
        self.sent: list[dict] = []

    def send(self, node: Any, message: dict) -> bool:
        self.sent.append(message)
        return True


class Follower:
    """A RaftNode (repair on) with no tick thread, fed messages by the test."""

    def __init__(self, path: str, disk: Any = None) -> None:
        self.transport = Recorder()
        self.node = raft.RaftNode("127.0.0.1:7001", ["127.0.0.1:7002", "127.0.0.1:7003"], path, None,
                                  on_applied=lambda: None, transport=self.transport,
                                  conf_overrides={"autoTick": False}, disk=disk)

    def deliver(self, message: dict, ticks: int = 1) -> list[dict]:
        before = len(self.transport.sent)
        self.transport._onMessageReceived(LEADER, message)
        for _ in range(ticks):
            self.node.doTick(0.0)
        return [m for m in self.transport.sent[before:] if m.get("type") == "next_node_idx"]

    def append(self, prev: int, entries: list, commit: int) -> list[dict]:
        return self.deliver({"type": "append_entries", "term": 1, "commit_index": commit, "prevLogIdx": prev,
                             "prevLogTerm": 1 if prev > 1 else 0, "entries": entries, "seq": prev})

    @property
    def log(self) -> list[tuple]:
        j = self.node._SyncObj__raftLog
        return [tuple(j[i]) for i in range(len(j))]

    def with_log(self, n: int) -> None:
        """Log 1..n, all committed and applied."""
        self.append(1, [noop(i) for i in range(2, n + 1)], commit=n)
        assert (self.log[-1][1], self.node.raftCommitIndex, self.node.raftLastApplied) == (n, n, n)


def snapshot_blob(upto: int, state: State) -> bytes:
    return raft._snapshot_bytes(noop(upto), noop(upto - 1), ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"],
                                state.snapshot())


def chunks(blob: bytes, upto: int, size: int = 256) -> Iterator[dict]:
    for start in range(0, len(blob) + 1, size):
        end = start + size
        yield {"type": "append_entries", "term": 1, "commit_index": upto, "snapshot_index": upto, "snapshot_term": 1,
               "snapshot_offset": start, "snapshot_size": len(blob),
               "serialized": (blob[start:end], start == 0, end >= len(blob))}


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """State.restore waits for the gate (at most 3 s): a restore as slow as the test wants."""
    opened = threading.Event()
    entered = threading.Event()
    real = State.restore.__func__  # type: ignore[attr-defined]

    def slow(cls: type, data: bytes) -> State:
        entered.set()
        opened.wait(3.0)
        return real(cls, data)

    monkeypatch.setattr(State, "restore", classmethod(slow))
    opened.entered = entered  # type: ignore[attr-defined]
    yield opened
    opened.set()


def test_the_tick_goes_on_while_a_received_snapshot_is_restored_and_it_is_swapped_in_whole(tmp_path: Any,
                                                                                          gate: Any) -> None:
    """The last chunk starts the restore and returns; while it runs, ticks go on and AppendEntries are
    answered (no reset: the leader's progress is kept) without being appended; once it is done the state and
    the log are the snapshot's, in one tick, and the leader gets the answer to its last chunk. On the code
    before (restore on the tick thread) delivering the last chunk blocked until the restore ended."""
    blob = snapshot_blob(60, a_state())
    f = Follower(str(tmp_path))
    try:
        f.node._snapshots._restore_thread = True  # a thread, as for a big snapshot on the real disk
        f.with_log(10)
        old_state = f.node.state
        answers = []
        for msg in chunks(blob, 60):
            answers += f.deliver(msg)
        assert gate.entered.wait(3.0), "the restore never started"
        assert f.node.state is old_state and f.log[-1][1] == 10 and not answers   # the tick came back at once
        assert not gate.is_set() and f.node._snapshots.restoring
        # heartbeats and entries while it restores: answered, nothing appended, committed or applied
        busy = f.append(60, [noop(61)], commit=61) + f.append(10, [noop(11)], commit=11)
        assert [(m["success"], m["reset"]) for m in busy] == [(False, False), (False, False)]
        assert (f.log[-1][1], f.node.raftCommitIndex, f.node.raftLastApplied) == (10, 10, 10)
        assert f.node.state is old_state
        gate.set()
        for _ in range(300):
            done = f.deliver({"type": "append_entries", "term": 1, "commit_index": 60, "prevLogIdx": 60,
                              "prevLogTerm": 1, "entries": [], "seq": 99})
            if not f.node._snapshots.restoring:
                break
            threading.Event().wait(0.01)
        assert not f.node._snapshots.restoring
        assert f.node.state is not old_state and f.node.state.snapshot() == a_state().snapshot()
        assert f.log[-1][1] == 60 and f.node.raftCommitIndex == 60 and f.node.raftLastApplied == 60
        assert any(m["success"] and m["next_node_idx"] == 61 for m in done)
        assert f.node._snapshots.exists() and f.node._snapshots._disk.read(f.node._snapshots.path) == blob
    finally:
        f.node._doDestroy()


def test_a_power_cut_before_the_restored_snapshot_is_swapped_in_keeps_the_old_snapshot_and_log(tmp_path: Any) -> None:
    """The received file is synced but keeps its temporary name until the restore is done: a cut in between
    leaves the old snapshot and log, and the next start removes the leftover."""
    disk = SimDisk()
    path = str(tmp_path / "n")
    f = Follower(path, disk=disk)
    f.with_log(10)
    for msg in chunks(snapshot_blob(60, a_state()), 60):
        f.deliver(msg, ticks=0)
    assert f.node._snapshots.restoring
    f.node.doTick(0.0)  # the first of INLINE_RESTORE_POLLS polls: still restoring
    assert f.node._snapshots.restoring and snapshot_mod.INLINE_RESTORE_POLLS > 1
    disk.crash()
    again = Follower(path, disk=disk)
    try:
        again.node.doTick(0.0)
        assert again.log[-1][1] == 10 and again.node.raftCommitIndex == 10
        assert not again.node._snapshots.exists() and disk.listdir(path) == ["raft.journal", "raft.journal.meta"]
        assert again.node.state.epoch == 0
    finally:
        again.node._doDestroy()


def test_a_snapshot_that_fails_to_restore_is_dropped_and_the_follower_goes_on(tmp_path: Any) -> None:
    f = Follower(str(tmp_path / "n"), disk=SimDisk())
    try:
        f.with_log(10)
        bad = raft._snapshot_bytes(noop(60), noop(59), [], cbor2.dumps({"schema": 99}))
        for msg in chunks(bad, 60):
            f.deliver(msg, ticks=snapshot_mod.INLINE_RESTORE_POLLS)
        assert not f.node._snapshots.restoring and not f.node._snapshots.exists()
        assert f.log[-1][1] == 10 and f.node.raftCommitIndex == 10
        replies = f.append(10, [noop(11)], commit=11)  # back to taking entries
        assert replies[-1]["success"] and f.log[-1][1] == 11
    finally:
        f.node._doDestroy()


def test_a_follower_that_becomes_a_candidate_abandons_the_restore(tmp_path: Any) -> None:
    f = Follower(str(tmp_path / "n"), disk=SimDisk())
    try:
        f.with_log(10)
        for msg in chunks(snapshot_blob(60, a_state()), 60):
            f.deliver(msg, ticks=0)
        assert f.node._snapshots.restoring
        f.node._SyncObj__raftState = psyncobj._RAFT_STATE.CANDIDATE  # an election it started
        for _ in range(snapshot_mod.INLINE_RESTORE_POLLS + 1):
            f.node.doTick(0.0)
        assert not f.node._snapshots.restoring and f.node.state.epoch == 0 and f.log[-1][1] == 10
        assert f.node._snapshots._restored is None and not f.node._snapshots.exists()
    finally:
        f.node._doDestroy()


def test_small_snapshots_and_simulated_disks_restore_inline_big_ones_on_a_thread(tmp_path: Any) -> None:
    assert snapshot_mod.SnapshotFiles(str(tmp_path / "a"), SimDisk(), bytes, tuple, 64)._restore_thread is False
    assert snapshot_mod.SnapshotFiles(str(tmp_path / "b"), OsDisk(), bytes, tuple, 64)._restore_thread is None
    assert snapshot_mod.THREAD_MIN_BYTES <= 1 << 20
