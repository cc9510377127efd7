"""Group commit on the leader (replication.py, issue 15): what is proposed between two ticks is appended
with one fsync and reaches each follower in one AppendEntries, sent once written, before that fsync (the
followers sync theirs meanwhile); the leader counts itself for the entries only after it."""
from __future__ import annotations

from typing import Any

import pysyncobj.syncobj as psyncobj
import pytest

from raftctl.node.raft import replication
from tests.unit.test_raft_replication import LEADER, OTHER, Handle, _appends_to, _leader, handle  # noqa: F401


def _replicating(h: Handle) -> None:
    """Answer each follower's probe so both are in REPLICATE (pipelined) with everything matched."""
    term = h.node.raftCurrentTerm
    for peer in (LEADER, OTHER):
        probe = _appends_to(h, peer, 0)[-1]
        h.deliver(peer, {"type": "next_node_idx", "success": True, "reset": False, "term": term,
                         "next_node_idx": h.log[-1][1] + 1, "seq": probe["seq"]})
    assert {p["state"] for p in h.node.replication_progress().values()} == {"replicate"}


def test_proposals_between_two_ticks_cost_one_fsync_and_one_message_per_follower(handle: Any) -> None:  # noqa: F811
    h = handle(True)
    _leader(h)
    _replicating(h)
    journal = h.node._SyncObj__raftLog  # type: ignore[attr-defined]
    unsynced_at_send: list[bool] = []
    record = h.transport.send

    def send(node: Any, message: dict) -> bool:
        if message.get("type") == "append_entries" and message.get("entries"):
            unsynced_at_send.append(journal._dirty)
        return record(node, message)

    h.transport.send = send  # type: ignore[method-assign]
    syncs, mark, last = journal.syncs, len(h.transport.sent), h.log[-1][1]
    answers: list[Any] = []
    for i in range(5):
        h.node.apply_entry(b"cmd-%d" % i, callback=lambda res, err: answers.append(err))
    h.node.doTick(0.0)
    assert [e[1] for e in h.log[-5:]] == list(range(last + 1, last + 6))
    assert journal.syncs - syncs == 1                     # pysyncobj: one fsync per entry (5)
    for peer in (LEADER, OTHER):
        sent = [m for m in _appends_to(h, peer, mark) if m["entries"]]
        assert len(sent) == 1                             # pysyncobj: one message per entry
        assert [e[1] for e in sent[0]["entries"]] == list(range(last + 1, last + 6))
    assert unsynced_at_send == [True, True]   # sent before the leader's own fsync (session 31: after it)
    assert not journal._dirty                 # ... which the tick did before it ended
    assert answers == [] and h.node.raftCommitIndex < last + 1    # nothing is answered before a majority has it
    h.deliver(LEADER, {"type": "next_node_idx", "success": True, "reset": False, "term": h.node.raftCurrentTerm,
                       "next_node_idx": last + 6, "seq": h.node._replication_progress[LEADER].seq})
    h.node.doTick(0.0)                        # one follower's answer and the leader's own synced copy: 2 of 3
    assert h.node.raftCommitIndex == last + 5 and answers == [psyncobj.FAIL_REASON.SUCCESS] * 5


def test_the_commit_index_after_applying_rides_with_the_next_entries(handle: Any) -> None:  # noqa: F811
    """A commit reached in a tick that also appends proposals goes out in the same message as them."""
    h = handle(True)
    _leader(h)
    _replicating(h)
    term = h.node.raftCurrentTerm
    h.node.apply_entry(b"first", callback=None)
    h.node.doTick(0.0)
    first = h.log[-1][1]
    for peer in (LEADER, OTHER):
        seq = h.node._replication_progress[peer].seq
        h.transport._onMessageReceived(peer, {"type": "next_node_idx", "success": True, "reset": False,
                                              "term": term, "next_node_idx": first + 1, "seq": seq})
    mark = len(h.transport.sent)
    h.node.apply_entry(b"second", callback=None)
    h.node.doTick(0.0)  # commits and applies `first`, appends `second`
    assert h.node.raftCommitIndex == first
    for peer in (LEADER, OTHER):
        sent = _appends_to(h, peer, mark)
        assert len(sent) == 1 and sent[0]["commit_index"] == first and [e[1] for e in sent[0]["entries"]] == [first + 1]


def _entries_sent(h: Handle, mark: int) -> list[int]:
    return [e[1] for peer in (LEADER,) for m in _appends_to(h, peer, mark) for e in m["entries"]]


@pytest.mark.parametrize("first_batch, held", [
    (3, True),    # several proposers at once: the next batch waits out GROUP_COMMIT_WAIT_S
    (1, False),   # a lone writer: its next proposal is appended at the next tick
], ids=["after a batch of 3", "after a batch of 1"])
def test_after_a_batch_of_several_entries_the_next_waits_the_group_commit_time(
        handle: Any, monkeypatch: Any, first_batch: int, held: bool) -> None:  # noqa: F811
    h = handle(True)
    _leader(h)
    _replicating(h)
    now = [psyncobj.monotonicTime()]
    monkeypatch.setattr(psyncobj, "monotonicTime", lambda: now[0])
    for i in range(first_batch):
        h.node.apply_entry(b"first-%d" % i, callback=None)
    h.node.doTick(0.0)
    last = h.log[-1][1]
    mark, held_before = len(h.transport.sent), h.node.appends_held
    now[0] += replication.GROUP_COMMIT_WAIT_S / 2
    h.node.apply_entry(b"next", callback=None)
    h.node.doTick(0.0)
    if held:
        assert h.log[-1][1] == last and _entries_sent(h, mark) == [] and h.node.appends_held == held_before + 1
        now[0] += replication.GROUP_COMMIT_WAIT_S / 2 + 1e-6
        h.node.doTick(0.0)
    assert h.log[-1][1] == last + 1 and _entries_sent(h, mark) == [last + 1]


def test_a_tick_that_holds_proposals_wakes_when_the_hold_ends(handle: Any, monkeypatch: Any) -> None:  # noqa: F811
    """The tick thread sleeps in its poll until a message comes or its timeout: a held proposal with no message
    after it waited the idle tick period (50 ms), not the hold's rest."""
    h = handle(True)
    _leader(h)
    _replicating(h)
    now = [psyncobj.monotonicTime()]
    monkeypatch.setattr(psyncobj, "monotonicTime", lambda: now[0])
    h.node.apply_entry(b"a", callback=None)
    h.node.apply_entry(b"b", callback=None)
    h.node.doTick(0.0)
    now[0] += 0.0005
    h.node.apply_entry(b"c", callback=None)
    waits: list[float] = []
    poll = h.node._poller.poll
    monkeypatch.setattr(h.node._poller, "poll", lambda timeout: (waits.append(timeout), poll(0))[1])
    h.node.doTick(0.05)
    assert waits and waits[-1] <= replication.GROUP_COMMIT_WAIT_S - 0.0005 + 0.0005 + 1e-9


@pytest.mark.parametrize("raw, seconds", [(None, 0.002), ("", 0.002), ("0", 0.0), ("5", 0.005), ("0.5", 0.0005),
                                          ("abc", None), ("-1", None), ("51", None)])
def test_the_group_commit_wait_from_the_environment(raw: str | None, seconds: float | None) -> None:
    env = {} if raw is None else {"RAFTCTL_GROUP_COMMIT_MS": raw}
    if seconds is None:
        with pytest.raises(ValueError, match="RAFTCTL_GROUP_COMMIT_MS"):
            replication._group_commit_wait(env)
    else:
        assert replication._group_commit_wait(env) == seconds
