"""The safety invariants the simulation checks after every step.

* Election Safety: at most one leader per term (recorded at every transition to leader, so a
  leadership that lasted less than a step is seen too).
* State Machine Safety: every node's committed prefix agrees with every other's, entry by entry
  (index, term, bytes), and never changes on a node while it runs: its log must keep holding, unchanged,
  every entry up to the highest commit index it has reached since it (re)started.
* Applied hash chains agree: after the n-th applied entry, every node's State.chain is the same.
* Leader Completeness for clients: every acknowledged command (its index and term, learned when the
  callback fired) is in the log of every leader of the term it was committed in or a later one. That term is
  not the entry's own: a leader commits the entries of earlier terms it holds once an entry of its own term is
  committed, and a partitioned leader of a term in between (still leading, unable to commit) may lack them
  (seed 8072: entries of term 3, committed in term 6, absent from the stale leader of term 5). The term the
  acknowledging node was in when its callback fired is at or after the commit's (it learned the commit from
  a leader of its term or an earlier one, which committed it in its own term at the latest), so leaders of that
  term or a later one are checked.
A violation raises :class:`Violation` naming the seed, the step and how to replay it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pysyncobj.pickle as ppickle
from pysyncobj.syncobj import _COMMAND_TYPE


FULL_EVERY = 50
RECHECK = 32


class Violation(AssertionError):
    def __init__(self, invariant: str, detail: str, seed: int, step: int, replay: str) -> None:
        super().__init__(f"{invariant} violated at seed {seed} step {step}: {detail}\n  replay: {replay}")
        self.invariant = invariant
        self.detail = detail
        self.seed = seed
        self.step = step
        self.replay = replay


@dataclass
class NodeView:
    """What the checker knows about one incarnation of a node (reset when it restarts)."""
    max_commit: int = 0
    verified: int = 0                # entries 1..verified were compared with the committed record
    acks_checked: dict[int, int] = field(default_factory=dict)   # term as leader -> acks verified


def payload_of(data: bytes) -> bytes | None:
    """The argument of the replicated call a pysyncobj log entry holds (None for its no-ops)."""
    if not data or data[0] != _COMMAND_TYPE.REGULAR:
        return None
    try:
        cmd = ppickle.loads(data[1:])
    except Exception:
        return None
    if isinstance(cmd, tuple) and len(cmd) >= 2 and cmd[1]:
        return cmd[1][0]
    return None


def entries(node: Any, first: int, last: int) -> list[tuple[bytes, int, int]]:
    """Log entries first..last (raft indexes) that the node holds (pysyncobj's own accessor)."""
    if last < first:
        return []
    return list(node._SyncObj__getEntries(first, last - first + 1))


class Checker:
    def __init__(self, seed: int, replay: str) -> None:
        self.seed = seed
        self.replay = replay
        self.step = 0
        self.leaders: dict[int, str] = {}                      # term -> node id
        self.committed: dict[int, tuple[int, bytes]] = {}      # index -> (term, data)
        self.chains: dict[int, str] = {}                       # applied entries -> State.chain
        # (command id, index, term, payload, the term from which on every leader must hold it)
        self.acks: list[tuple[str, int, int, bytes, int]] = []
        self.views: dict[str, NodeView] = {}
        self.counts = {"leader_terms": 0, "acks": 0, "committed_checked": 0}
        # The first violation, kept: checks that run inside a node's callbacks (applied, became_leader,
        # acknowledged) raise through code that may catch and log exceptions (RaftNode.apply_entry
        # does); the simulation re-raises this one after the step.
        self.first: Violation | None = None

    def fail(self, invariant: str, detail: str) -> None:
        v = Violation(invariant, detail, self.seed, self.step, self.replay)
        if self.first is None:
            self.first = v
        raise v

    # -- events the cluster reports as they happen ----------------------------------
    def node_started(self, node_id: str) -> None:
        self.views[node_id] = NodeView()

    def became_leader(self, node_id: str, term: int) -> None:
        other = self.leaders.setdefault(term, node_id)
        if other != node_id:
            self.fail("election safety", f"two leaders in term {term}: {other} and {node_id}")
        self.counts["leader_terms"] = len(self.leaders)

    def applied(self, node_id: str, n_entries: int, chain: str) -> None:
        other = self.chains.setdefault(n_entries, chain)
        if other != chain:
            self.fail("applied hash chain", f"{node_id}'s chain after {n_entries} applied entries is "
                      f"{chain[:12]}, another node had {other[:12]}")

    def acknowledged(self, node_id: str, cmd_id: str, payload: bytes, index: int, term: int,
                     data: bytes | None, acked_in: int) -> None:
        """``term`` is the entry's, ``acked_in`` the acknowledging node's current term when its callback fired."""
        if data is None or payload_of(data) != payload:
            self.fail("acknowledgement", f"{node_id} acknowledged {cmd_id} at index {index} "
                      f"but its log does not hold it there")
        self.acks.append((cmd_id, index, term, payload, max(term, acked_in)))
        self.counts["acks"] = len(self.acks)

    # -- after every step ----------------------------------------------------------------
    def check_node(self, node_id: str, node: Any) -> None:
        view = self.views[node_id]
        commit = node.raftCommitIndex
        last = node._SyncObj__raftLog[-1][1]
        if commit > last:
            self.fail("state machine safety", f"{node_id} commit index {commit} beyond its log end {last}")
        top = max(commit, view.max_commit)
        # The committed prefix is compared again from a little below where the last check stopped, and
        # whole every FULL_EVERY steps (so a change deep in the prefix is still caught, a bit later).
        lo = 1 if self.step % FULL_EVERY == 0 else max(1, view.verified - RECHECK)
        lo = max(lo, node._SyncObj__raftLog[0][1])   # below the log's start: compacted into a snapshot
        held = entries(node, lo, top)
        if top > last:
            self.fail("state machine safety", f"{node_id} had committed up to {view.max_commit} but its "
                      f"log now ends at {last} (committed entries {last + 1}..{view.max_commit} gone)")
        for data, idx, term in held:
            rec = self.committed.get(idx)
            if rec is None:
                if idx <= commit:
                    self.committed[idx] = (term, data)
                continue
            if rec[0] != term or rec[1] != data:
                self.fail("state machine safety", f"{node_id} holds (index {idx}, term {term}) at a "
                          f"committed position where (index {idx}, term {rec[0]}) was committed")
        view.max_commit = top
        view.verified = top
        self.counts["committed_checked"] = len(self.committed)

    def check_leader(self, node_id: str, node: Any, term: int) -> None:
        view = self.views[node_id]
        done = view.acks_checked.get(term, 0)
        if done == len(self.acks):
            return
        for cmd_id, idx, t, payload, since in self.acks[done:]:
            if since > term:
                continue
            got = entries(node, idx, idx)
            if not got and idx < node._SyncObj__raftLog[0][1]:
                continue  # compacted into its snapshot
            if not got or got[0][2] != t or payload_of(got[0][0]) != payload:
                self.fail("leader completeness", f"acknowledged command {cmd_id} (index {idx}, term {t}) "
                          f"is not in the log of {node_id}, leader of term {term}")
        # acks of later terms stay unchecked for this term; re-check them next time (cheap: few)
        view.acks_checked[term] = len(self.acks) if all(a[4] <= term for a in self.acks[done:]) else done
