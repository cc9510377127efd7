"""Log replication done as the Raft paper (§5.3) says, over pysyncobj 0.3.17 (issue 13).

pysyncobj's follower answers every AppendEntries by deleting everything after prevLogIdx and re-appending
what the message carries, so a duplicate or late message truncates entries already acknowledged, applied and
counted by the leader (jepsen-style finding 6). Its leader pipelines AppendEntries, advances nextIndex as it
sends and lets the last reply win, so after a rejection every later pipelined message is rejected too and a
divergent suffix is never repaired (finding 8).

:class:`ReplicationFixes` is a mixin that RaftNode inherits before SyncObj. It overrides pysyncobj's
name-mangled ``__onMessageReceived`` (the transport callback) and ``__sendAppendEntries``; with
``repair=False`` pysyncobj's own code runs unchanged (the simulation uses that to show it finds the bugs).

Follower: skip entries already held (same index and term), truncate only from the first conflicting entry,
never at or below the commit index (refused and logged at ERROR), append the rest in one journal batch
(one sync before the answer), commit = min(leaderCommit, index of the last new entry). A rejection carries
a hint: the conflicting term and the first index the follower holds for it (above its commit index), or its
last index + 1 when entries are missing.

Leader: per-follower progress as etcd's tracker. PROBE: one AppendEntries at a time, resent after a
heartbeat period without an answer. REPLICATE: pipelined, at most MAX_INFLIGHT messages unanswered.
SNAPSHOT: pysyncobj's snapshot transmission, when the entries the follower needs were compacted. Every
message carries a per-follower sequence number that the answer echoes; a rejection moves nextIndex to its
hint only if it answers a message sent after the last reset and is newer than the last success, and
nextIndex never goes below matchIndex + 1. Answers also carry the term: an answer from an older term is
ignored; one from a newer term makes the leader step down (a follower answers AppendEntries of an older
term with its own term, where pysyncobj stays silent).

Elections: a candidate counts one response_vote per voter and term (pysyncobj counts messages, so a
duplicated vote could elect a leader without a majority). Pre-vote (Raft thesis §9.6): when its election
timer fires, a node first asks its peers whether they would vote for it in the next term, without changing
any term; a peer says yes only if the log is up to date and it has not heard from a leader within
PRE_VOTE_LEASE. Only with a majority of yeses does pysyncobj's election run, so a replica back from a
partition (or a paused one) does not depose a healthy leader by bumping the term. A leadership transfer
skips it. Peers known to run an older raftctl (their messages lack the new fields, or they ask for votes
without a pre-vote) count as yes after three unanswered rounds, so a cluster mid-upgrade still elects.

Snapshots (found by tests/sim with compaction on): the leader tags every chunk with its snapshot (index, term,
size) and byte offset, and the follower installs only a transmission it received whole and in order, never
one its commit index passed; loading a snapshot keeps the journal's committed tail and replaces the journal
crash-safely (see _chunk_continues and _SyncObj__loadDumpFile).

Wire compatibility: new fields only ('seq' in requests; 'term', 'seq', 'conflict_term', 'conflict_index',
'refused' in answers; 'snapshot_offset', 'snapshot_size' in snapshot chunks); the old ones keep their
meaning, so a mixed cluster during an upgrade works.
"""
from __future__ import annotations

import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Mapping

import pysyncobj.syncobj as psyncobj

from raftctl.tuning import millis_from_env

log = logging.getLogger("raftctl.raft.replication")

_SyncObj = psyncobj.SyncObj
_FOLLOWER = psyncobj._RAFT_STATE.FOLLOWER
_LEADER = psyncobj._RAFT_STATE.LEADER
_CANDIDATE = psyncobj._RAFT_STATE.CANDIDATE

PROBE, REPLICATE, SNAPSHOT = "probe", "replicate", "snapshot"
PRE_VOTE_SILENT_ROUNDS = 3   # unanswered pre-vote rounds before silent peers count as yes
MAX_INFLIGHT = 32            # unanswered AppendEntries per follower in REPLICATE
MAX_ENTRIES_PER_MESSAGE = 4096
RESUME_ASK_S = 0.05          # a follower asks the leader to resume a snapshot at one offset at most this often


def _group_commit_wait(env: Mapping[str, str] | None = None) -> float:
    """``RAFTCTL_GROUP_COMMIT_MS`` (0 to 50; 0 turns the hold off) in seconds, else 2 ms; ValueError names it."""
    return millis_from_env("RAFTCTL_GROUP_COMMIT_MS", 0.002, 0, 50, env)


GROUP_COMMIT_WAIT_S = _group_commit_wait()
"""How long after one batch of appended proposals the leader holds the next (see _hold_appends)."""
GROUP_COMMIT_MIN_ENTRIES = 2
"""The hold applies only after a batch of at least this many entries (several proposers writing at once)."""


def _now() -> float:
    return psyncobj.monotonicTime()  # looked up at call time: the simulation replaces it


class _Progress:
    __slots__ = ("term", "state", "seq", "reset_seq", "success_seq", "inflight", "last_send", "sent_commit")

    def __init__(self, term: int) -> None:
        self.term = term
        self.state = PROBE
        self.seq = 0                 # last sequence number sent
        self.reset_seq = 1           # answers to messages before this one are stale
        self.success_seq = 0         # newest answered message that succeeded
        self.inflight: collections.deque[tuple[int, float]] = collections.deque()  # (seq, sent at)
        self.last_send = float("-inf")
        self.sent_commit = -1

    def reset(self, state: str = PROBE) -> None:
        self.state = state
        self.inflight.clear()
        self.reset_seq = self.seq + 1


