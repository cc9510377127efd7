"""Raft glue. Links give up on a peer that stopped acknowledging within a bound (TCP_USER_TIMEOUT),
so a replica whose partition heals reconnects in seconds instead of waiting out TCP's
SYN/retransmission backoff (found by jepsen-style seed 2: 17 s cut off after the heal)."""
from __future__ import annotations

import socket

from pysyncobj.poller import createPoller

from raftctl.node import raft
from raftctl.node.raft import frames


def test_outgoing_and_accepted_raft_sockets_carry_a_user_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    poller = createPoller("auto")
    try:
        out = frames.BoundedConnection(poller, keepalive=(2, 1, 3))
        assert out.connect("127.0.0.1", listener.getsockname()[1])
        accepted, _ = listener.accept()
        incoming = frames.BoundedConnection(poller, socket=accepted, keepalive=(2, 1, 3))
        for conn in (out, incoming):
            sock = conn._TcpConnection__socket  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == frames.USER_TIMEOUT_MS
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        out.disconnect()
        incoming.disconnect()
    finally:
        listener.close()


def test_the_user_timeout_is_shorter_than_an_election_round_trip_of_backoff() -> None:
    # a healed link must come back well before pysyncobj's 30 s leader fallback default
    assert 1000 <= frames.USER_TIMEOUT_MS <= 5000


class _Moving:
    """A RaftNode stand-in caught between pysyncobj setting a newer term (votedFor cleared, then an
    fsync) and stepping down, as its tick thread is while the API reads the status."""

    def __init__(self, settle_after: int) -> None:
        self.calls = 0
        self.settle_after = settle_after
        self.raftCurrentTerm = 13
        self._SyncObj__votedForNodeId = None
        self.selfNode = type("Node", (), {"id": "10.0.0.3:7000"})()

    def getStatus(self) -> dict:  # noqa: N802 (pysyncobj's name)
        self.calls += 1
        if self.calls < self.settle_after:  # still the old leader's state and leader, the new term
            return {"self": "n3", "state": 2, "leader": "10.0.0.3:7000", "raft_term": 13}
        return {"self": "n3", "state": 0, "leader": "10.0.0.1:7000", "raft_term": 13}


def test_status_never_reports_leading_a_term_the_node_did_not_vote_for_itself_in() -> None:
    fake = _Moving(settle_after=3)
    st = raft.RaftNode.raft_status(fake)  # type: ignore[arg-type]
    assert (st["state"], st["term"], st["leader"]) == ("follower", 13, "10.0.0.1:7000")
    assert fake.calls == 3


def test_a_real_leader_is_reported_at_once() -> None:
    fake = _Moving(settle_after=99)
    fake._SyncObj__votedForNodeId = "10.0.0.3:7000"  # it voted for itself in term 13: it leads
    st = raft.RaftNode.raft_status(fake)  # type: ignore[arg-type]
    assert (st["state"], st["term"]) == ("leader", 13) and fake.calls == 1
