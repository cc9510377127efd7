"""Raft log replication over pysyncobj (issue 13, jepsen-style findings 6 and 8).

Two kinds of tests. A RaftNode driven by hand (no tick thread, a transport that records what it sends)
receives crafted AppendEntries and answers: each test runs the same messages with repair=False too and
asserts pysyncobj's own behaviour, so the test shows the bug and that raftctl's override fixes it. Then
real RaftNodes on loopback: an old leader with a divergent tail of 3,000 or 20,000 entries catches up with
the new leader.
"""
from __future__ import annotations

import ast
import inspect
import logging
import re
import threading
import time
from typing import Any

import pysyncobj.syncobj as psyncobj
import pytest
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from raftctl.devcluster import free_port
from raftctl.node import raft
from raftctl.node.raft import compat, membership, replication
from raftctl.node.raft.replication import PROBE, REPLICATE

NOOP = psyncobj._COMMAND_TYPE.NO_OP
MEMBERSHIP = psyncobj._COMMAND_TYPE.MEMBERSHIP
LEADER = TCPNode("127.0.0.1:7002")
OTHER = TCPNode("127.0.0.1:7003")


def noop(i: int, term: int) -> tuple[bytes, int, int]:
    return psyncobj._bchr(NOOP) + b"%d/%d" % (i, term), i, term