class ReplicationFixes:
    """Mixin for a SyncObj subclass; set ``self._repair`` before SyncObj.__init__ (the tick thread starts there)."""

    _repair = True
    _snapshot_rx: list[Any] | None   # the snapshot transmission being received: [its key, bytes so far]
    _snapshot_skip: bool             # the one being received is not to be installed

    if TYPE_CHECKING:
        # What SyncObj (untyped, so Any to mypy) gives the mixin and RaftNode: the one typed list of pysyncobj's
        # private names raftctl uses. compat.py asserts the same names exist at import (SYNCOBJ_ATTRIBUTES,
        # SYNCOBJ_METHODS); test_raft_replication checks the two lists agree.
        _SyncObj__raftLog: Any                       # the journal: entries (command, index, term)
        _SyncObj__raftCurrentTerm: int
        _SyncObj__raftState: int                     # _RAFT_STATE
        _SyncObj__raftLeader: Any                    # a Node or None
        _SyncObj__raftCommitIndex: int
        _SyncObj__raftLastApplied: int
        _SyncObj__raftNextIndex: dict[Any, int]
        _SyncObj__raftMatchIndex: dict[Any, int]
        _SyncObj__lastResponseTime: dict[Any, float]
        _SyncObj__leaderCommitIndex: int
        _SyncObj__raftElectionDeadline: float
        _SyncObj__transferInProgress: bool
        _SyncObj__recvTransmission: bytes | str
        _SyncObj__transport: Any
        _SyncObj__serializer: Any
        _SyncObj__conf: Any                          # SyncObjConf
        _SyncObj__otherNodes: set[Any]
        _SyncObj__readonlyNodes: set[Any]
        _SyncObj__connectedNodes: set[Any]
        _SyncObj__newAppendEntriesTime: float
        _SyncObj__selfNode: Any
        _poller: Any                                 # the sockets' poller (_read_before_falling_back)
        _SyncObj__votedForNodeId: Any                # (__init__.py: raft_status)
        _SyncObj__needLoadDumpFile: bool             # (__init__.py: _onTick)

        def _SyncObj__generateRaftTimeout(self) -> float: ...
        def _SyncObj__onLeaderChanged(self) -> None: ...
        def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: Any) -> None: ...
        def _SyncObj__setState(self, newState: int) -> None: ...  # noqa: N803
        def _SyncObj__getEntries(self, fromIDx: int, count: int | None = None,  # noqa: N803
                                 maxSizeBytes: int | None = None) -> list[Any]: ...
        def _SyncObj__getPrevLogIndexTerm(self, nextNodeIndex: int) -> tuple[int | None, int | None]: ...  # noqa: N803
        def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None: ...  # noqa: N803
        def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any: ...

    def _init_replication(self, repair: bool) -> None:
        """Call before SyncObj.__init__ (its tick thread may run at once)."""
        self._repair = bool(repair)
        self._replication_progress: dict[Any, _Progress] = {}
        self._replication_voters: tuple[int | None, set] = (None, set())
        self._pre_vote: dict[str, Any] | None = None   # the round in progress: term, granted, answered
        self._pre_vote_passed = False
        self._pre_vote_failed_rounds = 0
        self._leader_heard_at = float("-inf")
        self._election_held = False                    # pysyncobj's tick may not start an election now
        self._old_peers: set = set()                   # peers whose messages show an older raftctl
        self._pre_voted: dict[Any, int] = {}           # peer -> newest term it asked a pre-vote for

    # ------------------------------------------------------------------ dispatch
    def _SyncObj__onMessageReceived(self, node: Any, message: dict) -> None:  # noqa: N802 (pysyncobj's name)
        if not self._repair:
            return _SyncObj._SyncObj__onMessageReceived(self, node, message)
        mtype = message.get("type")
        self._note_version(node, mtype, message)
        if mtype == "append_entries":
            if message["term"] >= self._SyncObj__raftCurrentTerm:
                self._on_append_entries(node, message)
            else:  # tell a leader of an older term about ours, so it steps down (pysyncobj stays silent)
                self._reply(node, message, success=False, next_idx=self._SyncObj__raftLog[-1][1] + 1)
            return None
        if mtype in ("pre_vote", "request_vote") and self._withhold_vote(node, message):
            return None
        if mtype == "pre_vote":
            self._on_pre_vote(node, message)
            return None
        if mtype == "pre_vote_response":
            self._on_pre_vote_response(node, message)
            return None
        if mtype == "response_vote" and not self._first_vote(node, message):
            return None  # pysyncobj counts vote messages, not voters: a duplicate would count twice
        if mtype == "next_node_idx":
            if self._SyncObj__raftState == _LEADER and self._on_append_reply(node, message) \
                    and node in self._SyncObj__connectedNodes:
                # send what the answer allows now (the next probe, a wider window), not at the next tick
                self._send_to(node, self._progress(node), _now(), self._SyncObj__conf.appendEntriesPeriod)
            return None
        return _SyncObj._SyncObj__onMessageReceived(self, node, message)

    # ------------------------------------------------------------------ pre-vote, election timing
    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N803 (pysyncobj's name)
        if not self._repair:
            return _SyncObj._onTick(self, timeToWait)
        held = not self._pre_vote_tick()
        self._read_before_falling_back()
        term = self._SyncObj__raftCurrentTerm
        # Group commit (see _checkCommandsToApply): AppendEntries asked for before the tick's proposals are
        # appended (the commit index after applying, a heartbeat) wait for them and go out once.
        self._defer_sends = True
        wait = self._until_election(timeToWait)
        hold = self._hold_appends()
        if hold:  # wake when the hold ends even if no message comes (the poller's resolution is 1 ms)
            wait = min(wait, hold + 0.0005)
        self._election_held = held
        try:
            _SyncObj._onTick(self, wait)
        finally:
            self._election_held = False
            self._flush_deferred_sends()  # a tick that returned early (transport not ready) never got there
        if self._SyncObj__raftState == _CANDIDATE and self._SyncObj__raftCurrentTerm > term:
            # An election started in this tick. pysyncobj waits a whole election timeout (0.3-0.6 s) for its
            # votes; they take a round trip. A split vote (both survivors candidates in the same term) was
            # the tail of leader kill -> next write (1.2-1.6 s): retry sooner, at a fresh random time, so one
            # of them asks first in the next round (a peer that has a leader by then refuses its pre-vote).
            conf = self._SyncObj__conf
            self._SyncObj__raftElectionDeadline = _now() + conf.appendEntriesPeriod + self._quick_timeout()
        return None

    def _read_before_falling_back(self) -> None:
        """pysyncobj's leader steps down when fewer than a majority answered within leaderFallbackTimeout (3 s),
        and judges it at the start of its tick, before the tick reads its sockets. After the tick thread stalled
        that long (a long apply, the GIL, a process starved of CPU: the 10,000-machine bench on this 2-core box
        went from term 1 to 12 while placing), the followers' answers that came meanwhile sit unread and a live
        leader steps down: an election, and every agent sent to a new leader. Read what has arrived first."""
        if self._SyncObj__raftState != _LEADER:
            return
        others = self._SyncObj__otherNodes
        deadline = _now() - self._SyncObj__conf.leaderFallbackTimeout
        heard = 1 + sum(1 for n in others if self._SyncObj__lastResponseTime.get(n, float("-inf")) > deadline)
        if heard <= (len(others) + 1) / 2:
            self._poller.poll(0)

    def _quick_timeout(self) -> float:
        """A random wait in [0, spread): the election timeout's randomisation without its floor (the floor is
        there for a live leader's heartbeats to arrive). Drawn from pysyncobj's ``random``, as its own
        timeouts are, so a simulated run stays reproducible."""
        conf = self._SyncObj__conf
        spread = max(conf.raftMaxTimeout - conf.raftMinTimeout, conf.appendEntriesPeriod)
        return float(spread * psyncobj.random.random())

    def _until_election(self, time_to_wait: float) -> float:
        """How long this tick may wait for messages: no longer than until the election timer fires.
        pysyncobj checks the timer once per tick and a silent node ticks every autoTickPeriod (0.05 s), so
        timers fired up to 50 ms late, on each node's own tick grid: two timers apart by 40 ms could fire in
        the same ms (a split vote)."""
        if self._SyncObj__raftState == _LEADER or self._SyncObj__selfNode is None:
            return time_to_wait
        left = self._SyncObj__raftElectionDeadline - _now()
        if 0 < left < time_to_wait:
            return left + 0.0005  # the poller's timeout resolution is 1 ms: wake just after, not just before
        return time_to_wait

    def _SyncObj__onNodeDisconnected(self, node: Any) -> None:  # noqa: N802 (pysyncobj's name)
        _SyncObj._SyncObj__onNodeDisconnected(self, node)
        if (self._repair and node == self._SyncObj__raftLeader and self._SyncObj__raftState == _FOLLOWER
                and self._SyncObj__selfNode is not None):
            self._leader_lost(node)

    def _leader_lost(self, node: Any) -> None:
        """The connection to our leader closed. When its process dies (kill -9, a crash, OOM) the kernel
        closes its sockets at once, so every follower learns it within a round trip, where the election
        timeout (0.3-0.6 s after the last heartbeat) took the larger part of a failover. Forget the leader
        and let the election timer fire after a short random wait; pre-vote still asks first, so if the
        leader is alive (a link broke, a peer still hears it) nothing happens but a pre-vote round, and the
        leader's next message, over the reconnected link, makes it our leader again.
        Commands this node forwarded to it would never be answered: pysyncobj's leader-change hook fails
        them now (the client retries; its request id keeps a retry from applying twice), and new ones wait
        in pysyncobj's queue until a leader is known instead of going to a dead one."""
        now = _now()
        self._SyncObj__raftLeader = None
        self._leader_heard_at = float("-inf")
        self._SyncObj__onLeaderChanged()
        deadline = min(self._SyncObj__raftElectionDeadline, now + self._quick_timeout())
        self._SyncObj__raftElectionDeadline = deadline
        log.info("leader %s disconnected: election timer in %.0f ms", getattr(node, "id", node),
                 max(deadline - now, 0.0) * 1000)

    def _pre_vote_lease(self) -> float:
        conf = self._SyncObj__conf
        # a follower of a live leader heard from it within one heartbeat before any peer's timer can fire
        return max(conf.raftMinTimeout - 1.5 * conf.appendEntriesPeriod, conf.appendEntriesPeriod)

    def _SyncObj__connectedToAnyone(self) -> bool:  # noqa: N802 (pysyncobj's name)
        """pysyncobj asks this only where its tick starts an election: not while ``_election_held``. Its timer
        check comes a moment after ``_pre_vote_tick``'s: a timer that fired in between (a thread preempted
        there, the tick woken just before its timer) started an election with no pre-vote, a new term from a
        replica cut off from its peers (tests/unit/test_raft_replication.py, seen under CI load)."""
        return not self._election_held and _SyncObj._SyncObj__connectedToAnyone(self)

    def _pre_vote_tick(self) -> bool:
        """Before pysyncobj's tick: hold its election back until a pre-vote round passed. Whether pysyncobj's
        tick may start an election (otherwise ``_onTick`` holds it: ``_election_held``)."""
        if self._SyncObj__selfNode is None or self._SyncObj__raftState == _LEADER:
            self._pre_vote = None
            return True
        now = _now()
        if (self._SyncObj__raftElectionDeadline >= now
                or not _SyncObj._SyncObj__connectedToAnyone(self)):
            return False
        others = self._SyncObj__otherNodes
        if self._pre_vote_passed or self._SyncObj__transferInProgress or not others:
            self._pre_vote_passed = False
            self._pre_vote = None
            return True  # pysyncobj starts the election in this tick
        last = self._pre_vote
        if last is not None and last["term"] == self._SyncObj__raftCurrentTerm + 1:
            self._pre_vote_failed_rounds += 1
            silent = {n for n in others if n in self._SyncObj__connectedNodes and n not in last["answered"]
                      and n in self._old_peers}
            if (self._pre_vote_failed_rounds >= PRE_VOTE_SILENT_ROUNDS
                    and 1 + len(last["granted"]) + len(silent) > (len(others) + 1) / 2):
                log.warning("pre-vote: %d peer(s) of an older raftctl never answer one: electing without it",
                            len(silent))
                self._pre_vote_failed_rounds = 0
                self._pre_vote = None
                return True
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        term = self._SyncObj__raftCurrentTerm + 1
        if self._pre_vote_failed_rounds == 0:  # the first round since we last heard from a leader
            log.info("pre-vote: asking for term %d (leader %s)", term,
                     getattr(self._SyncObj__raftLeader, "id", self._SyncObj__raftLeader))
        self._pre_vote = {"term": term, "granted": set(), "answered": set()}
        raft_log = self._SyncObj__raftLog
        request = {"type": "pre_vote", "term": term, "last_log_index": raft_log[-1][1],
                   "last_log_term": raft_log[-1][2]}
        for node in others:
            self._SyncObj__transport.send(node, request)
        return False

    def _note_version(self, node: Any, mtype: Any, message: dict) -> None:
        """Tell peers running an older raftctl (no pre-vote) from the messages they send."""
        if mtype in ("pre_vote", "pre_vote_response"):
            new = True
            if mtype == "pre_vote" and isinstance(message.get("term"), int):
                self._pre_voted[node] = max(self._pre_voted.get(node, 0), message["term"])
        elif mtype == "append_entries" and "prevLogIdx" in message:
            new = "seq" in message
        elif mtype == "next_node_idx":
            new = "term" in message
        elif mtype == "request_vote":  # a new peer asks for a pre-vote first (a leadership transfer aside)
            new = self._pre_voted.get(node, 0) >= message.get("term", 0)
        else:
            return
        if new:
            self._old_peers.discard(node)
        else:
            self._old_peers.add(node)

    def _withhold_vote(self, node: Any, message: dict) -> bool:
        """Whether this replica answers no vote request or pre-vote (membership.py: a joining replica)."""
        return False

    def _on_pre_vote(self, node: Any, message: dict) -> None:
        term = message.get("term")
        mine = self._SyncObj__raftLog[-1]
        in_lease = self._SyncObj__raftState == _LEADER or (
            self._SyncObj__raftLeader is not None and _now() - self._leader_heard_at < self._pre_vote_lease())
        last_term, last_idx = message.get("last_log_term"), message.get("last_log_index")
        asks_newer = (isinstance(term, int) and term > self._SyncObj__raftCurrentTerm and not in_lease
                      and isinstance(last_term, int) and isinstance(last_idx, int))
        up_to_date = asks_newer and (last_term, last_idx) >= (mine[2], mine[1])
        granted = asks_newer and up_to_date
        self._SyncObj__transport.send(node, {"type": "pre_vote_response", "term": term, "granted": bool(granted),
                                             "current": self._SyncObj__raftCurrentTerm})
        if asks_newer and not up_to_date and self._SyncObj__raftState == _FOLLOWER:
            # No leader, and a peer whose log is behind ours wants an election it cannot win with our vote
            # (after a leader dies, the follower the last entries had not reached yet): campaign now
            # instead of at our own timer (our pre-vote still asks first).
            self._SyncObj__raftElectionDeadline = min(self._SyncObj__raftElectionDeadline, _now())

    def _on_pre_vote_response(self, node: Any, message: dict) -> None:
        current = message.get("current")   # the refusing peer's own term (absent from an older raftctl)
        if (not message.get("granted") and isinstance(current, int) and not isinstance(current, bool)
                and current > self._SyncObj__raftCurrentTerm and self._SyncObj__raftState != _LEADER):
            # A peer is in a term at or past the one asked for: it refuses every pre-vote for it, and this
            # replica, the only one up to date, would ask for the same term forever (the simulation's seed
            # 15014: a candidate's failed election left it a term ahead, its log behind). Take its term, as
            # Raft says of any newer term seen, and ask for the next one (etcd does the same).
            log.info("pre-vote: %s is in term %d (ours %d): taking it", node, current, self._SyncObj__raftCurrentTerm)
            self._SyncObj__setCurrentTerm(current, None)
            self._SyncObj__setState(_FOLLOWER)
            self._pre_vote = None
            return
        rnd = self._pre_vote
        if (rnd is None or message.get("term") != rnd["term"] or rnd["term"] != self._SyncObj__raftCurrentTerm + 1
                or self._SyncObj__raftState == _LEADER):
            return
        rnd["answered"].add(node)
        if message.get("granted") and node in self._SyncObj__otherNodes:   # a learner's yes counts for nothing
            rnd["granted"].add(node)
        if 1 + len(rnd["granted"]) > (len(self._SyncObj__otherNodes) + 1) / 2:
            self._pre_vote = None
            self._pre_vote_failed_rounds = 0
            self._pre_vote_passed = True
            self._SyncObj__raftElectionDeadline = 0  # pysyncobj's next tick starts the election

    def _first_vote(self, node: Any, message: dict) -> bool:
        """False for a second response_vote from the same node in the same term (a duplicated message, as a
        lossy network or a retransmitting transport makes): counting it could elect a leader without a
        majority, one that lacks committed entries (found by the simulation in tests/sim)."""
        if self._SyncObj__raftState != _CANDIDATE or message.get("term") != self._SyncObj__raftCurrentTerm:
            return True  # pysyncobj ignores it anyway
        if node not in self._SyncObj__otherNodes:
            return False  # not a voter in this configuration (a learner, a removed replica): counts for nothing
        term, voters = self.__dict__.get("_replication_voters", (None, set()))
        if term != message["term"]:
            term, voters = message["term"], set()
            self._replication_voters = (term, voters)
        if node in voters:
            return False
        voters.add(node)
        return True

    # ------------------------------------------------------------------ follower
    def _on_append_entries(self, node: Any, message: dict) -> None:
        # Term and leader bookkeeping exactly as pysyncobj does it.
        term = message["term"]
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = _now() + self._SyncObj__generateRaftTimeout()
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        self._leader_heard_at = _now()
        self._pre_vote = None
        self._pre_vote_passed = False
        self._pre_vote_failed_rounds = 0
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(_FOLLOWER)
        self._SyncObj__leaderCommitIndex = leader_commit = message["commit_index"]

        if "prevLogIdx" in message:
            entries = message.get("entries", [])
            transmission = message.get("transmission")
            if transmission is not None:
                entries = self._receive_chunk(node, message, transmission)
                if entries is None:
                    return
            self._append(node, message, entries, leader_commit)
            return

        serialized = message.get("serialized")
        if serialized is not None:
            self._on_snapshot_chunk(node, message, serialized)

    def _on_snapshot_chunk(self, node: Any, message: dict, serialized: Any) -> None:
        """One chunk of the leader's snapshot. Unlike pysyncobj: a chunk does not touch the commit index (it
        set commit = min(leaderCommit, own last index) with no log check, committing a restarted follower's
        own divergent tail), and a snapshot the follower's committed log already covers is not installed
        (a delayed one rolled log and state back). Both found by tests/sim."""
        try:
            is_first, is_last = bool(serialized[1]), bool(serialized[2])
        except (TypeError, IndexError, KeyError):
            log.warning("snapshot chunk from %s without its flags; dropped", node)
            return
        if not self._chunk_continues(node, message, serialized, is_first):
            return
        upto = message.get("snapshot_index")
        covered = max(self._SyncObj__raftCommitIndex, self._SyncObj__raftLastApplied)
        if is_first:
            self._snapshot_skip = isinstance(upto, int) and upto <= covered
            if self._snapshot_skip:
                log.info("ignoring a snapshot up to index %d from %s: the log is committed up to %d", upto, node,
                         covered)
        elif is_last and isinstance(upto, int) and upto <= covered and not getattr(self, "_snapshot_skip", False):
            # the commit index passed the snapshot while it was on its way (another leader's entries)
            log.info("not installing a snapshot up to index %d from %s: the log is committed up to %d by now",
                     upto, node, covered)
            self._snapshot_skip = True
            abandon = getattr(self._SyncObj__serializer, "abandon_incoming", None)
            if abandon is not None:
                abandon()
        if getattr(self, "_snapshot_skip", False):
            if is_last:  # committed entries match the leader's: we hold what the snapshot holds
                self._snapshot_rx = None
                self._reply(node, message, success=True, next_idx=message["snapshot_index"] + 1)
            return
        if not self._SyncObj__serializer.setTransmissionData(serialized):
            if not is_last and getattr(self._SyncObj__serializer, "receiving", True) is False:
                # writing the chunk failed: nothing is held on disk, so nothing is resumed (the next first chunk
                # starts the transmission over, as before resumes existed)
                self._snapshot_rx = None
            return
        self._snapshot_rx = None
        self._SyncObj__loadDumpFile(clearJournal=True)
        if len(self._SyncObj__raftLog) == 0:  # pysyncobj logs and swallows any error while loading
            raise RuntimeError("installing the leader's snapshot failed after the journal was cleared")
        last = self._SyncObj__raftLog[-1][1]  # the log is the snapshot's boundary now: all committed
        self._SyncObj__raftCommitIndex = last
        self._SyncObj__raftLog.setRaftCommitIndex(last)
        self._reply(node, message, success=True, next_idx=last + 1)

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802,N803 (pysyncobj's names)
        """pysyncobj's snapshot load, with the journal brought to the snapshot's boundary crash-safely first.

        pysyncobj clears the journal unless its first two entries are the snapshot's boundary: at a start
        after a crash between writing a snapshot and compacting the journal, that threw away the committed
        entries after the snapshot (tests/sim seed 1149: commit 235, log 226 after the restart); here the
        journal is compacted to the boundary when it holds it (same index and term), its tail kept. Installing
        the leader's snapshot, pysyncobj clears the journal, then adds the two boundary entries: a crash
        between left an empty journal beside the meta's commit index (seed 1141: commit 52, log end 1); here
        the journal is replaced by the two entries in one crash-safe rewrite."""
        base = _SyncObj._SyncObj__loadDumpFile
        preload = getattr(self._SyncObj__serializer, "preload", None)
        if not self._repair or preload is None:
            return base(self, clearJournal)
        try:
            data = preload()
            first, last = tuple(data[2]), tuple(data[1])
        except Exception:  # noqa: BLE001 (pysyncobj's load decodes it again, and logs what fails)
            return base(self, clearJournal)
        raft_log = self._SyncObj__raftLog
        if clearJournal:
            rewrite = getattr(raft_log, "_rewrite", None)  # CheckedJournal: write new, sync, rename, sync the dir
            if rewrite is not None:
                rewrite([first, last])
                clearJournal = False
        elif len(raft_log) >= 2:
            pos = first[1] - raft_log[0][1]
            if (0 < pos < len(raft_log) - 1 and raft_log[pos][1:] == first[1:]
                    and raft_log[pos + 1][1:] == last[1:]):
                log.info("compacting the journal to the snapshot's boundary %d (it ends at %d)", last[1],
                         raft_log[-1][1])
                raft_log.deleteEntriesTo(pos)
        return base(self, clearJournal)

    def _chunk_continues(self, node: Any, message: dict, serialized: Any, is_first: bool) -> bool:
        """True for a chunk that starts a transmission or continues the one being assembled. pysyncobj's
        chunks carry no transmission id or offset: after a loss and a reordering, the follower appended the
        last chunk of one transmission to the first chunks of another and installed the result (tests/sim
        seed 1129: a snapshot up to 92, the log 438 -> 92). raftctl's leader tags each chunk with its
        snapshot (index, term, size) and byte offset; a chunk from an untagged (older) leader is taken as
        pysyncobj takes it.

        A chunk past a gap in the transmission, or the first chunk again while more of the same snapshot is
        held, keeps what is held and asks the leader to go on from its end (``_ask_resume``): with one chunk
        of five lost or late in every transmission, starting over from the first never completed one
        (tests/sim at 1,500 steps)."""
        offset = message.get("snapshot_offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            self._snapshot_rx = None
            return True
        try:
            size = len(serialized[0] or b"")
        except TypeError:
            return False
        key = (node, message.get("term"), message.get("snapshot_index"), message.get("snapshot_term"),
               message.get("snapshot_size"))
        rx = self.__dict__.get("_snapshot_rx")
        held = rx[1] if rx is not None and rx[0] == key else None   # bytes held of this very snapshot
        if held is not None and held == offset:
            rx[1] += size   # type: ignore[index]
            return True
        if is_first and offset == 0 and not (held is not None and held > size):
            self._snapshot_rx = [key, size]
            return True
        if held is not None and (offset > held or offset == 0):  # a chunk lost or late, or the leader started over
            self._ask_resume(node, message, held)
        elif rx is None and offset > 0:  # its start never came (or was dropped): ask for it
            self._ask_resume(node, message, 0)
        log.debug("snapshot chunk from %s (snapshot %s, offset %d) does not continue the transmission being "
                  "received; dropped", node, message.get("snapshot_index"), offset)
        return False

    def _ask_resume(self, node: Any, message: dict, offset: int) -> None:
        """Ask the leader to send its snapshot from ``offset`` (what this follower holds of it), at most once per
        RESUME_ASK_S for the same offset: a burst of chunks past one gap asks once. An older leader ignores the
        answer (success and reset false change nothing there) and starts over when its last chunk's answer does
        not come, as before."""
        now = _now()
        asked = (message.get("term"), message.get("snapshot_index"), message.get("snapshot_term"),
                 message.get("snapshot_size"), offset)
        last = self.__dict__.get("_resume_asked")
        if last is not None and last[0] == asked and now - last[1] < RESUME_ASK_S:
            return
        self._resume_asked = (asked, now)
        self.snapshot_resumes_asked += 1
        self._reply(node, None, success=False, next_idx=self._SyncObj__raftLog[-1][1] + 1, extra={
            "snapshot_resume": offset, "snapshot_index": message.get("snapshot_index"),
            "snapshot_term": message.get("snapshot_term"), "snapshot_size": message.get("snapshot_size")})

    def _receive_chunk(self, node: Any, message: dict, transmission: str) -> list | None:
        """One chunk of an entry too large for one message; the entry once the last chunk is in."""
        data = message.get("data", b"")
        if transmission == "start":
            self._SyncObj__recvTransmission = data
        elif transmission in ("process", "finish") and isinstance(self._SyncObj__recvTransmission, bytes):
            self._SyncObj__recvTransmission += data
        else:
            log.warning("append_entries: chunk %r out of order from %s; dropped", transmission, node)
            self._SyncObj__recvTransmission = ""
            return None
        if transmission != "finish":
            self._reply(node, None, success=False, next_idx=self._SyncObj__raftLog[-1][1] + 1)
            return None
        try:
            entry = psyncobj.pickle.loads(self._SyncObj__recvTransmission)
        finally:
            self._SyncObj__recvTransmission = ""
        return [entry]

    def _append(self, node: Any, message: dict, entries: list, leader_commit: int) -> None:
        raft_log = self._SyncObj__raftLog
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        first, last = raft_log[0][1], raft_log[-1][1]
        commit = self._SyncObj__raftCommitIndex
        # Nothing at or below this is ever truncated: committed (and applied: after a crash the persisted
        # commit index can lag the snapshot pysyncobj restored from).
        protected = max(commit, self._SyncObj__raftLastApplied)

        if prev_idx is None or prev_idx > last:  # missing entries: ask for what follows our last one
            self._reply(node, message, success=False, next_idx=last + 1, reset=True,
                        conflict_term=None, conflict_index=last + 1)
            return
        if entries and (entries[0][1] != prev_idx + 1 or entries[-1][1] != prev_idx + len(entries)):
            log.error("append_entries from %s: entries %s..%s do not follow prevLogIdx %s; refused",
                      node, entries[0][1], entries[-1][1], prev_idx)
            self._reply(node, message, success=False, next_idx=last + 1, refused=True)
            return
        # prev_idx below our first entry: those entries are compacted, hence applied, hence committed, and the
        # leader of this term holds the same ones (Leader Completeness): the prefix matches.
        if prev_idx >= first:
            my_term = raft_log[prev_idx - first][2]
            if my_term != prev_term:
                if prev_idx <= protected:
                    self._refuse(node, message, prev_idx, my_term, prev_term)
                    return
                hint = prev_idx  # first index we hold for my_term, never at or below the commit index
                while hint - 1 > protected and hint - 1 >= first and raft_log[hint - 1 - first][2] == my_term:
                    hint -= 1
                self._reply(node, message, success=False, next_idx=hint, reset=True,
                            conflict_term=my_term, conflict_index=hint)
                return

        # Skip what we already hold; truncate only from the first conflicting entry.
        i, n = 0, len(entries)
        while i < n:
            idx, entry_term = entries[i][1], entries[i][2]
            if idx < first:
                i += 1
                continue
            if idx > last:
                break
            my_term = raft_log[idx - first][2]
            if my_term != entry_term:
                if idx <= protected:
                    self._refuse(node, message, idx, my_term, entry_term)
                    return
                self._truncate_from(idx)
                break
            i += 1
        new = entries[i:]
        if new:
            batch = getattr(raft_log, "batch", None)
            with batch() if batch is not None else contextlib.nullcontext():
                for entry in new:
                    raft_log.add(*entry)
            if self._SyncObj__conf.dynamicMembershipChange:
                for entry in new:
                    request = self._SyncObj__parseChangeClusterRequest(entry[0])
                    if request is not None:
                        self._SyncObj__doChangeCluster(request)

        last_new = prev_idx + n
        if leader_commit > commit:
            commit = min(leader_commit, last_new)
            if commit > self._SyncObj__raftCommitIndex:
                self._SyncObj__raftCommitIndex = commit
                raft_log.setRaftCommitIndex(commit)
        self._reply(node, message, success=True, next_idx=last_new + 1)

    def _truncate_from(self, idx: int) -> None:
        """Delete entries idx.. (all above the commit index), undoing the membership changes among them."""
        if self._SyncObj__conf.dynamicMembershipChange:
            for entry in reversed(self._SyncObj__getEntries(idx)):
                request = self._SyncObj__parseChangeClusterRequest(entry[0])
                if request is not None:
                    self._SyncObj__doChangeCluster(request, reverse=True)
        log.info("replacing a conflicting log suffix from index %d (last %d, commit %d)",
                 idx, self._SyncObj__raftLog[-1][1], self._SyncObj__raftCommitIndex)
        self._SyncObj__deleteEntriesFrom(idx)

    def _refuse(self, node: Any, message: dict, idx: int, mine: int, theirs: int) -> None:
        log.error("append_entries from %s (term %s) conflicts at index %d (term %s here, %s in the message) at or "
                  "below the commit index %d: refused, nothing truncated (a committed entry would be lost)",
                  node, message.get("term"), idx, mine, theirs, self._SyncObj__raftCommitIndex)
        self._reply(node, message, success=False, next_idx=self._SyncObj__raftLog[-1][1] + 1, refused=True)

    def _reply(self, node: Any, message: dict | None, *, success: bool, next_idx: int, reset: bool = False,
               conflict_term: int | None = None, conflict_index: int | None = None, refused: bool = False,
               extra: dict[str, Any] | None = None) -> None:
        reply: dict[str, Any] = {"type": "next_node_idx", "next_node_idx": next_idx, "reset": reset,
                                 "success": success, "term": self._SyncObj__raftCurrentTerm, **(extra or {})}
        if message is not None and "seq" in message:
            reply["seq"] = message["seq"]
        if conflict_index is not None:
            reply["conflict_index"] = conflict_index
            reply["conflict_term"] = conflict_term
        if refused:
            reply["refused"] = True
        self._SyncObj__transport.send(node, reply)

    # ------------------------------------------------------------------ leader
    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> bool:  # noqa: N802 (pysyncobj's)
        """pysyncobj's membership change; the leader also forgets its progress for the node added or removed.
        A replica removed and added again within one term kept its old progress (REPLICATE, a message in
        flight): the first resend fell back to matchIndex + 1 = 1 (tests/sim seed 1030 --members)."""
        changed = bool(_SyncObj._SyncObj__doChangeCluster(self, request, reverse))
        if changed and self._repair:
            table = self.__dict__.get("_replication_progress", {})
            for node in [n for n in table if getattr(n, "id", n) == request[1]]:
                del table[node]
        return changed

    def _progress(self, node: Any) -> _Progress:
        table = self.__dict__.setdefault("_replication_progress", {})
        term = self._SyncObj__raftCurrentTerm
        pr = table.get(node)
        if pr is None or pr.term != term:
            pr = table[node] = _Progress(term)
        return pr

    def replication_progress(self) -> dict[str, dict[str, Any]]:
        """Per-follower progress (read-only view, for status and tests)."""
        table = self.__dict__.get("_replication_progress", {})
        next_idx, match_idx = self._SyncObj__raftNextIndex, self._SyncObj__raftMatchIndex
        return {getattr(n, "id", str(n)): {"state": pr.state, "inflight": len(pr.inflight),
                                           "next": next_idx.get(n), "match": match_idx.get(n)}
                for n, pr in list(table.items())}

    def _on_append_reply(self, node: Any, message: dict) -> bool:
        """Account for one answer; True when it came from this term (worth sending more at once)."""
        next_idx, match_idx = self._SyncObj__raftNextIndex, self._SyncObj__raftMatchIndex
        if node not in next_idx or node not in match_idx:
            return False
        term = message.get("term")
        if term is not None and term > self._SyncObj__raftCurrentTerm:
            # A peer is in a newer term: step down, as Raft says. Without this a peer whose election failed
            # (its vote requests lost) stayed in a newer term than the leader's, ignoring its AppendEntries,
            # while pre-vote kept it from ever starting the election that would let it rejoin.
            log.info("stepping down: %s answered from term %d (ours %d)", node, term, self._SyncObj__raftCurrentTerm)
            self._SyncObj__setCurrentTerm(term, None)
            self._SyncObj__setState(_FOLLOWER)
            self._SyncObj__raftLeader = None
            return False
        if term is not None and term != self._SyncObj__raftCurrentTerm:
            return False  # answers a leader of another term
        self._SyncObj__lastResponseTime[node] = _now()
        pr = self._progress(node)
        if "snapshot_resume" in message:
            self._resume_snapshot(node, message, pr)
            return True
        success, hinted = message["success"], message["next_node_idx"]
        leader_last = self._SyncObj__raftLog[-1][1]
        seq = message.get("seq")

        if success:  # a success is never stale within a term: the follower holds our entries up to it
            if hinted - 1 > match_idx[node]:
                match_idx[node] = min(hinted - 1, leader_last)
            if next_idx[node] < match_idx[node] + 1:
                next_idx[node] = match_idx[node] + 1
            if seq is None:
                pr.reset(REPLICATE)
                return True
            while pr.inflight and pr.inflight[0][0] <= seq:
                pr.inflight.popleft()
            pr.success_seq = max(pr.success_seq, seq)
            if pr.state != REPLICATE and seq >= pr.reset_seq:
                pr.state = REPLICATE
            return True

        if seq is None:  # an old follower: its hint, never below what it acknowledged
            if message["reset"]:
                next_idx[node] = max(min(hinted, leader_last + 1), match_idx[node] + 1)
                pr.reset(PROBE)
            return True
        while pr.inflight and pr.inflight[0][0] <= seq:
            pr.inflight.popleft()
        if seq < pr.reset_seq or seq < pr.success_seq:
            return True  # answers a message sent before the last reset or older than the last success
        if message.get("refused"):
            log.error("follower %s refused AppendEntries (seq %d): its committed log differs from ours", node, seq)
            return True
        if not message["reset"]:
            return True
        hint = message.get("conflict_index", hinted)
        next_idx[node] = max(min(hint, leader_last + 1), match_idx[node] + 1)
        pr.reset(PROBE)
        return True

    # ------------------------------------------------------------------ group commit (leader)
    # pysyncobj's leader appends each proposed entry with its own fsync and sends AppendEntries after each
    # one, then again with the new commit index once it applies. In a tick, raftctl appends all the entries
    # proposed since the last tick in one journal batch (one fsync) and sends each follower one message
    # carrying them and the commit index, written but before that fsync (session 32; the followers sync theirs
    # while the leader syncs its own): the leader counts itself for an entry only at a later tick's commit
    # check, after its own fsync returned.
    #
    # A batch costs about the same whatever it holds: the leader's fsync, one AppendEntries to each follower, their
    # fsyncs and answers, the commit index sent on, a tick on every replica for each. Under load the leader used to
    # append whatever had arrived at every tick, ~9 writes a batch with 32 clients, and the batches were half of
    # the replicas' CPU per write (bench: 0.66, 0.42, 0.30 ms per write at 16, 32, 64 clients). So after a batch of
    # at least GROUP_COMMIT_MIN_ENTRIES entries (proposals from several replicas at once) the next one waits until
    # GROUP_COMMIT_WAIT_S after it; a lone writer's batches hold one entry and never wait.
    _defer_sends = False
    _send_pending = False
    _holding = False          # this tick holds the proposals queued for the leader (see _hold_appends)
    _last_batch_at = float("-inf")
    _last_batch_entries = 0
    appends_batched = 0   # journal batches of the leader's proposals (one fsync each)
    entries_batched = 0   # entries appended in them
    appends_held = 0      # leader ticks that held queued proposals for the next batch
    snapshot_resumes = 0          # leader: snapshot transmissions resumed at a follower's offset
    snapshot_resumes_asked = 0    # follower: times it asked the leader to resume a snapshot
    _resume_asked: tuple[tuple, float] | None = None

    def _hold_appends(self) -> float:
        """At a tick's start: whether this tick holds the leader's queued proposals, and for how long (seconds;
        0: it appends them). Decided before pysyncobj's tick runs, so its poll can wake when the hold ends."""
        self._holding = False
        if self._SyncObj__raftState != _LEADER or self._last_batch_entries < GROUP_COMMIT_MIN_ENTRIES:
            return 0.0
        left = self._last_batch_at + GROUP_COMMIT_WAIT_S - _now()
        if left <= 0:
            return 0.0
        self._holding = True
        return left

    def _checkCommandsToApply(self) -> None:  # noqa: N802 (pysyncobj's name)
        if not self._repair:
            return _SyncObj._checkCommandsToApply(self)
        if self._holding and self._SyncObj__raftState == _LEADER:
            self.appends_held += 1
            self._flush_deferred_sends()
            return None
        raft_log = self._SyncObj__raftLog
        batch = getattr(raft_log, "batch", None)
        before = len(raft_log)
        try:
            with batch() if batch is not None else contextlib.nullcontext():
                _SyncObj._checkCommandsToApply(self)
                if len(raft_log) > before and self._SyncObj__raftState == _LEADER:
                    # the new entries go out before this leader's own fdatasync (Raft thesis 10.2.1): the followers
                    # write and sync theirs meanwhile. It counts itself for them only at a later tick's commit
                    # check, after the sync below returned (this thread reads the followers' answers, too)
                    self._flush_deferred_sends()
        finally:
            added = len(raft_log) - before
            if added > 0:
                self._last_batch_at, self._last_batch_entries = _now(), added
                self.appends_batched += 1
                self.entries_batched += added
            self._flush_deferred_sends()
        return None

    def _flush_deferred_sends(self) -> None:
        self._defer_sends = False
        if self._send_pending:
            self._send_pending = False
            if self._SyncObj__raftState == _LEADER:
                self._SyncObj__sendAppendEntries()

    def _SyncObj__sendAppendEntries(self) -> None:  # noqa: N802 (pysyncobj's name)
        if not self._repair:
            return _SyncObj._SyncObj__sendAppendEntries(self)
        if self._defer_sends:
            self._send_pending = True
            return None
        conf = self._SyncObj__conf
        start = _now()
        period = conf.appendEntriesPeriod
        self._SyncObj__newAppendEntriesTime = start + period
        connected = self._SyncObj__connectedNodes
        for node in self._replication_targets():
            pr = self._progress(node)
            if node not in connected:
                self._SyncObj__serializer.cancelTransmisstion(node)
                if pr.inflight or pr.state == REPLICATE:
                    pr.reset(PROBE)
                continue
            self._send_to(node, pr, start, period)
        return None

    def _replication_targets(self) -> set[Any]:
        """Whom the leader sends AppendEntries to: the voters, pysyncobj's read-only nodes (and, in
        membership.py, the learners)."""
        return self._SyncObj__otherNodes | self._SyncObj__readonlyNodes

    def _send_to(self, node: Any, pr: _Progress, start: float, period: float) -> None:
        raft_log = self._SyncObj__raftLog
        next_idx = self._SyncObj__raftNextIndex
        match_idx = self._SyncObj__raftMatchIndex
        if node not in next_idx:
            next_idx[node] = raft_log[-1][1] + 1
            match_idx.setdefault(node, 0)
        resend_after = max(period, 0.05)
        sent = False
        while True:
            now = _now()
            nxt = next_idx[node]
            if nxt <= raft_log[0][1] == 1 and not self._SyncObj__serializer.exists():
                # Not compacted: every log starts with pysyncobj's initial no-op (index 1, term 0), so probe
                # from entry 2; a snapshot that does not exist was asked for forever ("no snapshot file to
                # send": tests/sim seed 1030 --members, a replica removed and added again).
                next_idx[node] = nxt = 2
            if nxt <= raft_log[0][1]:  # compacted: the follower needs the snapshot
                pr.state = SNAPSHOT
                if not self._send_snapshot_chunk(node):
                    return
                if next_idx[node] > raft_log[0][1]:  # snapshot sent: wait for its answer
                    pr.reset(PROBE)
                    pr.inflight.append((pr.seq, now))
                    pr.last_send = now
                    return
                if now - start > period:
                    return
                continue
            if pr.state == SNAPSHOT:
                pr.reset(PROBE)
            last = raft_log[-1][1]
            commit = self._SyncObj__raftCommitIndex
            if pr.inflight and now - pr.inflight[0][1] > (resend_after if pr.state == PROBE else 5 * resend_after):
                if pr.state == REPLICATE:  # answers lost: probe again from what the follower acknowledged
                    next_idx[node] = match_idx[node] + 1
                    nxt = next_idx[node]
                pr.reset(PROBE)
            window_open = not pr.inflight if pr.state == PROBE else len(pr.inflight) < MAX_INFLIGHT
            if nxt <= last and window_open:
                entries = self._SyncObj__getEntries(nxt, MAX_ENTRIES_PER_MESSAGE,
                                                    self._SyncObj__conf.appendEntriesBatchSizeBytes)
                if not entries:
                    return
                self._send_entries(node, pr, nxt, entries, now)
                if pr.state == REPLICATE:
                    next_idx[node] = entries[-1][1] + 1
                    sent = True
                    if _now() - start > period:
                        return
                    continue
                return
            due = now - pr.last_send >= period or pr.sent_commit != commit
            if not sent and due and (pr.state == REPLICATE or window_open):
                self._send_entries(node, pr, nxt, [], now)  # heartbeat (and, in PROBE, the probe)
            return

    def _send_entries(self, node: Any, pr: _Progress, nxt: int, entries: list, now: float) -> None:
        prev_idx, prev_term = self._SyncObj__getPrevLogIndexTerm(nxt)
        pr.seq += 1
        base = {"type": "append_entries", "term": self._SyncObj__raftCurrentTerm,
                "commit_index": self._SyncObj__raftCommitIndex, "prevLogIdx": prev_idx, "prevLogTerm": prev_term,
                "seq": pr.seq}
        transport = self._SyncObj__transport
        batch_bytes = self._SyncObj__conf.appendEntriesBatchSizeBytes
        if len(entries) == 1 and len(entries[0][0]) >= batch_bytes:  # one large entry: in chunks
            data = psyncobj.pickle.dumps(entries[0])
            # (pysyncobj decides 'finish' on the entry's length, not the pickled one: a chunk early when the
            # pickling overhead crosses a chunk boundary.) The pickled entry is longer than one chunk.
            for pos in range(0, len(data), batch_bytes):
                kind = "start" if pos == 0 else ("finish" if pos + batch_bytes >= len(data) else "process")
                transport.send(node, dict(base, transmission=kind, data=data[pos:pos + batch_bytes]))
                if node not in self._SyncObj__connectedNodes:
                    break
        else:
            transport.send(node, dict(base, entries=entries))
        if entries:
            pr.inflight.append((pr.seq, now))
        elif pr.state == PROBE:
            pr.inflight.append((pr.seq, now))
        pr.last_send = now
        pr.sent_commit = self._SyncObj__raftCommitIndex

    def _snapshot_boundary(self) -> tuple:
        """The last entry the leader's snapshot holds (the log's second entry once compacted): what its chunks are
        tagged with and what a follower's request to resume is checked against."""
        raft_log = self._SyncObj__raftLog
        return raft_log[1] if len(raft_log) > 1 else raft_log[0]

    def _resume_snapshot(self, node: Any, message: dict, pr: _Progress) -> None:
        """A follower asks for the snapshot from an offset (``_ask_resume``): go on from there if it is the
        snapshot this leader sends now (same boundary index and term, same size) and the follower has not
        acknowledged it already (a late request: its answer to the last chunk came first)."""
        boundary = self._snapshot_boundary()
        offset = message.get("snapshot_resume")
        if (not isinstance(offset, int) or isinstance(offset, bool) or message.get("snapshot_index") != boundary[1]
                or message.get("snapshot_term") != boundary[2]
                or self._SyncObj__raftMatchIndex.get(node, 0) >= boundary[1]):
            return
        resume = getattr(self._SyncObj__serializer, "resume", None)
        if resume is None or not resume(node, offset, message.get("snapshot_size")):
            return
        self.snapshot_resumes += 1
        log.info("resuming the snapshot up to index %d for %s at offset %d of %d", boundary[1], node, offset,
                 message.get("snapshot_size"))
        self._SyncObj__raftNextIndex[node] = self._SyncObj__raftLog[0][1]   # _send_to: the snapshot, from the offset
        pr.reset(PROBE)

    def _send_snapshot_chunk(self, node: Any) -> bool:
        """pysyncobj's snapshot transmission, one chunk; False when nothing could be sent."""
        serializer = self._SyncObj__serializer
        data = serializer.getTransmissionData(node)
        boundary = self._snapshot_boundary()
        message = {"type": "append_entries", "term": self._SyncObj__raftCurrentTerm,
                   "commit_index": self._SyncObj__raftCommitIndex, "serialized": data,
                   "snapshot_index": boundary[1], "snapshot_term": boundary[2]}
        position = getattr(serializer, "last_sent", None)
        if data is not None and position is not None:  # which transmission, and where in it (see _chunk_continues)
            message["snapshot_offset"], message["snapshot_size"] = position
        self._SyncObj__transport.send(node, message)
        if data is None or node not in self._SyncObj__connectedNodes:
            return False
        if data[2]:  # the last chunk
            self._SyncObj__raftNextIndex[node] = self._SyncObj__raftLog[1][1] + 1
        return True
