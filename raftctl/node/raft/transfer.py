"""Leadership transfer on a graceful stop (Raft thesis §3.10, TimeoutNow).

A leader that is asked to stop first hands its leadership to the follower that needs the least to be caught
up, waits until that follower holds every entry of its log, and then sends it pysyncobj's ``timeout_now``:
the follower starts an election at once (skipping pre-vote, which would refuse it while the leader is alive)
and, holding the longest log, wins it. The old leader steps down when it sees the newer term and only then
shuts down. The cluster is without a leader for one round trip instead of an election timeout.

This module holds the pure part: which follower to pick, and when it may be asked. The tick-thread driver is
:meth:`raftctl.node.raft.RaftNode.transfer_leadership`.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping


def node_key(node: Any) -> str:
    """A node's stable name (pysyncobj's TCPNode has ``id``; tests pass strings)."""
    return str(getattr(node, "id", node))


def choose_target(voters: Iterable[Hashable], connected: Iterable[Hashable],
                  match_index: Mapping[Hashable, int]) -> Any | None:
    """The voter to hand leadership to: the connected one with the highest matchIndex (the fewest entries
    to send before it can be asked), ties broken by the smallest name so that every call picks the same one.
    None when no voter is connected: a transfer is impossible and the leader just stops."""
    live = set(connected)
    candidates = [n for n in voters if n in live]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (-int(match_index.get(n, 0) or 0), node_key(n)))


def ready_to_ask(target: Any, match_index: Mapping[Hashable, int], last_index: int, commit_index: int,
                 last_applied: int) -> bool:
    """Whether the leader may send TimeoutNow to ``target`` now: every entry of its log is committed and
    applied here (writes in flight got their answer) and the target acknowledged all of them (so it wins the
    election and loses nothing; pysyncobj refuses a target that lags, too)."""
    return (commit_index >= last_index and last_applied >= last_index
            and int(match_index.get(target, 0) or 0) >= last_index)
