"""pysyncobj glue: exactly one replicated method taking bytes.

Only this module talks to pysyncobj. It fixes three of pysyncobj 0.3.17's sharp
edges (DESIGN §11):

* durability: the journal is written through mmap and never flushed, and the
  meta file (term, vote) is never fsync'd. :class:`DurableJournal` msyncs every
  appended entry before pysyncobj answers the append (so an acknowledged write
  is on disk on a majority) and fsyncs the meta file. The proposer batches many
  commands into one entry, so one msync covers a whole batch.
* snapshots are canonical CBOR (our state plus pysyncobj's two boundary entries
  and the cluster), never pickle, fsync'd before the atomic rename.
* the replicated method catches everything: an exception there would wedge
  ``last_applied`` on every replica.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import cbor2
import pysyncobj.journal as pjournal
import pysyncobj.syncobj as psyncobj
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.tcp_connection import TcpConnection

from raftctl.statemachine.apply import Rejection, Result, apply_entry
from raftctl.statemachine.state import State

log = logging.getLogger("raftctl.raft")

SNAPSHOT_FORMAT = 1


class DurableMetaStorer(pjournal.MetaStorer):
    def storeMeta(self, meta: Any) -> None:  # noqa: N802 (pysyncobj's name)
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(pjournal.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        _fsync_dir(path)


class DurableJournal(pjournal.FileJournal):
    """FileJournal whose appends are on disk before pysyncobj acknowledges them."""

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = DurableMetaStorer(journal_file + ".meta")  # type: ignore[attr-defined]
        self.flushes = 0

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()
        self.flushes += 1

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803
        super().deleteEntriesFrom(entryFrom)
        self.flush()


def _create_journal(journal_file: str | None = None) -> pjournal.Journal:
    if journal_file is None:
        return pjournal.MemoryJournal()
    return DurableJournal(journal_file)


# pysyncobj builds its journal through this module-level name; point it at ours.
psyncobj.createJournal = _create_journal

# pysyncobj gives up a connect attempt only after connectionTimeout (60 s here, to keep idle
# links) and a link with unacknowledged data only when TCP's retransmissions give up (minutes).
# Across a partition that heals, the pending SYN or segment is retried on the kernel's backoff
# (1, 2, 4, 8, 16 s ...), so a healed replica stayed cut off for up to ~30 s (jepsen-style seed 2:
# 17 s after a 35 s leader isolation). TCP_USER_TIMEOUT bounds both: the socket errors out,
# pysyncobj drops it and reconnects within connectionRetryTime.
RAFT_TCP_USER_TIMEOUT_MS = 2500
_original_set_keepalive = TcpConnection.setSockoptKeepalive


def _keepalive_and_user_timeout(conn: TcpConnection) -> None:
    """pysyncobj calls this on every Raft socket it creates or accepts."""
    _original_set_keepalive(conn)
    sock = conn._TcpConnection__socket  # type: ignore[attr-defined]
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, RAFT_TCP_USER_TIMEOUT_MS)


TcpConnection.setSockoptKeepalive = _keepalive_and_user_timeout  # type: ignore[method-assign]


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    obj = {"format": SNAPSHOT_FORMAT, "entries": [[bytes(e[0]), e[1], e[2]] for e in SEED_ENTRIES],
           "cluster": sorted(set(cluster)), "state": state_bytes}
    with open(path + ".tmp", "wb") as f:
        cbor2.dump(obj, f, canonical=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    _fsync_dir(path)
    return path


class RaftNode(SyncObj):
    """A control replica's Raft member holding the state machine."""

    def __init__(self, self_addr: str, peers: list[str], data_dir: str, secret: str | None,
                 on_applied: Callable[[], None], on_state_changed: Callable[[int, int], None] | None = None,
                 *, dynamic_membership: bool = True, compact_entries: int = 20000,
                 transport: Any = None, conf_overrides: dict[str, Any] | None = None) -> None:
        # transport (a pysyncobj Transport; None = TCP) and conf_overrides (SyncObjConf fields, e.g.
        # autoTick=False) exist for the deterministic simulation in tests/sim; production passes neither.
        self.state = State()
        self.lock = threading.RLock()
        self._on_applied = on_applied
        os.makedirs(data_dir, exist_ok=True)
        host = self_addr.rsplit(":", 1)[0]
        conf = SyncObjConf(
            password=secret,
            bindAddress=self_addr if host else None,
            journalFile=os.path.join(data_dir, "raft.journal"),
            fullDumpFile=os.path.join(data_dir, "raft.snapshot"),
            serializer=self._serialize,
            deserializer=self._deserialize,
            appendEntriesUseBatch=False,
            dynamicMembershipChange=dynamic_membership,
            leaderFallbackTimeout=3.0,
            raftMinTimeout=0.4,
            raftMaxTimeout=1.2,
            appendEntriesPeriod=0.1,
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
        super().__init__(self_addr, peers, conf, transport=transport)

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
    def _serialize(self, filename: str, raw: tuple) -> None:
        entry1, entry0, cluster = raw
        with self.lock:
            state_bytes = self.state.snapshot()
        obj = {"format": SNAPSHOT_FORMAT,
               "entries": [[bytes(e[0]), e[1], e[2]] for e in (entry1, entry0)],
               "cluster": sorted(n.id if hasattr(n, "id") else str(n) for n in cluster),
               "state": state_bytes}
        with open(filename, "wb") as f:
            cbor2.dump(obj, f, canonical=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(filename)

    def _deserialize(self, filename: str) -> tuple:
        with open(filename, "rb") as f:
            obj = cbor2.load(f)
        if obj.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {obj.get('format')!r}")
        restored = State.restore(obj["state"])
        with self.lock:
            self.state = restored
        try:
            self._on_applied()
        except Exception:
            log.exception("on_applied callback failed")
        e1, e0 = (tuple(e) for e in obj["entries"])
        return e1, e0, [TCPNode(a) for a in obj["cluster"]]

    # -- small read-only views -----------------------------------------------
    def raft_status(self) -> dict[str, Any]:
        # getStatus() runs on the caller's thread while pysyncobj's tick thread moves on. On a message
        # with a newer term the tick thread sets the term (and votedFor = None), persists it (an fsync:
        # the GIL is free for milliseconds) and only then steps down, so a deposed leader was reported as
        # the leader of the newer term (jepsen-style seeds 13 and 21: two leaders claimed for one term).
        # A real leader voted for itself in its term: wait (at most ~100 ms) for a snapshot whose term
        # held still and whose leader state agrees with the vote.
        me = self.selfNode.id
        for _ in range(50):
            term = self.raftCurrentTerm
            st = self.getStatus()
            voted = self._SyncObj__votedForNodeId  # type: ignore[attr-defined]
            if st.get("raft_term") == term == self.raftCurrentTerm and (st.get("state") != 2 or voted == me):
                break
            time.sleep(0.002)
        leader = st.get("leader")
        return {
            "self": str(st.get("self")),
            "state": {0: "follower", 1: "candidate", 2: "leader"}.get(st.get("state"), str(st.get("state"))),
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
