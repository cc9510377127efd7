"""Which follower a stopping leader hands its leadership to, and when it may ask it (raftctl/node/raft/transfer.py)."""
from __future__ import annotations

from raftctl.node.raft.transfer import choose_target, ready_to_ask


class Node:
    """Like pysyncobj's TCPNode: hashable, named by ``id``."""

    def __init__(self, id: str) -> None:
        self.id = id

    def __repr__(self) -> str:
        return self.id


A, B, C, D = Node("127.0.0.1:7003"), Node("127.0.0.1:7001"), Node("127.0.0.1:7002"), Node("127.0.0.1:7004")


def test_the_follower_with_the_highest_match_index_is_chosen():
    assert choose_target([A, B, C], [A, B, C], {A: 40, B: 38, C: 12}) is A
    assert choose_target([A, B, C], [A, B, C], {A: 7, B: 38, C: 12}) is B


def test_a_disconnected_follower_is_never_chosen_however_up_to_date():
    assert choose_target([A, B, C], [B, C], {A: 40, B: 38, C: 12}) is B


def test_only_voters_are_candidates():
    # D is connected (a read-only node or a removed member) but not among the voters
    assert choose_target([A, B], [A, B, D], {A: 3, B: 2, D: 99}) is A


def test_ties_go_to_the_smallest_name_whatever_the_order():
    match = {A: 40, B: 40, C: 40}
    for order in ([A, B, C], [C, B, A], [B, A, C]):
        assert choose_target(order, set(order), match) is B  # 7001 < 7002 < 7003


def test_a_follower_never_heard_from_counts_as_match_zero():
    assert choose_target([A, B], [A, B], {B: 1}) is B
    assert choose_target([A, B], [A, B], {}) is B  # both 0: the smallest name


def test_no_connected_voter_means_no_transfer():
    assert choose_target([A, B], [], {A: 5, B: 5}) is None
    assert choose_target([], [A], {A: 5}) is None


def test_ask_only_when_everything_is_committed_applied_and_on_the_target():
    assert ready_to_ask(A, {A: 50}, last_index=50, commit_index=50, last_applied=50)
    assert not ready_to_ask(A, {A: 49}, last_index=50, commit_index=50, last_applied=50)  # target lags
    assert not ready_to_ask(A, {A: 50}, last_index=50, commit_index=49, last_applied=49)  # a write in flight
    assert not ready_to_ask(A, {A: 50}, last_index=50, commit_index=50, last_applied=48)  # not answered yet
    assert not ready_to_ask(A, {}, last_index=50, commit_index=50, last_applied=50)


# -- what a leader handing over does with the commands its followers forward ------------------------------------

class Sent:
    """pysyncobj's transport, recording what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, dict]] = []

    def send(self, node: object, message: dict) -> None:
        self.sent.append((node, message))


def leader_node(transferring: bool):  # type: ignore[no-untyped-def]
    """A RaftNode in the leader state, handing over or not, with a recording transport (no sockets)."""
    import pysyncobj.syncobj as psyncobj

    from raftctl.node.raft import RaftNode
    node = RaftNode.__new__(RaftNode)
    node._SyncObj__raftState = psyncobj._RAFT_STATE.LEADER
    node._SyncObj__transport = Sent()
    node._transfer_job = {"done": None} if transferring else None
    return node


def test_a_leader_handing_over_refuses_a_forwarded_command_as_not_the_leader() -> None:
    from pysyncobj import FAIL_REASON
    node = leader_node(transferring=True)
    node._SyncObj__onMessageReceived(B, {"type": "apply_command", "command": b"x", "request_id": 7})
    assert node._SyncObj__transport.sent == [(B, {"type": "apply_command_response", "request_id": 7,
                                                  "error": FAIL_REASON.NOT_LEADER})]
    node._SyncObj__onMessageReceived(B, {"type": "apply_command", "command": b"x"})  # no answer asked for
    assert len(node._SyncObj__transport.sent) == 1


def test_a_leader_not_handing_over_passes_forwarded_commands_and_everything_else_on(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from raftctl.node.raft.replication import ReplicationFixes
    seen: list[str] = []
    monkeypatch.setattr(ReplicationFixes, "_SyncObj__onMessageReceived",
                        lambda self, node, message: seen.append(message["type"]))
    node = leader_node(transferring=False)
    node._SyncObj__onMessageReceived(B, {"type": "apply_command", "command": b"x", "request_id": 7})
    handing = leader_node(transferring=True)
    handing._SyncObj__onMessageReceived(B, {"type": "next_node_idx", "next_node_idx": 3, "reset": False,
                                            "success": True})
    assert seen == ["apply_command", "next_node_idx"]
    assert node._SyncObj__transport.sent == [] and handing._SyncObj__transport.sent == []
