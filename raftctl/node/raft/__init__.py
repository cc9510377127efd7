"""pysyncobj glue: exactly one replicated method taking bytes.

Only this module talks to pysyncobj. It fixes three of pysyncobj 0.3.17's sharp
edges (DESIGN §11):

* durability (journal.py, snapshot.py, on the file layer of disk.py): the journal
  is a checksummed append-only log synced before pysyncobj acknowledges an append
  (one fsync per batch), compacted and its term/vote file written by write-new,
  fsync, rename, fsync-dir; a torn tail is cut back on open.
* snapshots are canonical CBOR (our state plus pysyncobj's two boundary entries
  and the cluster), never pickle, encoded in a forked child off the tick thread,
  fsync'd, renamed, the directory fsync'd; received ones the same before they count.
* the replicated method catches everything: an exception there would wedge
  ``last_applied`` on every replica.
"""
from __future__ import annotations

from raftctl.node.raft import compat  # noqa: F401  (first: asserts the pinned pysyncobj and its private names)

import logging
import os
import threading
import time
from typing import Any, Callable

import cbor2
import pysyncobj.journal as pjournal
import pysyncobj.serializer as pserializer
import pysyncobj.syncobj as psyncobj
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode

from raftctl.node.raft.disk import Disk, OsDisk
from raftctl.node.raft.journal import CheckedJournal, write_file_atomically
from raftctl.node.raft.membership import Membership
from raftctl.node.raft.snapshot import RestoreInBackground, SnapshotFiles, restore_state
from raftctl.node.raft.transfer import choose_target, node_key, ready_to_ask
from raftctl.node.raft import frames, wire
from raftctl.statemachine.apply import Rejection, Result, apply_entry
from raftctl.statemachine.state import State

log = logging.getLogger("raftctl.raft")

SNAPSHOT_FORMAT = 1


# RaftNode registers the Disk of its journal file here just before SyncObj.__init__ builds the journal.
_JOURNAL_DISKS: dict[str, Disk] = {}


def _create_journal(journal_file: str | None = None) -> pjournal.Journal:
    if journal_file is None:
        return pjournal.MemoryJournal()
    return CheckedJournal(journal_file, _JOURNAL_DISKS.pop(journal_file, None))


def _create_serializer(fileName: str | None, transmissionBatchSize: int, tryUseFork: bool,  # noqa: N803
                       serializer: Any, deserializer: Any, serializeChecker: Any) -> Any:
    """RaftNode passes its SnapshotFiles as ``serializer``: use it whole instead of pysyncobj's."""
    if isinstance(serializer, SnapshotFiles):
        return serializer
    return pserializer.Serializer(fileName, transmissionBatchSize, tryUseFork, serializer, deserializer,
                                  serializeChecker)


# pysyncobj builds its journal and its snapshot serializer through these module-level names.
psyncobj.createJournal = _create_journal
psyncobj.Serializer = _create_serializer

# Every Raft message leaves in zlib's stored form, readable by any pysyncobj, instead of compressed (wire.py).
wire.install()
# A Raft port reads little from a peer until it has proven the cluster secret, and no peer holds the tick
# thread (frames.py).
frames.install()


def _raft_timing(text: str | None) -> tuple[float, float, float]:
    """(raftMinTimeout, raftMaxTimeout, appendEntriesPeriod); RAFTCTL_RAFT_TIMING="min,max,heartbeat" is for
    benchmarks comparing settings back to back (bench/failover.py), not an operator knob."""
    if not text:
        # Leader kill -9 -> next committed write (bench/failover.py, 3 replicas, loaded 2-core machine): with
        # 0.4-1.2 s and a 0.1 s heartbeat p50 0.95-1.31 s, p99 1.34-2.46 s; with 0.3-0.6 s and 0.075 s p50
        # 0.51-0.73 s, p99 1.34-2.40 s (20 trials; one split vote each, the rest <= 0.91 s). Pre-vote keeps a
        # follower that misses heartbeats (a paused or loaded one) from deposing the leader; no new term in
        # 60 s idle with either (docs/raft.md, Leader changes). Since then (replication.py: a follower whose
        # leader's connection closes campaigns after 0-0.3 s, a candidate not elected retries after 0.075-0.375
        # s; client.py: no fixed pause), 2 x 40 trials alternated with the old code: p50 0.83 -> 0.23 s, p99
        # 1.39 -> 0.50 s, max 1.42 -> 0.53 s. (test_raft_replication's loopback tests pin their own timing,
        # so this heartbeat no longer decides whether its pysyncobj-alone control test can pass.)
        return 0.3, 0.6, 0.075
    lo, hi, beat = (float(x) for x in text.split(","))
    if not (0 < 3 * beat < lo < hi):
        raise ValueError(f"RAFTCTL_RAFT_TIMING={text!r}: need 0 < 3 * heartbeat < min < max")
    return lo, hi, beat