class Recorder(Transport):
    """Delivers nothing; keeps what the node sends."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self.sent: list[tuple[Any, dict]] = []

    def send(self, node: Any, message: dict) -> bool:
        self.sent.append((node, message))
        return True


class Handle:
    """A RaftNode with no tick thread, fed messages by the test."""

    def __init__(self, path: Any, repair: bool, peers: int = 2, fast: bool = False, disk: Any = None,
                 join: bool = False) -> None:
        self.transport = Recorder(None, None, [])
        conf: dict[str, Any] = {"autoTick": False}
        if fast:  # elections 10x faster than raftctl's
            conf.update(raftMinTimeout=0.04, raftMaxTimeout=0.12, appendEntriesPeriod=0.01)
        self.node = raft.RaftNode("127.0.0.1:7001", [f"127.0.0.1:{7002 + i}" for i in range(peers)], str(path), None,
                                  on_applied=lambda: None, transport=self.transport, repair=repair,
                                  conf_overrides=conf, disk=disk, join=join)

    def deliver(self, node: Any, message: dict) -> list[dict]:
        assert self.transport is not None
        before = len(self.transport.sent)
        self.transport._onMessageReceived(node, message)
        for _ in range(3):
            self.node.doTick(0.0)
        return [m for _, m in self.transport.sent[before:]]

    def append(self, term: int, prev_idx: int, prev_term: int, entries: list, commit: int, **extra: Any) -> list[dict]:
        msg = {"type": "append_entries", "term": term, "commit_index": commit, "prevLogIdx": prev_idx,
               "prevLogTerm": prev_term, "entries": entries, **extra}
        return [m for m in self.deliver(LEADER, msg) if m["type"] == "next_node_idx"]

    @property
    def log(self) -> list[tuple]:
        j = self.node._SyncObj__raftLog  # type: ignore[attr-defined]
        return [tuple(j[i]) for i in range(len(j))]

    def follower_with(self, n: int, term: int = 1) -> None:
        """Log 1..n (1 is pysyncobj's initial no-op), all committed and applied."""
        self.append(term, 1, 0, [noop(i, term) for i in range(2, n + 1)], commit=n)
        assert (len(self.log), self.node.raftCommitIndex, self.node.raftLastApplied) == (n, n, n)


@pytest.fixture
def handle(tmp_path: Any) -> Any:
    made: list[Handle] = []

    def build(repair: bool, peers: int = 2, fast: bool = False) -> Handle:
        h = Handle(tmp_path / f"{len(made)}", repair, peers, fast)
        made.append(h)
        return h

    yield build
    for h in made:
        h.node._doDestroy()


# ---------------------------------------------------------------------------------------------- follower
@pytest.mark.parametrize("repair", [True, False])
def test_a_duplicate_append_entries_does_not_truncate_applied_entries(handle: Any, repair: bool) -> None:
    h = handle(repair)
    h.follower_with(50)
    before = h.log
    replies = h.append(1, 10, 1, [noop(i, 1) for i in range(11, 21)], commit=50)
    if repair:
        assert h.log == before and h.node.raftCommitIndex == 50
        assert replies[-1]["success"] and replies[-1]["next_node_idx"] == 21
    else:  # pysyncobj 0.3.17: everything after prevLogIdx deleted and re-appended
        assert len(h.log) == 20 and h.node.raftCommitIndex == 20


@pytest.mark.parametrize("repair", [True, False])
def test_an_empty_heartbeat_with_an_old_prev_index_changes_nothing(handle: Any, repair: bool) -> None:
    h = handle(repair)
    h.follower_with(50)
    before = h.log
    replies = h.append(1, 5, 1, [], commit=50)
    if repair:
        assert h.log == before and h.node.raftCommitIndex == 50 and h.node.raftLastApplied == 50
        assert replies[-1]["success"] and replies[-1]["next_node_idx"] == 6
    else:
        assert len(h.log) == 5 and h.node.raftCommitIndex == 5


def test_a_conflicting_suffix_above_the_commit_index_is_replaced_from_the_first_conflict(handle: Any) -> None:
    h = handle(True)
    h.follower_with(30)
    h.append(1, 30, 1, [noop(i, 1) for i in range(31, 51)], commit=30)  # 31..50 held, not committed
    # the leader of term 2 holds 31..40 of term 1 and then its own 41..45
    replies = h.append(2, 30, 1, [noop(i, 1) for i in range(31, 41)] + [noop(i, 2) for i in range(41, 46)],
                       commit=43)
    assert [e[2] for e in h.log[30:]] == [1] * 10 + [2] * 5 and len(h.log) == 45
    assert h.node.raftCommitIndex == 43 and replies[-1]["success"] and replies[-1]["next_node_idx"] == 46


def test_commit_never_covers_entries_the_message_did_not_check(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)
    h.append(1, 10, 1, [noop(i, 1) for i in range(11, 41)], commit=10)  # 11..40 unchecked by the next leader
    h.append(2, 12, 1, [], commit=40)  # heartbeat of a leader of term 2 that matched only up to 12
    assert h.node.raftCommitIndex == 12 and len(h.log) == 40


def test_a_conflict_at_or_below_the_commit_index_is_refused_loudly(handle: Any, caplog: Any) -> None:
    h = handle(True)
    h.follower_with(50)
    before = h.log
    with caplog.at_level(logging.ERROR, logger="raftctl.raft.replication"):
        replies = h.append(2, 20, 1, [noop(i, 2) for i in range(21, 26)], commit=50)
    assert h.log == before and h.node.raftCommitIndex == 50
    assert replies[-1]["refused"] and not replies[-1]["success"] and not replies[-1]["reset"]
    assert any("refused, nothing truncated" in r.getMessage() for r in caplog.records)


def test_a_rejection_carries_the_conflicting_term_and_its_first_index(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)
    h.append(2, 10, 1, [noop(i, 2) for i in range(11, 61)], commit=10, seq=7)
    # a leader of term 3 whose entry 60 is of term 3
    conflict = h.append(3, 60, 3, [], commit=10, seq=8)[-1]
    assert (conflict["conflict_term"], conflict["conflict_index"], conflict["seq"], conflict["term"]) == (2, 11, 8, 3)
    assert conflict["reset"] and not conflict["success"] and conflict["next_node_idx"] == 11  # old fields too
    missing = h.append(3, 100, 3, [], commit=10, seq=9)[-1]
    assert (missing["conflict_term"], missing["conflict_index"], missing["next_node_idx"]) == (None, 61, 61)
    assert len(h.log) == 60  # a rejection truncates nothing


def test_membership_entries_of_a_replaced_suffix_are_rolled_back_and_new_ones_applied(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)
    added = TCPNode("127.0.0.1:7009")
    add = psyncobj._bchr(MEMBERSHIP) + psyncobj.pickle.dumps(["add", added.id, added])
    h.append(1, 10, 1, [(add, 11, 1), noop(12, 1)], commit=10)
    assert added in h.node.otherNodes  # pysyncobj applies a membership change when it is appended
    h.append(2, 10, 1, [noop(11, 2)], commit=10)  # the leader of term 2 never had it
    assert added not in h.node.otherNodes and len(h.log) == 11
    h.append(2, 11, 2, [(add, 12, 2)], commit=10)  # and now it does
    assert added in h.node.otherNodes
    h.append(2, 10, 1, [noop(11, 2), (add, 12, 2)], commit=12)  # duplicate: nothing applied twice or undone
    assert added in h.node.otherNodes and len(h.log) == 12 and h.node.raftCommitIndex == 12


@pytest.mark.parametrize("repair", [True, False])
def test_a_snapshot_chunk_does_not_commit_the_followers_own_tail(handle: Any, repair: bool) -> None:
    h = handle(repair)
    h.follower_with(5)
    h.append(1, 5, 1, [noop(i, 1) for i in range(6, 11)], commit=5)  # 6..10 held, not committed
    chunk = {"type": "append_entries", "term": 2, "commit_index": 50, "serialized": (b"part", True, False),
             "snapshot_index": 40, "snapshot_term": 2}
    h.deliver(LEADER, chunk)  # the first of several chunks of a leader's snapshot
    if repair:
        assert h.node.raftCommitIndex == 5 and h.node.raftLastApplied == 5
    else:  # pysyncobj: commit = min(leaderCommit, own last index), its own unchecked tail applied
        assert h.node.raftCommitIndex == 10 and h.node.raftLastApplied == 10


def test_a_snapshot_the_committed_log_already_covers_is_not_installed(handle: Any) -> None:
    h = handle(True)
    h.follower_with(50)
    before = h.log
    replies = [m for m in h.deliver(LEADER, {"type": "append_entries", "term": 1, "commit_index": 50,
                                             "serialized": (b"not even a snapshot", True, True),
                                             "snapshot_index": 30, "snapshot_term": 1})
               if m["type"] == "next_node_idx"]
    assert h.log == before and h.node.raftCommitIndex == 50 and h.node.raftLastApplied == 50
    assert replies[-1]["success"] and replies[-1]["next_node_idx"] == 31


def _snapshot_blob(upto: int, term: int = 1) -> bytes:
    """A real raftctl snapshot file whose last applied entry is noop(upto)."""
    return raft._snapshot_bytes(noop(upto, term), noop(upto - 1, term), ["127.0.0.1:7001", "127.0.0.1:7002",
                                                                         "127.0.0.1:7003"], raft.State().snapshot())


def _chunk(blob: bytes, start: int, end: int, upto: int, tagged: bool = True, term: int = 1) -> dict:
    msg = {"type": "append_entries", "term": term, "commit_index": upto, "snapshot_index": upto,
           "snapshot_term": 1, "serialized": (blob[start:end], start == 0, end >= len(blob))}
    if tagged:
        msg.update(snapshot_offset=start, snapshot_size=len(blob))
    return msg


@pytest.mark.parametrize("tagged", [True, False])
def test_a_chunk_of_another_transmission_never_completes_the_snapshot_being_received(handle: Any,
                                                                                      tagged: bool) -> None:
    """Seed 1129 of tests/sim: the first chunk of a snapshot up to 20, then entries committed up to 30, then
    (lost and reordered messages) the last chunk of another transmission, of a snapshot up to 60, whose bytes
    happen to complete the first. Untagged (pysyncobj's chunks) the follower installs a snapshot up to 20 and
    its log goes 30 -> 20; tagged, the stray chunk is dropped and the real transmission installs."""
    h = handle(True)
    h.follower_with(10)
    old, new = _snapshot_blob(20), _snapshot_blob(60)
    half = len(old) // 2
    h.deliver(LEADER, _chunk(old, 0, half, 20, tagged))
    h.append(1, 10, 1, [noop(i, 1) for i in range(11, 31)], commit=30)
    stray = _chunk(old, half, len(old), 60, tagged)
    if tagged:  # the last chunk of the transmission of `new`, carrying the bytes that complete `old`
        stray.update(snapshot_offset=len(new) - (len(old) - half), snapshot_size=len(new))
    stray["serialized"] = (old[half:], False, True)
    if not tagged:
        with pytest.raises(AssertionError):  # pysyncobj's way: installed, committed entries 21..30 gone
            h.deliver(LEADER, stray)
            assert h.log[-1][1] == 30 and h.node.raftCommitIndex == 30
        return
    h.deliver(LEADER, stray)
    assert h.log[-1][1] == 30 and h.node.raftCommitIndex == 30 and h.node.raftLastApplied == 30
    for start in range(0, len(new), 64):  # the whole transmission of `new` installs
        h.deliver(LEADER, _chunk(new, start, start + 64, 60))
    assert h.log[-1][1] == 60 and h.node.raftCommitIndex == 60 and h.node.raftLastApplied == 60


def test_a_snapshot_the_log_was_committed_past_while_it_arrived_is_not_installed(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)
    blob = _snapshot_blob(20)
    half = len(blob) // 2
    h.deliver(LEADER, _chunk(blob, 0, half, 20))  # 20 > commit 10: wanted when it started
    h.append(1, 10, 1, [noop(i, 1) for i in range(11, 31)], commit=30)
    replies = [m for m in h.deliver(LEADER, _chunk(blob, half, len(blob), 20)) if m["type"] == "next_node_idx"]
    assert h.log[-1][1] == 30 and h.node.raftCommitIndex == 30 and h.node.raftLastApplied == 30
    assert replies[-1]["success"] and replies[-1]["next_node_idx"] == 21


def test_the_leader_tags_every_snapshot_chunk_with_its_transmission_and_offset(handle: Any) -> None:
    h = handle(True)
    blob = _snapshot_blob(20)
    files = h.node._snapshots
    files._disk.write(files.path, 0, blob)
    files._chunk = 100
    h.node._SyncObj__raftLog.clear()  # type: ignore[attr-defined]
    for e in (noop(19, 1), noop(20, 1)):
        h.node._SyncObj__raftLog.add(*e)  # type: ignore[attr-defined]
    h.transport.sent.clear()
    for _ in range(10):
        h.node._send_snapshot_chunk(OTHER)
        if h.transport.sent[-1][1]["serialized"][2]:
            break
    chunks = [m for _, m in h.transport.sent]
    assert [m["snapshot_offset"] for m in chunks] == list(range(0, len(blob), 100)) + [len(blob)]
    assert {(m["snapshot_index"], m["snapshot_term"], m["snapshot_size"]) for m in chunks} == {(20, 1, len(blob))}
    assert b"".join(m["serialized"][0] for m in chunks) == blob


def _asks(replies: list[dict]) -> list[int]:
    return [m["snapshot_resume"] for m in replies if m["type"] == "next_node_idx" and "snapshot_resume" in m]


def test_a_snapshot_with_a_lost_chunk_is_resumed_from_what_the_follower_holds(handle: Any, monkeypatch: Any) -> None:
    """tests/sim at 1,500 steps (seeds 14001, 14003...): a snapshot of five chunks lost one chunk of every
    transmission to loss or reordering, and a follower that dropped the transmission at the gap never got one
    whole. The follower keeps what it holds and asks the leader to go on from its end, once per offset."""
    monkeypatch.setattr(replication, "_now", lambda: 1000.0)
    h = handle(True)
    h.follower_with(10)
    blob = _snapshot_blob(60)
    step = 64
    offsets = list(range(0, len(blob), step))
    assert len(offsets) >= 5
    assert _asks(h.deliver(LEADER, _chunk(blob, 0, step, 60))) == []
    assert _asks(h.deliver(LEADER, _chunk(blob, step, 2 * step, 60))) == []
    # the chunk at 2 * step is lost; the next two arrive: one request to resume at 2 * step, not two
    asked = _asks(h.deliver(LEADER, _chunk(blob, 3 * step, 4 * step, 60)))
    asked += _asks(h.deliver(LEADER, _chunk(blob, 4 * step, 5 * step, 60)))
    assert asked == [2 * step]
    ask = [m for _, m in h.transport.sent if "snapshot_resume" in m][-1]
    assert (ask["snapshot_index"], ask["snapshot_term"], ask["snapshot_size"]) == (60, 1, len(blob))
    assert not ask["success"] and not ask["reset"]   # an older leader changes nothing on it
    assert h.log[-1][1] == 10
    for start in offsets[2:]:  # the leader goes on from 2 * step: the snapshot installs
        h.deliver(LEADER, _chunk(blob, start, start + step, 60))
    assert h.log[-1][1] == 60 and h.node.raftCommitIndex == 60 and h.node.raftLastApplied == 60


def test_a_first_chunk_again_keeps_what_the_follower_holds_of_the_same_snapshot(handle: Any,
                                                                                monkeypatch: Any) -> None:
    """The leader starts over (its last chunk's answer did not come); the follower holding half of the same
    snapshot asks it to go on from there instead; a follower that missed the first chunk asks for it."""
    monkeypatch.setattr(replication, "_now", lambda: 1000.0)
    h = handle(True)
    h.follower_with(10)
    blob = _snapshot_blob(60)
    step = 64
    assert _asks(h.deliver(LEADER, _chunk(blob, step, 2 * step, 60))) == [0]   # its start never came
    h.deliver(LEADER, _chunk(blob, 0, step, 60))
    h.deliver(LEADER, _chunk(blob, step, 2 * step, 60))
    assert _asks(h.deliver(LEADER, _chunk(blob, 0, step, 60))) == [2 * step]
    for start in range(2 * step, len(blob), step):
        h.deliver(LEADER, _chunk(blob, start, start + step, 60))
    assert h.log[-1][1] == 60 and h.node.raftCommitIndex == 60


def test_a_chunk_that_could_not_be_written_is_not_resumed_after(handle: Any, monkeypatch: Any) -> None:
    """A write of the snapshot being received failed (a full disk): nothing held is on disk, so a first chunk
    starts the transmission over instead of asking the leader to resume where the failed write left it."""
    monkeypatch.setattr(replication, "_now", lambda: 1000.0)
    h = handle(True)
    h.follower_with(10)
    blob = _snapshot_blob(60)
    step = 64
    h.deliver(LEADER, _chunk(blob, 0, step, 60))
    files = h.node._snapshots
    real_write = files._disk.write

    def full(*a: Any) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files._disk, "write", full)
    h.deliver(LEADER, _chunk(blob, step, 2 * step, 60))
    assert not files.receiving
    monkeypatch.setattr(files._disk, "write", real_write)
    assert _asks(h.deliver(LEADER, _chunk(blob, 0, step, 60))) == []   # started over, not resumed
    for start in range(step, len(blob), step):
        h.deliver(LEADER, _chunk(blob, start, start + step, 60))
    assert h.log[-1][1] == 60 and h.node.raftCommitIndex == 60