RAFT_TIMING = _raft_timing(os.environ.get("RAFTCTL_RAFT_TIMING"))
TIMING_PINNED = bool(os.environ.get("RAFTCTL_RAFT_TIMING"))   # an explicit timing does not follow the cell

ELECTION_S_PER_MACHINE = 0.0003   # the election timeout's floor grows 0.3 ms per machine in the table ...
ELECTION_MIN_CAP_S = 3.0          # ... up to 3 s (max: twice the floor, as the default's 0.3-0.6 s)
LEADER_FALLBACK_S = 3.0           # a leader no majority answered for this long steps down (pysyncobj's
                                  # leaderFallbackTimeout); never sooner than the cell's longest election timeout


def cell_election_timeout(machines: int, base: tuple[float, float, float] = RAFT_TIMING) -> tuple[float, float]:
    """The election timeout (min, max) for a cell of ``machines`` (pure): the base (0.3-0.6 s) up to 1,000
    machines, then a floor of 0.3 ms per machine, at most 3 s (10,000 machines: 3-6 s), with the base's max/min
    ratio. bench/scale.py at
    3,000 simulated machines on this 2-core machine: with 0.3-0.6 s the loaded leader missed its heartbeats for
    more than 0.3 s often enough to lose leadership every ~2.5 s (term 97 after 4 minutes, every election sending
    all agents to a new leader); with 1-2 s, 0 elections at 3,000 and term 6 through 10,000 registrations. The
    price: a dead leader of a large cell is replaced after 1-2 s instead of 0.3-0.6 s. The cap was 1 s until session
    11: at 10,000 machines the leader's process was held 2.2-2.5 s at a time (a cyclic GC pass over every
    connection's objects holds the GIL, the tick thread's heartbeats too) and leaderships ended every 10-30 s
    while registering and placing (terms 1 -> 12, 8 -> 16). A killed leader is still replaced in well under a
    second: its followers see its connections close (replication.py), they do not wait out this timeout."""
    lo, hi, _ = base
    floor = min(max(lo, machines * ELECTION_S_PER_MACHINE), max(lo, ELECTION_MIN_CAP_S))
    return round(floor, 3), round(floor * (hi / lo), 3)


# A seeded log starts after these two no-op boundary entries. Index 3 (not 1) so that a replica
# added later with an empty log (whose only entry is pysyncobj's no-op at index 1, term 0) cannot
# match the leader's log start: the leader sends it the whole snapshot instead of entries.
SEED_ENTRIES = ((psyncobj._bchr(psyncobj._COMMAND_TYPE.NO_OP), 3, 0), (psyncobj._bchr(psyncobj._COMMAND_TYPE.NO_OP), 2, 0))
RAFT_FILES = ("raft.journal", "raft.journal.meta", "raft.snapshot")


def seed_data_dir(data_dir: str, state_bytes: bytes, cluster: list[str]) -> str:
    """Make an empty data dir start from ``state_bytes`` (a restored backup) as a member of ``cluster``.

    Writes a pysyncobj snapshot file in our format, as log compaction would have, whose log ends at
    :data:`SEED_ENTRIES`. Every replica of a new cluster seeded with the same bytes starts from the same
    state and the same log position, so they agree from the first entry. Refuses a dir that already
    holds Raft files: a replica's own log must never be overwritten.
    """
    present = [f for f in RAFT_FILES if os.path.exists(os.path.join(data_dir, f))]
    if present:
        raise FileExistsError(f"{data_dir} already holds Raft state ({', '.join(present)}); restore only into "
                              "the empty data dir of a replica that has never started")
    State.restore(state_bytes)  # refuse what would not load
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "raft.snapshot")
    disk = OsDisk()
    try:
        write_file_atomically(disk, path, _snapshot_bytes(SEED_ENTRIES[0], SEED_ENTRIES[1], cluster, state_bytes),
                              tmp_suffix=".part")
    finally:
        disk.close()
    return path