def test_the_leader_resumes_a_snapshot_at_the_offset_a_follower_asks_for(handle: Any) -> None:
    h = handle(True)
    _leader(h)
    term = h.node.raftCurrentTerm
    blob = _snapshot_blob(20)
    files = h.node._snapshots
    files._disk.write(files.path, 0, blob)
    files._chunk = 100
    j = h.node._SyncObj__raftLog  # type: ignore[attr-defined]
    j.clear()
    for e in (noop(19, 1), noop(20, 1), noop(21, term)):
        j.add(*e)
    h.node._SyncObj__raftNextIndex[OTHER] = 19  # type: ignore[attr-defined]
    h.node._SyncObj__raftMatchIndex[OTHER] = 0  # type: ignore[attr-defined]

    def ask(offset: int, **kw: Any) -> list[int]:
        mark = len(h.transport.sent)
        h.deliver(OTHER, {"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": False,
                          "term": term, "snapshot_resume": offset, "snapshot_index": 20, "snapshot_term": 1,
                          "snapshot_size": len(blob), **kw})
        return [m["snapshot_offset"] for n, m in h.transport.sent[mark:] if n == OTHER and "serialized" in m]

    sent = ask(300)
    assert sent and sent[0] == 300 and sent[-1] == len(blob)   # from the offset to the end, not from 0
    assert h.node.snapshot_resumes == 1
    # not this leader's snapshot (another size, another boundary): nothing resumes
    assert ask(300, snapshot_size=len(blob) + 1) == [] and ask(300, snapshot_index=19) == []
    # a late request once the follower acknowledged the snapshot: ignored
    h.node._SyncObj__raftMatchIndex[OTHER] = 20  # type: ignore[attr-defined]
    h.node._SyncObj__raftNextIndex[OTHER] = 21  # type: ignore[attr-defined]
    assert ask(100) == [] and h.node.snapshot_resumes == 1


@pytest.mark.parametrize("repair", [True, False])
def test_a_restart_between_a_snapshot_and_the_compaction_keeps_the_entries_after_it(tmp_path: Any,
                                                                                    repair: bool) -> None:
    """Seed 1149 of tests/sim: the snapshot file (up to 20) is written, the journal (1..30, committed) not yet
    compacted, the node stops. pysyncobj's load clears a journal whose first entries are not the snapshot's
    boundary: committed entries 21..30 gone. raftctl compacts the journal to the boundary and keeps them."""
    h = Handle(tmp_path, repair)
    h.follower_with(30)
    h.node._snapshots._disk.write(h.node._snapshots.path, 0, _snapshot_blob(20))
    h.node._doDestroy()
    again = Handle(tmp_path, repair)
    try:
        for _ in range(3):
            again.node.doTick(0.0)
        if repair:
            assert again.log[0][1] == 19 and again.log[-1][1] == 30 and again.node.raftCommitIndex == 30
            assert again.node.raftLastApplied == 30
        else:
            assert again.log[-1][1] == 20 and again.node.raftCommitIndex == 20
    finally:
        again.node._doDestroy()


def test_a_power_cut_while_installing_a_snapshot_never_leaves_a_commit_index_beyond_the_log(tmp_path: Any) -> None:
    """Seed 1141 of tests/sim: pysyncobj installs the leader's snapshot by clearing the journal, then adding the
    snapshot's two boundary entries; a power cut between left an empty journal beside the meta's commit index
    (commit 10, log end 1 after the restart). A cut at every disk operation of the install in turn: the
    restarted node holds its old log or the snapshot's boundary, and never a commit index beyond its log."""
    from tests.sim.disk import SimCrash, SimDisk

    blob = _snapshot_blob(60)
    seen = set()
    for cut in range(1, 60):
        disk = SimDisk()
        h = Handle(tmp_path, True, disk=disk)
        h.follower_with(10)
        h.node._SyncObj__raftLog.onOneSecondTimer()  # type: ignore[attr-defined]  (the meta's commit index: 10)
        disk.arm(cut)
        try:
            for start in range(0, len(blob), 64):
                h.deliver(LEADER, _chunk(blob, start, start + 64, 60))
        except (SimCrash, RuntimeError):
            pass
        if not disk.dead:  # the whole install ran before the cut
            disk.armed = None
            assert h.log[-1][1] == 60 and cut > 5
            h.node._doDestroy()
            break
        disk.crash()
        again = Handle(tmp_path, True, disk=disk)
        try:
            assert again.node.raftCommitIndex <= again.log[-1][1], (cut, again.log, again.node.raftCommitIndex)
            for _ in range(3):
                again.node.doTick(0.0)
            seen.add(again.log[-1][1])
            assert again.log[-1][1] in (10, 60) and again.node.raftCommitIndex >= 10
        finally:
            again.node._doDestroy()
    else:
        pytest.fail("the install never completed")
    assert seen == {10, 60}


# ---------------------------------------------------------------------------------------------- leader
def _campaign(h: Handle, grant: Any = None) -> None:
    """Connect every peer and tick until the node starts an election (term 1), granting its pre-votes
    (from the peers in ``grant``, default all)."""
    peers = sorted(h.node.otherNodes, key=lambda n: n.id)
    for peer in peers:
        h.transport._onNodeConnected(peer)
    seen = len(h.transport.sent)
    deadline = time.monotonic() + 5
    while h.node.raftCurrentTerm == 0 and time.monotonic() < deadline:
        h.node.doTick(0.01)
        asks = [(n, m) for n, m in h.transport.sent[seen:] if m["type"] == "pre_vote"]
        seen = len(h.transport.sent)
        for n, m in asks:
            if grant is None or n in grant:
                h.transport._onMessageReceived(n, {"type": "pre_vote_response", "term": m["term"], "granted": True})
    assert h.node.raftCurrentTerm == 1


def _leader(h: Handle) -> None:
    """Make the hand-driven node the leader of term 1 with both peers connected."""
    _campaign(h)
    h.deliver(LEADER, {"type": "response_vote", "term": h.node.raftCurrentTerm})
    assert h.node._isLeader()


def _next_idx(h: Handle, peer: Any) -> int:
    return h.node._SyncObj__raftNextIndex[peer]  # type: ignore[attr-defined]


def _appends_to(h: Handle, peer: Any, since: int) -> list[dict]:
    return [m for n, m in h.transport.sent[since:] if n == peer and m["type"] == "append_entries"]


def test_a_rejection_older_than_a_success_does_not_move_next_index_back(handle: Any) -> None:
    h = handle(True)
    _leader(h)
    term = h.node.raftCurrentTerm
    for _ in range(30):
        h.node._SyncObj__raftLog.add(*noop(h.log[-1][1] + 1, term))  # type: ignore[attr-defined]
    last = h.log[-1][1]
    ok = {"type": "next_node_idx", "success": True, "reset": False, "term": term}
    # the probe is answered; the leader pipelines the rest
    mark = len(h.transport.sent)
    probe = _appends_to(h, LEADER, 0)[-1]
    h.deliver(LEADER, dict(ok, next_node_idx=probe["prevLogIdx"] + 1, seq=probe["seq"]))
    h.node.doTick(0.0)
    sent = _appends_to(h, LEADER, mark)
    assert sent and h.node.replication_progress()[LEADER.id]["state"] == REPLICATE
    newest = sent[-1]
    h.deliver(LEADER, dict(ok, next_node_idx=last + 1, seq=newest["seq"]))
    assert _next_idx(h, LEADER) == last + 1
    # a rejection answering an older message arrives late: ignored
    stale = {"type": "next_node_idx", "success": False, "reset": True, "term": term, "next_node_idx": 2,
             "conflict_term": None, "conflict_index": 2, "seq": probe["seq"]}
    h.deliver(LEADER, stale)
    assert _next_idx(h, LEADER) == last + 1
    assert h.node.replication_progress()[LEADER.id]["state"] == REPLICATE
    # pysyncobj's leader takes it: nextIndex back to 2, below what the follower acknowledged
    p = handle(False)
    _leader(p)
    p.deliver(LEADER, dict(ok, next_node_idx=p.log[-1][1] + 1))
    p.deliver(LEADER, {"type": "next_node_idx", "success": False, "reset": True, "next_node_idx": 2})
    assert _next_idx(p, LEADER) == 2


def test_a_newer_rejection_moves_next_index_to_its_hint_but_never_below_match_plus_one(handle: Any) -> None:
    h = handle(True)
    _leader(h)
    term = h.node.raftCurrentTerm
    for _ in range(100):
        h.node._SyncObj__raftLog.add(*noop(h.log[-1][1] + 1, term))  # type: ignore[attr-defined]
    probe = _appends_to(h, LEADER, 0)[-1]
    h.deliver(LEADER, {"type": "next_node_idx", "success": True, "reset": False, "term": term,
                       "next_node_idx": 41, "seq": probe["seq"]})  # the follower holds our 1..40
    h.node.doTick(0.0)
    seq = h.node._replication_progress[LEADER].seq
    h.deliver(LEADER, {"type": "next_node_idx", "success": False, "reset": True, "term": term, "seq": seq,
                       "next_node_idx": 60, "conflict_term": term - 1 if term > 1 else 0, "conflict_index": 60})
    assert _next_idx(h, LEADER) == 60 and h.node.replication_progress()[LEADER.id]["state"] == PROBE
    seq = h.node._replication_progress[LEADER].seq
    h.deliver(LEADER, {"type": "next_node_idx", "success": False, "reset": True, "term": term, "seq": seq,
                       "next_node_idx": 5, "conflict_term": 0, "conflict_index": 5})
    assert _next_idx(h, LEADER) == 41  # match + 1
    # an answer from another term is not counted at all
    h.deliver(LEADER, {"type": "next_node_idx", "success": True, "reset": False, "term": term + 1,
                       "next_node_idx": 90, "seq": seq + 50})
    assert h.node._SyncObj__raftMatchIndex[LEADER] == 40  # type: ignore[attr-defined]


def test_compat_names_the_installed_version_when_it_is_not_the_pinned_one() -> None:
    compat.check()
    with pytest.raises(RuntimeError, match=r"installed: 0\.4\.0"):
        compat.check(version="0.4.0")

    class Renamed:
        SyncObj = type("SyncObj", (), {"__init__": lambda self: None})

    with pytest.raises(RuntimeError, match="missing method SyncObj._SyncObj__onMessageReceived"):
        compat.check(Renamed, version=compat.PINNED_VERSION)