def _snapshot_bytes(entry1: tuple, entry0: tuple, cluster: Any, state_bytes: bytes,
                    learners: list[str] | None = None) -> bytes:
    obj = {"format": SNAPSHOT_FORMAT, "entries": [[bytes(e[0]), e[1], e[2]] for e in (entry1, entry0)],
           "cluster": sorted({n.id if hasattr(n, "id") else str(n) for n in cluster}), "state": state_bytes}
    if learners:   # only when there are some: the bytes of a snapshot without are unchanged (membership.py)
        obj["learners"] = sorted(learners)
    return cbor2.dumps(obj, canonical=True)


class RaftNode(RestoreInBackground, Membership, SyncObj):
    """A control replica's Raft member holding the state machine."""

    def __init__(self, self_addr: str, peers: list[str], data_dir: str, secret: str | None,
                 on_applied: Callable[[], None], on_state_changed: Callable[[int, int], None] | None = None,
                 *, dynamic_membership: bool = True, compact_entries: int = 20000,
                 transport: Any = None, conf_overrides: dict[str, Any] | None = None,
                 repair: bool = True, disk: Disk | None = None, join: bool = False) -> None:
        # repair=False runs pysyncobj's own AppendEntries handling (replication.py), for the simulation.
        self._init_replication(repair)
        # join: added to a running cluster (`raftctl server --join`): no vote until its log makes it a voter
        self._init_membership(join, self_addr, peers)
        # transport (a pysyncobj Transport; None = TCP) and conf_overrides (SyncObjConf fields, e.g.
        # autoTick=False) exist for the deterministic simulation in tests/sim; production passes neither.
        self.state = State()
        self.lock = threading.RLock()
        self._on_applied = on_applied
        # disk: the file layer under the journal, meta and snapshot (None = the real one; the simulation
        # passes a disk that drops unsynced writes on a crash).
        self._disk: Disk = disk if disk is not None else OsDisk()
        if disk is None:
            os.makedirs(data_dir, exist_ok=True)
        journal_file = os.path.join(data_dir, "raft.journal")
        _JOURNAL_DISKS[journal_file] = self._disk
        conf_batch = SyncObjConf().logCompactionBatchSize
        self._snapshots = SnapshotFiles(os.path.join(data_dir, "raft.snapshot"), self._disk,
                                        self._encode_snapshot, self._decode_snapshot, conf_batch,
                                        # a received snapshot is restored beside the tick thread
                                        # (RestoreInBackground; with repair only: pysyncobj's own
                                        # handling expects it loaded at the last chunk)
                                        prepare=self._restore_snapshot if repair else None,
                                        adopt=self._adopt_snapshot if repair else None,
                                        describe=self._describe_snapshot if repair else None)
        host = self_addr.rsplit(":", 1)[0]
        conf = SyncObjConf(
            password=secret,
            bindAddress=self_addr if host else None,
            journalFile=journal_file,
            fullDumpFile=os.path.join(data_dir, "raft.snapshot"),
            serializer=self._snapshots,  # taken whole by _create_serializer
            deserializer=self._decode_snapshot,
            appendEntriesUseBatch=False,
            dynamicMembershipChange=dynamic_membership,
            leaderFallbackTimeout=LEADER_FALLBACK_S,
            raftMinTimeout=RAFT_TIMING[0],
            raftMaxTimeout=RAFT_TIMING[1],
            appendEntriesPeriod=RAFT_TIMING[2],
            # pysyncobj drops a link that received nothing for connectionTimeout (follower<->follower
            # links are idle) and reconnects only every connectionRetryTime (5 s by default); a follower
            # with no live link cannot start an election, so a leader kill cost up to ~5 s. Keep idle
            # links (TCP keepalive finds dead peers) and reconnect fast: leader kill -> commit p99 ~1.3 s.
            connectionTimeout=60.0,
            connectionRetryTime=0.25,
            logCompactionMinEntries=compact_entries,
            logCompactionMinTime=120,
            onStateChanged=on_state_changed,
            commandsWaitLeader=True,
            tcp_keepalive=(2, 1, 3),
        )
        for key, value in (conf_overrides or {}).items():
            if not hasattr(conf, key):
                raise TypeError(f"conf_overrides: SyncObjConf has no field {key!r}")
            setattr(conf, key, value)
        self._base_timing = (conf.raftMinTimeout, conf.raftMaxTimeout)   # what follow_cell scales from
        try:
            super().__init__(self_addr, peers, conf, transport=transport)
        finally:
            _JOURNAL_DISKS.pop(journal_file, None)
        self.addOnTickCallback(self._cache_status)  # raft_status() reads what the tick thread computed
        self.addOnTickCallback(self._transfer_tick)

    # -- leadership transfer on a graceful stop (transfer.py) ----------------
    _transfer_job: dict[str, Any] | None = None
    TRANSFER_RESEND_S = 0.5   # TimeoutNow again if still leading after this (the message or the election lost)

    def transfer_leadership(self, timeout: float = 2.0) -> str | None:
        """Hand leadership to the most up-to-date follower and wait until another node leads (blocking: call
        it off the tick thread and off the event loop). Returns the new leader's address, or None when this
        node does not lead, has no connected voter, or ``timeout`` passed. The caller stops proposing first:
        entries proposed meanwhile delay the transfer (they must be committed and on the target first)."""
        if not self._isLeader() or not self._SyncObj__otherNodes:
            return None
        job: dict[str, Any] = {"deadline": psyncobj.monotonicTime() + timeout, "done": threading.Event(),
                               "result": None, "target": None, "sent_at": None, "started": time.monotonic()}
        self._transfer_job = job
        job["done"].wait(timeout + 1.0)
        self._transfer_job = None
        return job["result"]

    def _SyncObj__onMessageReceived(self, node: Any, message: dict) -> None:  # noqa: N802 (pysyncobj's name)
        """A command a follower forwards (``apply_command``) while this leader hands leadership over is refused
        with pysyncobj's NOT_LEADER, not appended: an entry appended after the target acknowledged the log would
        leave the target's log behind the others' and cost its election (the target lost, the transfer chose
        again). The follower answers its write "not applied" and proposes it again to the next leader
        (http.propose_here); the leader's own writes are held by Replica.propose meanwhile."""
        if self._transfer_job is not None and message.get("type") == "apply_command" and self._isLeader():
            if "request_id" in message:
                self._SyncObj__transport.send(node, {"type": "apply_command_response",
                                                     "request_id": message["request_id"],
                                                     "error": psyncobj.FAIL_REASON.NOT_LEADER})
            return None
        return super()._SyncObj__onMessageReceived(node, message)

    def _transfer_tick(self) -> None:
        """On the tick thread (pysyncobj's state and transport are not thread-safe)."""
        job = self._transfer_job
        if job is None or job["done"].is_set():
            return
        now = psyncobj.monotonicTime()
        if not self._isLeader():
            leader = self._getLeader()
            if leader is not None and leader != self.selfNode:
                job["result"] = node_key(leader)
                log.info("leadership transferred to %s in %.0f ms", job["result"],
                         (time.monotonic() - job["started"]) * 1000)
                job["done"].set()
                return
        if now > job["deadline"]:
            log.warning("leadership transfer gave up after %.1f s (target %s)", time.monotonic() - job["started"],
                        job["target"])
            job["done"].set()
            return
        if not self._isLeader():
            return  # stepped down: wait to hear who leads
        if job["sent_at"] is not None and now - job["sent_at"] < self.TRANSFER_RESEND_S:
            return
        match = self._SyncObj__raftMatchIndex
        target = choose_target(self._SyncObj__otherNodes, self._SyncObj__connectedNodes, match)
        if target is None:  # nobody to hand over to (the whole cluster stopping): do not wait for the deadline
            log.info("leadership transfer: no connected voter; stopping without one")
            job["done"].set()
            return
        job["target"] = node_key(target)
        if ready_to_ask(target, match, self._SyncObj__raftLog[-1][1], self._SyncObj__raftCommitIndex,
                        self._SyncObj__raftLastApplied):
            log.info("transferring leadership to %s (match %d)", job["target"], match.get(target, 0))
            self.transferLeadership(target)
            job["sent_at"] = now

    # -- the one replicated method ---------------------------------------
    @replicated
    def apply_entry(self, data: bytes) -> list[Result]:
        try:
            with self.lock:
                results = apply_entry(self.state, data)
        except BaseException as exc:  # never let an exception wedge last_applied
            log.exception("apply_entry failed")
            results = [Result(False, self.state.index, error=Rejection("internal", repr(exc)))]
        try:
            self._on_applied()
        except Exception:
            log.exception("on_applied callback failed")
        return results

    # -- snapshots -------------------------------------------------------
    def _describe_snapshot(self, raw: tuple) -> tuple:
        """On the tick thread, before the encoding (snapshot.py): the configuration the snapshot records, the
        log's as of its last entry (pysyncobj gives the one the log ends with, this replica always a voter)."""
        entry1, entry0, cluster = raw
        voters, learners = self.snapshot_config(entry1[1], cluster)
        return entry1, entry0, sorted(voters), sorted(learners)

    def _encode_snapshot(self, raw: tuple) -> bytes:
        """In the forked child (see snapshot.py): the state is a copy-on-write image, no lock needed."""
        if len(raw) == 4:   # described (_describe_snapshot)
            entry1, entry0, voters, learners = raw
            return _snapshot_bytes(entry1, entry0, voters, self.state.snapshot(), learners)
        entry1, entry0, cluster = raw
        return _snapshot_bytes(entry1, entry0, cluster, self.state.snapshot(), self.learner_ids())

    def _decode_snapshot(self, data: bytes) -> tuple:
        """Load a snapshot at once (at a start; a received one is restored in the background, snapshot.py)."""
        return self._adopt_snapshot(self._restore_snapshot(data))

    @staticmethod
    def _restore_snapshot(data: bytes) -> tuple:
        """The heavy half, with no side effect: runs on a worker thread for a received snapshot (snapshot.py)."""
        obj = cbor2.loads(data)
        if not isinstance(obj, dict) or obj.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {obj.get('format') if isinstance(obj, dict) else None!r}")
        e1, e0 = (tuple(e) for e in obj["entries"])
        learners = obj.get("learners", [])
        if not isinstance(learners, list) or not all(isinstance(a, str) for a in learners):
            raise ValueError("snapshot: learners must be a list of addresses")
        return e1, e0, list(obj["cluster"]), restore_state(obj["state"]), learners

    def _adopt_snapshot(self, prepared: tuple) -> tuple:
        """On the tick thread, inside pysyncobj's load (which then sets the log to the snapshot's boundary)."""
        e1, e0, cluster, restored, learners = prepared
        with self.lock:
            self.state = restored
        self.snapshot_cluster_loaded(cluster, learners, e1[1])   # learners set once pysyncobj's load is done
        # Restoring a big state at a start holds the tick thread for seconds (100,000 placements: 2.0-2.6 s);
        # it counts as hearing from the leader, or this follower would start an election the moment it
        # returns (the election check runs first in a tick).
        self._SyncObj__raftElectionDeadline = (
            psyncobj.monotonicTime() + self._SyncObj__generateRaftTimeout())
        try:
            self._on_applied()
        except Exception:
            log.exception("on_applied callback failed")
        return e1, e0, [TCPNode(a) for a in cluster]

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (pysyncobj's names)
        # pysyncobj loads the snapshot at the first tick only if os.path.isfile() finds it; a simulated
        # disk's file is not on the real file system, so load it here the same way.
        if (self._SyncObj__needLoadDumpFile and self._SyncObj__transport.ready
                and not os.path.isfile(self._snapshots.path) and self._snapshots.exists()):
            self._SyncObj__loadDumpFile(clearJournal=False)
            self._SyncObj__needLoadDumpFile = False
        super()._onTick(timeToWait)

    def _doDestroy(self) -> None:  # noqa: N802 (pysyncobj's name; runs on the tick thread at destroy())
        super()._doDestroy()
        self._snapshots.close()
        close = getattr(self._disk, "close", None)
        if close is not None:
            close()

    # -- small read-only views -----------------------------------------------
    _status_cache: dict[str, Any] | None = None
    _status_key: tuple = ()
    _status_at = float("-inf")
    STATUS_REFRESH_S = 0.005

    def _cache_status(self) -> None:
        """On the tick thread, between two messages, so never half way through a term change: pysyncobj sets
        a newer term (votedFor cleared), persists it (an fsync: the GIL is free) and only then steps down,
        and a status read from another thread in between showed a deposed leader leading the newer term
        (jepsen-style seeds 13 and 21). Recomputed on any change of term, role or leader, else every 5 ms."""
        key = (self.raftCurrentTerm, self._isLeader(), self._getLeader())
        now = psyncobj.monotonicTime()
        if key == self._status_key and now - self._status_at < self.STATUS_REFRESH_S:
            return
        view = self._status_view(self.getStatus())
        match = self._SyncObj__raftMatchIndex
        view["learners"] = {addr: match.get(node) for addr, node in self._learners.items()}
        view["joining"] = self.joining()
        view["removed"] = self.removed()
        self._status_cache = view
        self._status_key, self._status_at = key, now

    def follow_cell(self, machines: int) -> tuple[float, float]:
        """Set the election timeout for a cell of ``machines`` (cell_election_timeout; unchanged when
        RAFTCTL_RAFT_TIMING pins it). Read by the tick thread at each re-arm of its election timer: the float
        assignments are atomic, and the larger bound is written first so min <= max holds between them."""
        conf = self._SyncObj__conf
        if TIMING_PINNED:
            return conf.raftMinTimeout, conf.raftMaxTimeout
        lo, hi = cell_election_timeout(machines, (self._base_timing[0], self._base_timing[1], 0.0))
        # etcd's CheckQuorum: a leader steps down when it heard no majority for an election timeout; pysyncobj's
        # fixed 3 s was shorter than a large cell's (3-6 s), and a leader that steps down before a follower could
        # have elected another leaves the cell without one until a follower's timer fires
        conf.leaderFallbackTimeout = max(LEADER_FALLBACK_S, hi)
        if (lo, hi) != (conf.raftMinTimeout, conf.raftMaxTimeout):
            if lo > conf.raftMinTimeout:
                conf.raftMaxTimeout, conf.raftMinTimeout = hi, lo
            else:
                conf.raftMinTimeout, conf.raftMaxTimeout = lo, hi
            log.info("election timeout %.2f-%.2f s for %d machines", lo, hi, machines)
        return lo, hi

    def raft_status(self) -> dict[str, Any]:
        """The status as of the tick thread's last tick; never blocks (the API calls it on the event loop)."""
        cached = getattr(self, "_status_cache", None)
        if cached is not None:
            return cached
        # Before the first tick only: read it here. A leader voted for itself in its term; a snapshot taken
        # while the tick thread is between setting a newer term and stepping down is retried (this retry
        # loop used to run on every call, sleeping on the event loop).
        me = self.selfNode.id
        for _ in range(50):
            term = self.raftCurrentTerm
            st = self.getStatus()
            voted = self._SyncObj__votedForNodeId
            if st.get("raft_term") == term == self.raftCurrentTerm and (st.get("state") != 2 or voted == me):
                break
            time.sleep(0.002)
        return {**RaftNode._status_view(st), "learners": {}, "joining": None, "removed": None}   # the tick thread's, from its first

    ROLE_NAMES: dict[Any, str] = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj's _RAFT_STATE

    @staticmethod
    def _status_view(st: dict[str, Any]) -> dict[str, Any]:
        leader = st.get("leader")
        return {
            "self": str(st.get("self")),
            "state": RaftNode.ROLE_NAMES.get(st.get("state"), str(st.get("state"))),
            "leader": str(leader) if leader is not None else None,
            "term": st.get("raft_term"),
            "commit_index": st.get("commit_idx"),
            "applied_index": st.get("last_applied"),
            "log_len": st.get("log_len"),
            "has_quorum": st.get("has_quorum"),
            "match_index": {k[len("match_idx_server_"):]: v for k, v in st.items() if k.startswith("match_idx_server_")},
            "connected": {k[len("partner_node_status_server_"):]: v == 2 for k, v in st.items()
                          if k.startswith("partner_node_status_server_")},
        }

    # -- what handlers read (never pysyncobj's privates) -------------------------
    def leader_address(self) -> str | None:
        """The Raft address (host:port) of the leader this replica knows of; None while it knows none."""
        leader = self._getLeader()
        return str(leader) if leader is not None else None

    def is_ready(self) -> bool:
        """Whether this replica has applied its log up to where it stood when it started (pysyncobj's isReady):
        until then it may not know a token or a job yet."""
        return bool(self.isReady())

    def is_leader(self) -> bool:
        """Whether this replica leads its current term (pysyncobj's own view, not the cached raft_status)."""
        return bool(self._isLeader())