def test_the_mixins_typed_list_of_pysyncobj_privates_is_compats_list() -> None:
    # replication.py and membership.py declare, for mypy, what they use of SyncObj (an `if TYPE_CHECKING:` block
    # on each mixin); compat.py asserts those names at import. Every private name a mixin uses is in both, and
    # they agree.
    declared_attrs: set[str] = set()
    declared_methods: set[str] = set()
    overridden: set[str] = set()
    for module, name in ((replication, "ReplicationFixes"), (membership, "Membership")):
        source = inspect.getsource(module)
        tree = ast.parse(source)
        mixin = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        block = next(n for n in mixin.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
        declared_attrs |= {n.target.id for n in block.body
                           if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        declared_methods |= {n.name for n in block.body if isinstance(n, ast.FunctionDef)}
        overridden |= {n.name for n in mixin.body if isinstance(n, ast.FunctionDef) and n.name.startswith("_SyncObj__")}
        used = set(re.findall(r"\b_SyncObj__\w+", source))
        assert used <= declared_attrs | declared_methods | overridden, (name, used - declared_attrs - declared_methods
                                                                           - overridden)
    assert declared_attrs == set(compat.SYNCOBJ_ATTRIBUTES)
    assert ({m for m in declared_methods | overridden if m.startswith("_SyncObj__")}
            == {m for m in compat.SYNCOBJ_METHODS if m.startswith("_SyncObj__")})
    assert declared_methods - overridden <= set(compat.SYNCOBJ_METHODS)


# ---------------------------------------------------------------------------------------------- loopback
# The loopback tests' own timing: pysyncobj 0.3.17's defaults, not raftctl's (RAFT_TIMING, tuned for
# failover), so the control test below shows pysyncobj alone at its own settings and does not change
# meaning when raftctl's heartbeat does (pysyncobj's repair takes longer the slower the heartbeat: its
# 3,000-entry tail converged in 2.7 s at 0.05 s, 3.9 s at 0.075 s, 5.2 s at 0.1 s).
LOOPBACK_TIMING = {"appendEntriesPeriod": 0.1, "raftMinTimeout": 0.4, "raftMaxTimeout": 1.4}


class Cluster:
    """Three RaftNodes on loopback, each ticked by its own thread, logs prepared before the first tick."""

    def __init__(self, tmp_path: Any, repair: bool, logs: list[list[tuple]], terms: list[int]) -> None:
        ports = [free_port() for _ in logs]
        addrs = [f"127.0.0.1:{p}" for p in ports]
        self.nodes = []
        for i, (entries, term) in enumerate(zip(logs, terms)):
            node = raft.RaftNode(addrs[i], addrs, str(tmp_path / f"n{i}"), None, on_applied=lambda: None,
                                 repair=repair, compact_entries=1_000_000,
                                 conf_overrides={"autoTick": False, **LOOPBACK_TIMING})
            j = node._SyncObj__raftLog  # type: ignore[attr-defined]
            batch = getattr(j, "batch", None)
            with batch() if batch is not None else _nullcontext():
                for e in entries:
                    j.add(*e)
            node._SyncObj__setCurrentTerm(term, None)  # type: ignore[attr-defined]
            self.nodes.append(node)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._tick, args=(n,), daemon=True) for n in self.nodes]
        for t in self.threads:
            t.start()

    def _tick(self, node: Any) -> None:
        while not self.stop.is_set():
            node.doTick(0.005)

    def leader(self) -> Any:
        leaders = [n for n in self.nodes if n._isLeader()]
        return leaders[0] if len(leaders) == 1 else None

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for n in self.nodes:
            n._doDestroy()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _log(node: Any) -> list[tuple]:
    j = node._SyncObj__raftLog
    return [tuple(e) for e in j[:]]


def _diverged(tmp_path: Any, repair: bool, tail: int) -> Cluster:
    common = [noop(i, 1) for i in range(2, 101)]
    new = common + [noop(i, 3) for i in range(101, 151)]
    old = common + [noop(i, 2) for i in range(101, 101 + tail)]
    return Cluster(tmp_path, repair, [old, new, new], [2, 3, 3])


def _time_to_converge(cluster: Cluster, timeout: float) -> float | None:
    """Seconds from the first moment a leader exists until the old leader's log equals the leader's."""
    old = cluster.nodes[0]
    deadline = time.monotonic() + 30
    while cluster.leader() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        leader = cluster.leader()
        if leader is not None and leader is not old:
            lj, oj = leader._SyncObj__raftLog, old._SyncObj__raftLog
            if len(lj) == len(oj) and tuple(lj[-1]) == tuple(oj[-1]) and _log(leader) == _log(old):
                return time.monotonic() - t0
        time.sleep(0.002)
    return None


@pytest.mark.parametrize("tail", [3000, 20000])
def test_an_old_leader_with_a_divergent_tail_converges(tmp_path: Any, tail: int) -> None:
    cluster = _diverged(tmp_path, True, tail)
    try:
        took = _time_to_converge(cluster, 10.0)
    finally:
        cluster.close()
    print(f"\ndivergent tail of {tail} entries: converged in {took if took is None else round(took, 3)} s")
    assert took is not None and took < 10.0  # under 1 s on an idle box; generous for a loaded CI


def test_pysyncobj_alone_does_not_repair_a_divergent_tail(tmp_path: Any) -> None:
    cluster = _diverged(tmp_path, False, 3000)
    try:
        took = _time_to_converge(cluster, 3.0)
    finally:
        cluster.close()
    assert took is None


# ---------------------------------------------------------------------------------------------- elections
@pytest.mark.parametrize("repair", [True, False])
def test_a_duplicated_vote_does_not_make_a_majority(handle: Any, repair: bool) -> None:
    # 5 nodes: a candidate needs 3 votes, its own and two others'. One voter's response_vote delivered
    # twice (a lossy, duplicating network; found by tests/sim) must count once.
    h = handle(repair, peers=4)
    peers = sorted(h.node.otherNodes, key=lambda n: n.id)
    _campaign(h)
    term = h.node.raftCurrentTerm
    vote = {"type": "response_vote", "term": term}
    h.deliver(peers[0], vote)
    h.deliver(peers[0], dict(vote))
    if repair:
        assert not h.node._isLeader() and h.node.raftCurrentTerm == term
        h.deliver(peers[1], dict(vote))  # a second voter: now a majority
        assert h.node._isLeader()
    else:  # pysyncobj 0.3.17 counts messages: leader with 2 of 5 votes
        assert h.node._isLeader()


def _tick_for(h: Handle, seconds: float) -> list[tuple[Any, dict]]:
    since = len(h.transport.sent)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.node.doTick(0.005)
    return h.transport.sent[since:]


@pytest.mark.parametrize("repair", [True, False])
def test_a_replica_cut_off_from_its_peers_keeps_its_term_and_rejoins_without_an_election(handle: Any,
                                                                                          repair: bool) -> None:
    h = handle(repair, fast=True)
    for peer in (LEADER, OTHER):
        h.transport._onNodeConnected(peer)
    h.append(1, 1, 0, [noop(2, 1)], commit=2, seq=1)  # a follower of LEADER in term 1
    sent = _tick_for(h, 1.0)  # then nothing arrives for 1 s: 8 to 25 election timeouts
    kinds = [m["type"] for _, m in sent]
    if repair:
        assert h.node.raftCurrentTerm == 1 and "request_vote" not in kinds and kinds.count("pre_vote") >= 3
        replies = h.append(1, 2, 1, [], commit=2, seq=2)  # the link is back: the leader's next heartbeat
        assert replies and replies[-1]["success"] and h.node._getLeader() == LEADER
    else:  # pysyncobj: a new term per timeout; back on the link its requests depose the leader
        assert h.node.raftCurrentTerm >= 3 and "request_vote" in kinds
        assert not h.append(1, 2, 1, [], commit=2, seq=2)  # the leader's term is stale here now


def test_an_election_timer_that_fires_between_the_pre_vote_check_and_pysyncobjs_starts_no_election(
        handle: Any, monkeypatch: Any) -> None:
    # pysyncobj checks the timer a moment after _pre_vote_tick did: a timer that fired in between (the tick
    # thread preempted there) started an election with no pre-vote (the test above failed once under CI load)
    h = handle(True)
    for peer in (LEADER, OTHER):
        h.transport._onNodeConnected(peer)
    h.append(1, 1, 0, [noop(2, 1)], commit=2, seq=1)
    now = [psyncobj.monotonicTime()]
    monkeypatch.setattr(psyncobj, "monotonicTime", lambda: now[0])
    h.node._SyncObj__raftElectionDeadline = now[0] + 0.001
    checked = h.node._pre_vote_tick

    def then_the_timer_fires() -> bool:
        allowed = checked()
        now[0] += 0.002
        return allowed

    monkeypatch.setattr(h.node, "_pre_vote_tick", then_the_timer_fires)
    since = len(h.transport.sent)
    h.node.doTick(0.0)
    assert h.node.raftCurrentTerm == 1 and not h.transport.sent[since:]
    h.node.doTick(0.0)     # the next tick finds the timer fired: a pre-vote round, not an election
    kinds = [m["type"] for _, m in h.transport.sent[since:]]
    assert h.node.raftCurrentTerm == 1 and kinds == ["pre_vote", "pre_vote"]


def test_a_pre_vote_is_granted_only_without_a_live_leader_and_for_an_up_to_date_log(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)  # LEADER leads term 1; we just heard from it

    def ask(term: int, last_idx: int, last_term: int) -> bool:
        replies = [m for m in h.deliver(OTHER, {"type": "pre_vote", "term": term, "last_log_index": last_idx,
                                                "last_log_term": last_term}) if m["type"] == "pre_vote_response"]
        assert replies[-1]["term"] == term
        return replies[-1]["granted"]

    assert not ask(2, 10, 1)  # the leader is alive: no
    time.sleep(h.node._pre_vote_lease() + 0.05)
    assert ask(2, 10, 1) and ask(2, 12, 1) and ask(3, 3, 2)
    assert not ask(2, 9, 1) and not ask(2, 50, 0)  # a log behind ours: no
    assert not ask(1, 10, 1)  # not a newer term: no
    assert h.node.raftCurrentTerm == 1 and h.node._SyncObj__votedForNodeId is None  # a pre-vote changes nothing


def test_a_pre_vote_refused_by_a_peer_in_a_newer_term_takes_that_term(handle: Any) -> None:
    """The simulation's seed 15014 (1,500 steps): the one replica with the longest log was in term 3 and asked
    pre-votes for term 4 forever; a peer whose failed election had left it in term 4 refused each (not a newer
    term) and was itself refused (its log behind). A refusal says the peer's term; the asker takes it and asks
    for the next one."""
    h = handle(True)
    h.follower_with(10)
    answer = [m for m in h.deliver(OTHER, {"type": "pre_vote", "term": 1, "last_log_index": 10,
                                           "last_log_term": 1}) if m["type"] == "pre_vote_response"][-1]
    assert answer == {"type": "pre_vote_response", "term": 1, "granted": False, "current": 1}
    h.node._pre_vote = {"term": 2, "granted": set(), "answered": set()}   # this replica asks for term 2
    h.deliver(LEADER, {"type": "pre_vote_response", "term": 2, "granted": False})   # an older raftctl: nothing
    assert h.node.raftCurrentTerm == 1
    h.deliver(LEADER, {"type": "pre_vote_response", "term": 2, "granted": False, "current": 1})   # not newer
    assert h.node.raftCurrentTerm == 1
    h.deliver(OTHER, {"type": "pre_vote_response", "term": 2, "granted": False, "current": 3})
    assert h.node.raftCurrentTerm == 3 and h.node._SyncObj__votedForNodeId is None and not h.node._isLeader()


def test_peers_of_an_older_raftctl_that_never_answer_a_pre_vote_do_not_block_elections(handle: Any) -> None:
    h = handle(True, fast=True)
    for peer in (LEADER, OTHER):
        h.transport._onNodeConnected(peer)
    h.append(1, 1, 0, [noop(2, 1)], commit=2)  # no 'seq': LEADER runs a raftctl without pre-vote
    sent = _tick_for(h, 1.0)
    assert h.node.raftCurrentTerm >= 2 and any(m["type"] == "request_vote" for _, m in sent)


def test_a_leader_steps_down_when_a_follower_answers_from_a_newer_term(handle: Any) -> None:
    # A replica whose election failed (its vote requests lost) is in a newer term than the leader; with
    # pre-vote it cannot start another one, so it must make the leader step down or stay behind forever
    # (tests/sim seed 7103 --nodes 3 --torn: a replica 160 entries behind for 4 s of calm).
    f = handle(True)
    f.follower_with(10)
    f.append(3, 10, 1, [], commit=10)  # now in term 3
    answer = f.append(2, 10, 1, [noop(11, 2)], commit=10, seq=4)  # a leader of term 2
    assert answer and not answer[-1]["success"] and answer[-1]["term"] == 3 and len(f.log) == 10
    h = handle(True)
    _leader(h)
    assert h.node._isLeader() and h.node.raftCurrentTerm == 1
    h.deliver(OTHER, dict(answer[-1], term=3))
    assert not h.node._isLeader() and h.node.raftCurrentTerm == 3


# ---------------------------------------------------------------------------------------------- raft_status
def test_raft_status_never_waits_on_the_callers_thread_while_a_term_change_is_half_done(handle: Any) -> None:
    # issue 12 item 11: the API calls raft_status on the event loop; it used to retry getStatus() for up to
    # ~100 ms while the tick thread was between setting a newer term (vote cleared) and stepping down.
    h = handle(True)
    _leader(h)
    term = h.node.raftCurrentTerm
    assert h.node.raft_status()["state"] == "leader"
    # the tick thread half way through a newer term: term set and vote cleared, not stepped down yet
    h.node._SyncObj__raftCurrentTerm = term + 1  # type: ignore[attr-defined]
    h.node._SyncObj__votedForNodeId = None  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    st = h.node.raft_status()
    took = time.perf_counter() - t0
    assert took < 0.01, f"raft_status took {took * 1000:.1f} ms"
    assert (st["state"], st["term"]) == ("leader", term)  # the last consistent view, not leader of term + 1
    # once the tick thread has stepped down, the next tick publishes it
    h.deliver(LEADER, {"type": "append_entries", "term": term + 1, "commit_index": 0, "prevLogIdx": 1,
                       "prevLogTerm": 0, "entries": []})
    st = h.node.raft_status()
    assert (st["state"], st["term"], st["leader"]) == ("follower", term + 1, LEADER.id)


# ---------------------------------------------------------------------------------------------- learners, joining
LEARNER = TCPNode("127.0.0.1:7009")


def _change(kind: str, node: Any) -> bytes:
    return psyncobj._bchr(MEMBERSHIP) + psyncobj.pickle.dumps([kind, node.id, node])


def _ack(h: Handle, peer: Any, upto: int) -> None:
    """``peer`` answers the newest AppendEntries the leader sent it: it holds the leader's log up to ``upto``."""
    sent = _appends_to(h, peer, 0)
    h.deliver(peer, {"type": "next_node_idx", "success": True, "reset": False, "term": h.node.raftCurrentTerm,
                     "next_node_idx": upto + 1, "seq": sent[-1]["seq"]})


def test_a_joining_replica_votes_only_once_its_log_makes_it_a_voter(tmp_path: Any) -> None:
    """`raftctl server --join`: an empty data dir at the address of a removed member must not vote in an old
    configuration that lists the address (the simulation's seed 9054 --members: a stale replica led term 4
    without an entry committed in term 3). It answers no vote, a pre-vote with no, and takes no term from them,
    while its log holds no change of its own or only the one that makes it a learner; the promotion makes it a
    voter, and after a restart its log says so."""
    me = TCPNode("127.0.0.1:7001")
    h = Handle(tmp_path / "n", True, join=True)
    try:
        ask = {"type": "request_vote", "term": 4, "last_log_index": 599, "last_log_term": 3}
        pre = {"type": "pre_vote", "term": 4, "last_log_index": 599, "last_log_term": 3}
        assert h.deliver(OTHER, ask) == []
        assert h.deliver(OTHER, pre) == [{"type": "pre_vote_response", "term": 4, "granted": False}]
        assert h.node.raftCurrentTerm == 0 and h.node.votes_withheld == 2
        h.append(3, 1, 0, [noop(2, 3), noop(3, 3)], commit=3)                   # entries, none of its own
        assert h.deliver(OTHER, {**ask, "term": 5}) == [] and h.node.joining()
        h.append(3, 3, 3, [(_change("learn", LEARNER), 4, 3)], commit=4)      # another replica's: still joining
        h.append(3, 4, 3, [(_change("learn", me), 5, 3)], commit=5)           # its own learn: still joining
        assert h.node.joining() and h.node.raft_status()["joining"]
        h.append(3, 5, 3, [(_change("add", me), 6, 3)], commit=6)             # promoted
        assert not h.node.joining()
        answers = h.deliver(OTHER, {**ask, "term": 6, "last_log_index": 9, "last_log_term": 3})
        assert [m["type"] for m in answers if m["type"] == "response_vote"] == ["response_vote"]
        assert h.node.raftCurrentTerm == 6
    finally:
        h.node._doDestroy()
    again = Handle(tmp_path / "n", True, join=True)                              # restarted, same data dir
    try:
        assert not again.node.joining()
    finally:
        again.node._doDestroy()
    fresh = Handle(tmp_path / "m", True)                                         # a replica of the initial cluster
    try:
        assert not fresh.node.joining()
        assert [m["type"] for m in fresh.deliver(OTHER, {"type": "request_vote", "term": 2, "last_log_index": 1,
                                                          "last_log_term": 0})] == ["response_vote"]
    finally:
        fresh.node._doDestroy()


def test_a_replica_whose_log_makes_it_a_learner_votes_but_starts_no_election(handle: Any) -> None:
    """Removed, then added back (an empty data dir started without --join catches up on the same log): a learner
    until its promotion. It starts no election, but it votes, as etcd's learners do: the leader may have
    promoted it with an entry it has not received (the simulation's seed 15014). A `learn` of a replica that is
    a voter changes nothing, here as in pysyncobj's configuration (the others go on counting it)."""
    me = TCPNode("127.0.0.1:7001")
    h = handle(True)
    h.follower_with(5)
    h.append(1, 5, 1, [(_change("learn", me), 6, 1)], commit=6)
    assert h.node.role() == "voter"
    h.append(1, 6, 1, [(_change("rem", me), 7, 1)], commit=7)
    assert h.node.role() == "removed"
    assert h.deliver(OTHER, {"type": "request_vote", "term": 2, "last_log_index": 9, "last_log_term": 1}) == []
    h.append(1, 7, 1, [(_change("learn", me), 8, 1)], commit=8)
    assert h.node.joining() and h.node.role() == "learner"
    votes = [m for m in h.deliver(OTHER, {"type": "request_vote", "term": 2, "last_log_index": 9,
                                          "last_log_term": 1}) if m["type"] == "response_vote"]
    assert votes and h.node.raftCurrentTerm == 2 and h.node._SyncObj__votedForNodeId == OTHER.id
    for peer in (LEADER, OTHER):
        h.transport._onNodeConnected(peer)
    sent = _tick_for(h, 1.5)   # well past an election timeout: a learner starts none
    assert h.node.raftCurrentTerm == 2 and not [m for _, m in sent if m["type"] in ("pre_vote", "request_vote")]
    h.append(2, 8, 1, [(_change("add", me), 9, 2)], commit=9)
    assert not h.node.joining() and h.node.role() == "voter"


def test_a_leader_whose_log_removes_it_steps_down(handle: Any) -> None:
    """Not reachable through the API (a leader refuses to remove itself) nor from an election (a removed
    replica starts none); a leader that finds its own removal in its log anyway must not go on counting itself."""
    h = handle(True)
    _leader(h)
    h.node._SyncObj__raftLog.add(_change("rem", TCPNode("127.0.0.1:7001")), h.log[-1][1] + 1,  # type: ignore[attr-defined]
                                 h.node.raftCurrentTerm)
    h.node._role = None   # as an append of its own change does
    h.node.doTick(0.0)
    assert h.node.removed() and not h.node._isLeader()


def test_a_replica_whose_log_removed_it_neither_votes_nor_leads(tmp_path: Any) -> None:
    """The simulation's seed 15045 (1,500 steps, --members): n4's log held its own removal (appended while it
    was cut off with the leader that proposed it); pysyncobj ignores a change of a replica's own membership, so
    n4 still counted itself, was elected, committed the removal as leader, and its snapshots listed it: two
    replicas that installed one counted n4 as a voter while the rest did not, and the operator, asking the
    newest leader, kept n4 as a member. Now a replica whose log removes it grants no vote, starts no election,
    and its snapshots record the configuration as of their last entry, without it."""
    me = TCPNode("127.0.0.1:7001")
    h = Handle(tmp_path / "n", True)
    try:
        h.follower_with(5)
        h.append(1, 5, 1, [(_change("rem", me), 6, 1), noop(7, 1)], commit=7)
        assert h.node.removed() and h.node.role() == "removed"
        ask = {"type": "request_vote", "term": 2, "last_log_index": 9, "last_log_term": 1}
        assert h.deliver(OTHER, ask) == [] and h.node.raftCurrentTerm == 1
        # the configuration a snapshot records: as of its last entry (before index 6 this replica was a voter)
        assert h.node.snapshot_config(5, [])[0] == frozenset({me.id, LEADER.id, OTHER.id})
        assert h.node.snapshot_config(7, [])[0] == frozenset({LEADER.id, OTHER.id})
        _tick_for(h, 1.5)   # well past an election timeout: no election from a removed replica
        assert h.node.raftCurrentTerm == 1 and not h.node._isLeader()
    finally:
        h.node._doDestroy()
    # a snapshot that does not list this replica (taken after its removal) leaves it removed after a restart
    blob = raft._snapshot_bytes(noop(7, 1), noop(6, 1), [LEADER.id, OTHER.id], raft.State().snapshot())
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "raft.snapshot").write_bytes(blob)
    again = Handle(tmp_path / "m", True)
    try:
        again.node.doTick(0.0)   # loads it
        assert again.log[-1][1] == 7 and again.node.removed()
    finally:
        again.node._doDestroy()


def test_a_learner_is_replicated_to_counted_in_no_majority_and_promoted_once_caught_up(handle: Any) -> None:
    h = handle(True)
    _leader(h)
    _ack(h, LEADER, h.log[-1][1])
    assert h.node.raftCommitIndex == h.log[-1][1]                  # its no-op committed with one peer
    results: list[Any] = []
    h.node.add_learner(LEARNER.id, callback=lambda res, err: results.append(err))
    h.node.doTick(0.0)
    learn_idx = h.log[-1][1]
    assert psyncobj.pickle.loads(h.log[-1][0][1:])[:2] == ["learn", LEARNER.id]
    assert h.node.learner_ids() == [LEARNER.id] and LEARNER not in h.node.otherNodes
    h.transport._onNodeConnected(LEARNER)
    _tick_for(h, 0.3)
    assert _appends_to(h, LEARNER, 0), "the leader replicates to its learner"
    # the learner's answer alone commits nothing: it is in no majority (it would be 2 of 4 if it were)
    _ack(h, LEARNER, learn_idx)
    h.node.doTick(0.0)
    assert h.node.raftCommitIndex < learn_idx and results == []
    # another change waits while this one is not applied: one change at a time
    h.node.add_learner("127.0.0.1:7010", callback=lambda res, err: results.append(("second", err)))
    h.node.doTick(0.0)
    assert results == [("second", psyncobj.FAIL_REASON.REQUEST_DENIED)] and h.log[-1][1] == learn_idx
    _ack(h, LEADER, learn_idx)
    h.node.doTick(0.0)
    assert h.node.raftCommitIndex >= learn_idx and psyncobj.FAIL_REASON.SUCCESS in results
    # caught up (and connected): the leader appends pysyncobj's add, and the learner is a voter
    for _ in range(3):
        h.node.doTick(0.0)
    assert psyncobj.pickle.loads(h.log[-1][0][1:])[:2] == ["add", LEARNER.id]
    assert LEARNER in h.node.otherNodes and h.node.learner_ids() == []
    _tick_for(h, 0.02)   # raft_status() is what the tick thread last cached (every 5 ms at most)
    assert h.node.raft_status()["learners"] == {}


def test_a_learner_that_is_behind_is_not_promoted(handle: Any) -> None:
    h = handle(True)
    _leader(h)
    term = h.node.raftCurrentTerm
    _ack(h, LEADER, h.log[-1][1])   # its no-op committed: a change may be appended
    h.node.add_learner(LEARNER.id)
    h.node.doTick(0.0)
    assert h.node.learner_ids() == [LEARNER.id]
    for _ in range(200):
        h.node._SyncObj__raftLog.add(*noop(h.log[-1][1] + 1, term))  # type: ignore[attr-defined]
    h.transport._onNodeConnected(LEARNER)
    _tick_for(h, 0.3)
    _ack(h, LEADER, h.log[-1][1])
    _ack(h, LEARNER, 10)
    _tick_for(h, 0.02)
    assert h.node.learner_ids() == [LEARNER.id] and h.node.raft_status()["learners"] == {LEARNER.id: 10}


def test_truncated_membership_entries_undo_a_learner_and_a_promotion(handle: Any) -> None:
    h = handle(True)
    h.follower_with(10)
    h.append(1, 10, 1, [(_change("learn", LEARNER), 11, 1)], commit=11)
    h.append(1, 11, 1, [(_change("add", LEARNER), 12, 1)], commit=11)
    assert LEARNER in h.node.otherNodes and h.node.learner_ids() == []
    h.append(2, 11, 1, [noop(12, 2)], commit=11)              # the promotion was never committed: a learner again
    assert LEARNER not in h.node.otherNodes and h.node.learner_ids() == [LEARNER.id]
    h.append(2, 12, 2, [(_change("rem", LEARNER), 13, 2)], commit=12)
    assert h.node.learner_ids() == []
    h.append(3, 12, 2, [noop(13, 3)], commit=12)              # nor the removal
    assert h.node.learner_ids() == [LEARNER.id]


def test_a_snapshot_carries_the_learners_and_one_without_keeps_its_bytes(tmp_path: Any) -> None:
    entries = (noop(2, 1), noop(1, 0))
    plain = raft._snapshot_bytes(entries[0], entries[1], [TCPNode("127.0.0.1:7001")], b"state")
    assert b"learners" not in plain
    blob = raft._snapshot_bytes(entries[0], entries[1], [TCPNode("127.0.0.1:7001")], b"state", [LEARNER.id])
    obj = __import__("cbor2").loads(blob)
    assert obj["learners"] == [LEARNER.id] and obj["cluster"] == ["127.0.0.1:7001"]
    h = Handle(tmp_path / "n", True)
    try:
        h.node.snapshot_cluster_loaded(["127.0.0.1:7001", "127.0.0.1:7002"], [LEARNER.id])
        h.node._adopt_learners()
        assert h.node.learner_ids() == [LEARNER.id]
    finally:
        h.node._doDestroy()
    # a snapshot that lists this replica as a learner, loaded at a start: it is joining
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "raft.snapshot").write_bytes(raft._snapshot_bytes(
        noop(7, 1), noop(6, 1), ["127.0.0.1:7002"], raft.State().snapshot(), ["127.0.0.1:7001"]))
    again = Handle(tmp_path / "m", True)
    try:
        again.node.doTick(0.0)
        assert again.log[-1][1] == 7 and again.node.learner_ids() == [] and again.node.joining()
    finally:
        again.node._doDestroy()


def test_a_restarted_replica_takes_its_configuration_from_its_log_not_its_start_up_peers(tmp_path: Any) -> None:
    """Raft: a replica uses the latest configuration in its log. pysyncobj started from its peers and made the
    log's changes again only as it applied them, which takes a leader elected under those peers (the simulation's
    seed 11314: the only voter left counted a stopped peer and a joining one, and no leader was elected), and
    applying an old change took the configuration back to the past (seed 11766)."""
    h = Handle(tmp_path / "n", True)
    try:
        h.follower_with(5)
        h.append(1, 5, 1, [(_change("learn", LEARNER), 6, 1), (_change("rem", OTHER), 7, 1),
                           (_change("add", LEARNER), 8, 1), (_change("rem", LEARNER), 9, 1),
                           (_change("learn", LEARNER), 10, 1)], commit=8)   # 9 and 10 not committed
        assert h.node.otherNodes == {LEADER} and h.node.learner_ids() == [LEARNER.id]
    finally:
        h.node._doDestroy()
    again = Handle(tmp_path / "n", True)   # started with its old peers 7002 and 7003
    try:
        assert OTHER in again.node.otherNodes
        again.node.doTick(0.0)
        assert again.node.otherNodes == {LEADER} and again.node.learner_ids() == [LEARNER.id]
        # applying the committed entries again leaves it as the log says (pysyncobj made 8, the promotion, again)
        again.append(1, 10, 1, [], commit=8)
        assert again.node.raftLastApplied == 8
        assert again.node.otherNodes == {LEADER} and again.node.learner_ids() == [LEARNER.id]
    finally:
        again.node._doDestroy()
