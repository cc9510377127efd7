"""The Raft snapshot file, written and received crash-safely and encoded off the tick thread (issue 13).

pysyncobj's ``Serializer`` (serializer.py of 0.3.17), with a custom serializer as raftctl uses:

* calls the serializer on the tick thread and waits for it (no fork with a custom serializer): raftctl's
  ``State.snapshot()`` of a 100,000-placement state takes 1.4-1.8 s here, longer than an election
  timeout, and the tick thread sends the heartbeats;
* renames ``<dump>.tmp`` over ``<dump>`` *after* the serializer returns, so the directory fsync the
  serializer did came before the rename (the rename itself was never made durable);
* writes a snapshot received from the leader to ``<dump>.1.tmp`` and renames it without any fsync,
  then the follower clears its journal on the strength of it.

:class:`SnapshotFiles` replaces it (same six methods, installed through the factory name
``pysyncobj.syncobj.Serializer``; every file operation goes through a :class:`Disk`):

* **taking a snapshot**: on the tick thread only a ``fork()`` (a copy-on-write image of the state as
  of the last applied entry, a few ms); the child encodes and writes ``<dump>.part`` and fsyncs it; the
  tick thread polls the child (``checkSerializing``, every tick) and, once it exited 0, renames the
  part over ``<dump>`` and fsyncs the directory before reporting success (only then does pysyncobj
  compact the journal). A Disk other than :class:`OsDisk` (the simulation's) cannot be written from a
  child process: there the same steps run inline.
* **receiving one**: chunks go to ``<dump>.1.tmp``; on the last one: fsync it, rename, fsync the
  directory, and only then does pysyncobj load it and clear the journal.
* a snapshot received while our own is being written wins: the child is killed (its older snapshot
  would otherwise be renamed over the newer one, and the journal compacted to a point before its start).
* **restoring a received one** (when built with ``prepare`` and ``adopt``, as RaftNode does with repair on):
  decoding a big state held the tick thread for seconds (100,000 placements, a 26.7 MB snapshot:
  2.0-2.6 s, more under load), longer than an election timeout. The heavy half (``prepare``: decode and
  build the new State, no side effect) runs on a worker thread while the tick thread goes on answering
  the leader; cbor2's C decoder would hold the GIL for the whole decode (1.2-3 s), so
  :func:`restore_state` makes it call back into Python once per decoded map, where the interpreter can
  hand the GIL over. Until it is done the file stays ``<dump>.1.tmp`` (fsync'd; a crash leaves the old
  snapshot and journal, and the leftover is removed at the next start) and nothing is appended or
  applied (replication.py answers the leader without taking entries). When :meth:`restore_poll` finds it
  done, on the tick thread: rename, fsync the directory, and pysyncobj's load swaps the new state in
  (``adopt``) and replaces the journal, in one tick. A Disk other than :class:`OsDisk` (the simulation's,
  which must stay deterministic) runs the heavy half inline at the next poll instead of on a thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import cbor2
import pysyncobj.syncobj as psyncobj
from pysyncobj.config import SERIALIZER_STATE

from raftctl.node.raft.disk import Disk, OsDisk, write_all
from raftctl.statemachine.state import TABLES, State

log = logging.getLogger("raftctl.raft.snapshot")

# The tables restore_state attaches after State.restore checked the rest (dedup stays: restore orders it).
_BULK = tuple(t for t in TABLES if t != "dedup")


def _handoff(first: Any, second: Any) -> Any:
    """cbor2's object_hook: one Python call per decoded map, where the interpreter may hand the GIL to the
    tick thread (cbor2's C decoder holds it otherwise for the whole decode: 1.2-3 s for 100,000 placements;
    with the hook the tick thread waited at most tens of ms). It returns the map unchanged: cbor2 6 passes
    (map, immutable), cbor2 5 (decoder, map)."""
    return second if isinstance(first, cbor2.CBORDecoder) else first


def restore_state(data: bytes) -> State:
    """``State.restore(data)``, safe to run on a worker thread beside the tick thread (see :func:`_handoff`).

    The bulk tables are decoded with the hook; ``State.restore`` then runs on the rest of the snapshot (its
    schema check, the dedup table's order) with those tables empty, and they are attached after it, with the
    derived indexes rebuilt. tests/unit/test_raft_snapshot.py holds it equal to ``State.restore``."""
    obj = cbor2.loads(data, object_hook=_handoff)
    if not isinstance(obj, dict):
        raise ValueError("a snapshot's state must be a map")
    empty = State().to_obj()
    bulk = {}
    for name in _BULK:
        table = obj.get(name)
        if type(table) is not type(empty[name]):
            raise ValueError(f"snapshot table {name!r} is a {type(table).__name__}, not a {type(empty[name]).__name__}")
        bulk[name] = table
        obj[name] = empty[name]
    state = State.restore(cbor2.dumps(obj, canonical=True))
    for name, table in bulk.items():
        setattr(state, name, table)
    state.rebuild_derived()
    return state


# Without a thread (a small snapshot, or the simulation's disk) the restore runs inline at this poll: a few
# ticks later, as a big state's restore would end, so that the ticks in between (AppendEntries answered
# without their entries, an election, a power cut mid-restore) happen in the simulated schedules too.
INLINE_RESTORE_POLLS = 3
# A snapshot this small decodes in a few ms (100,000 placements: 26.7 MB in 1.2-3 s): not worth a thread.
THREAD_MIN_BYTES = 1 << 20


class _Restore:
    """The heavy half of installing a received snapshot: on a worker thread, or (``threaded=False``) inline
    at the INLINE_RESTORE_POLLS-th poll, which keeps a simulation deterministic."""

    def __init__(self, work: Callable[[], Any], threaded: bool) -> None:
        self._inline: Callable[[], Any] | None = None if threaded else work
        self._polls = 0
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.monotonic()
        if threaded:
            threading.Thread(target=self._run, args=(work,), name="raftctl-snapshot-restore", daemon=True).start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except Exception as exc:  # noqa: BLE001 (reported by the poll, on the tick thread)
            self.error = exc
        finally:
            self.done.set()

    def poll(self) -> bool:
        self._polls += 1
        if self._inline is not None and self._polls >= INLINE_RESTORE_POLLS:
            work, self._inline = self._inline, None
            self._run(work)
        return self.done.is_set()


class SnapshotFiles:
    """pysyncobj's Serializer interface for one snapshot file on a Disk."""

    def __init__(self, path: str, disk: Disk, encode: Callable[[tuple], bytes], decode: Callable[[bytes], tuple],
                 chunk_size: int, use_fork: bool | None = None, *, prepare: Callable[[bytes], Any] | None = None,
                 adopt: Callable[[Any], tuple] | None = None, restore_thread: bool | None = None,
                 describe: Callable[[tuple], tuple] | None = None) -> None:
        """``decode(bytes) -> (entry1, entry0, cluster)`` loads a snapshot (swapping the state in); with
        ``prepare`` and ``adopt`` (decode = adopt(prepare(bytes))) a received one is restored in the background:
        ``prepare`` must have no side effect (it may run on a worker thread), ``adopt`` runs on the tick thread.
        ``restore_thread``: None = a thread for a snapshot of THREAD_MIN_BYTES or more on the real disk, else
        inline at the INLINE_RESTORE_POLLS-th poll; False = always inline (the simulation's disk).
        ``describe(raw) -> raw``: on the caller's thread before a snapshot is encoded (what it records of the
        configuration: RaftNode._describe_snapshot)."""
        self.path = path
        self._disk = disk
        self._dir = os.path.dirname(os.path.abspath(path))
        self._part = path + ".part"
        self._incoming = path + ".1.tmp"
        self._encode = encode
        self._decode = decode
        self._chunk = chunk_size
        self._fork = (isinstance(disk, OsDisk) and hasattr(os, "fork")) if use_fork is None else use_fork
        self._pid = 0            # >0: child writing; -1: done inline, success to report; -2: failed
        self._current_id: Any = None
        self._started = 0.0
        self._sending: bytes | None = None
        self._transmissions: dict[Any, int] = {}
        self._incoming_at: int | None = None
        self._preloaded: tuple | None = None     # decoded by preload(), handed out by the next deserialize()
        self._prepare = prepare
        self._adopt = adopt
        self._describe = describe
        self._restore_thread = False if restore_thread is None and not isinstance(disk, OsDisk) else restore_thread
        self._restore: _Restore | None = None    # a received snapshot being restored (not yet installed)
        self._restored: Any = None               # its prepared state, handed to adopt by the next deserialize()
        self.last_restore_ms: float | None = None
        self.restored = 0                        # received snapshots restored in the background and loaded
        self.last_sent: tuple[int, int] | None = None  # (offset, file size) of the last chunk sent
        self.last_fork_ms: float | None = None
        self.last_total_ms: float | None = None
        # Leftovers of a run that crashed (``.tmp``: raftctl before issue 13): never the snapshot.
        for leftover in (path + ".tmp", self._part, self._incoming):
            disk.remove(leftover)

    # -- taking a snapshot -------------------------------------------------------------------
    def serialize(self, data: tuple, id: Any) -> None:  # noqa: A002 (pysyncobj's name)
        if self._pid != 0 or self._restore is not None:  # (the leader's snapshot, being restored, will replace it)
            return
        self._current_id = id
        self._started = time.monotonic()
        raw = data[1:]  # (entry before last applied, last applied entry, cluster), as a custom serializer gets
        if self._describe is not None:
            raw = self._describe(raw)
        self._disk.remove(self._part)
        if self._fork:
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # the child: no locks, no logging, no return into pysyncobj
                code = 1
                try:
                    blob = self._encode(raw)
                    fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
                    write_all(fd, blob)
                    os.fsync(fd)
                    os.close(fd)
                    code = 0
                finally:
                    os._exit(code)
            self.last_fork_ms = (time.perf_counter() - t0) * 1000
            self._pid = pid
            return
        try:
            blob = self._encode(raw)
            self._disk.write(self._part, 0, blob)
            self._disk.fsync(self._part)
            self._install(self._part)
            self._pid = -1
        except Exception:
            log.exception("writing snapshot %s failed", self.path)
            self._pid = -2

    def _install(self, src: str) -> None:
        self._disk.rename(src, self.path)
        self._disk.fsync_dir(self._dir)

    def checkSerializing(self) -> tuple[int, Any]:  # noqa: N802 (pysyncobj's name)
        if self._pid == 0:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        if self._pid > 0:
            try:
                rpid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                rpid, status = self._pid, -1
            if rpid == 0:
                return SERIALIZER_STATE.SERIALIZING, self._current_id
            ok = status == 0
            if not ok:
                log.warning("snapshot child for %s exited with wait status %s", self.path, status)
            if ok:
                try:
                    self._install(self._part)
                except OSError:
                    log.exception("installing snapshot %s failed", self.path)
                    ok = False
            self._pid = -1 if ok else -2
        self.last_total_ms = (time.monotonic() - self._started) * 1000
        ok = self._pid == -1
        self._pid = 0
        if not ok:
            self._disk.remove(self._part)
            return SERIALIZER_STATE.FAILED, self._current_id
        self._transmissions = {}
        self._sending = None
        return SERIALIZER_STATE.SUCCESS, self._current_id

    def preload(self) -> tuple:
        """Decode the snapshot now (its boundary entries tell how to fix the journal before pysyncobj loads
        it); the next deserialize() returns this without decoding again (decoding restores the state)."""
        self._preloaded = None
        self._preloaded = self.deserialize()
        return self._preloaded

    def deserialize(self) -> tuple:
        if self._preloaded is not None:
            loaded, self._preloaded = self._preloaded, None
            return loaded
        if self._restored is not None and self._adopt is not None:
            prepared, self._restored = self._restored, None
            return (None,) + tuple(self._adopt(prepared))
        data = self._disk.read(self.path)
        if data is None:
            raise FileNotFoundError(self.path)
        return (None,) + tuple(self._decode(data))

    def exists(self) -> bool:
        return self._disk.size(self.path) >= 0

    def _abandon_own(self) -> None:
        """A snapshot from the leader supersedes the one we are taking: never rename ours over it."""
        if self._pid > 0:
            try:
                os.kill(self._pid, 9)
                os.waitpid(self._pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self._pid = -2
            self._disk.remove(self._part)
        elif self._pid == -1:
            self._pid = -2

    def close(self) -> None:
        """The node is stopping: a snapshot still being written or restored is abandoned (the next start
        removes its file)."""
        if self._pid > 0:
            self._abandon_own()
        self._pid = 0
        self._restore = None
        self._restored = None

    # -- sending one (leader) --------------------------------------------------------------
    def getTransmissionData(self, transmissionID: Any) -> Any:  # noqa: N802,N803
        if self._pid != 0:
            return None
        if self._sending is None:
            self._sending = self._disk.read(self.path)
            if self._sending is None:
                log.warning("no snapshot file %s to send", self.path)
                return None
        sent = self._transmissions.get(transmissionID, 0)
        chunk = self._sending[sent:sent + self._chunk]
        self.last_sent = (sent, len(self._sending))  # the leader tags the chunk with it (replication.py)
        is_last = not chunk
        if is_last:
            self._transmissions.pop(transmissionID, None)
            if not self._transmissions:
                self._sending = None  # the next follower that needs it reads it again
        else:
            self._transmissions[transmissionID] = sent + len(chunk)
        return chunk, sent == 0, is_last

    def resume(self, transmissionID: Any, offset: int, size: Any) -> bool:  # noqa: N803
        """Send this follower the snapshot from ``offset`` on (it holds the bytes before it): True when the file
        being sent is ``size`` bytes long (the follower's copy is of this file) and the offset lies within it."""
        if self._pid != 0:
            return False
        data = self._sending if self._sending is not None else self._disk.read(self.path)
        if data is None or not isinstance(size, int) or len(data) != size or not 0 <= offset <= size:
            return False
        self._sending = data
        self._transmissions[transmissionID] = offset
        return True

    def cancelTransmisstion(self, id: Any) -> None:  # noqa: N802,A002 (pysyncobj's spelling)
        self._transmissions.pop(id, None)

    # -- receiving one (follower) -----------------------------------------------------------
    @property
    def receiving(self) -> bool:
        """Whether a snapshot from the leader is being written (chunks so far on disk, more expected)."""
        return self._incoming_at is not None

    def abandon_incoming(self) -> None:
        """Forget a half-received snapshot (its next chunk was lost, or it is no longer wanted)."""
        self._incoming_at = None

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802
        """Returns True once the whole snapshot is durable under its name (then pysyncobj loads it). With
        ``prepare`` and ``adopt`` given, the last chunk starts the restore instead and returns False:
        :meth:`restore_poll` says when to load it."""
        if data is None or self._restore is not None:
            return False
        chunk, is_first, is_last = data
        if is_first:
            self._disk.remove(self._incoming)
            self._incoming_at = 0
        elif self._incoming_at is None:
            return False
        try:
            if chunk:
                self._disk.write(self._incoming, self._incoming_at, bytes(chunk))
                self._incoming_at += len(chunk)
            if not is_last:
                return False
            self._incoming_at = None
            if self._disk.size(self._incoming) < 0:
                self._disk.write(self._incoming, 0, b"")
            self._disk.fsync(self._incoming)
            self._abandon_own()
            if self._prepare is not None and self._adopt is not None:
                prepare, disk, incoming = self._prepare, self._disk, self._incoming

                def work() -> Any:
                    blob = disk.read(incoming)
                    if blob is None:
                        raise FileNotFoundError(incoming)
                    return prepare(blob)
                self._restored = None
                threaded = self._restore_thread
                if threaded is None:
                    threaded = self._disk.size(self._incoming) >= THREAD_MIN_BYTES
                self._restore = _Restore(work, threaded)
                return False
            self._installed_received()
            return True
        except OSError:
            log.exception("writing the snapshot received from the leader failed")
            self._incoming_at = None
            return False

    def _installed_received(self) -> None:
        self._install(self._incoming)
        self._sending = None
        self._transmissions = {}  # were we to lead: every follower starts over on the new file

    # -- restoring a received one in the background (see the module doc) ---------------------
    @property
    def restoring(self) -> bool:
        """A received snapshot is being restored: nothing may be appended or applied until it is loaded."""
        return self._restore is not None

    def restore_poll(self) -> bool | None:
        """On the tick thread. None: still restoring (or nothing to restore). True: the snapshot is now durable
        under its name and the next deserialize() hands out the restored state: load it now (pysyncobj's
        load). False: the restore failed; the file is dropped, the old snapshot and log stay (the leader
        sends the snapshot again)."""
        job = self._restore
        if job is None or not job.poll():
            return None
        self._restore = None
        self.last_restore_ms = (time.monotonic() - job.started) * 1000
        if job.error is not None:
            log.error("restoring the snapshot received from the leader failed: %r", job.error)
            self._disk.remove(self._incoming)
            return False
        try:
            self._installed_received()
        except OSError:
            log.exception("installing the snapshot received from the leader failed")
            return False
        self._restored = job.result
        self.restored += 1
        return True

    def abandon_restore(self) -> None:
        """Forget a snapshot being restored (this node is no longer a follower); a worker thread still decoding
        finishes unobserved. The leader of a later term sends one again if it is still needed."""
        if self._restore is not None:
            self._restore = None
            self._disk.remove(self._incoming)


class RestoreInBackground:
    """RaftNode's side of restoring a received snapshot in the background (a mixin placed before
    ReplicationFixes, whose follower handling it wraps; only with ``repair``, as RaftNode passes ``prepare``
    and ``adopt`` to :class:`SnapshotFiles` only then).

    While a restore runs: AppendEntries are answered without taking their entries (success false, no reset:
    the leader counts this follower as alive and changes none of its progress) and other snapshot chunks are
    dropped, so nothing is appended, committed or applied to a state about to be replaced. Each tick, first
    thing, polls it; when it is done, pysyncobj's load swaps the new state in and the journal is set to the
    snapshot's boundary, then the leader gets the answer to its last chunk, as when the install was inline.
    A node that stops being a follower (an election it started) abandons the restore."""

    if TYPE_CHECKING:
        _SyncObj__serializer: Any
        _SyncObj__raftLog: Any
        _SyncObj__raftState: int
        _SyncObj__raftCommitIndex: int
        _snapshot_rx: Any

        def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None: ...  # noqa: N802,N803

        def _reply(self, node: Any, message: dict | None, *, success: bool, next_idx: int, reset: bool = False,
                   conflict_term: int | None = None, conflict_index: int | None = None,
                   refused: bool = False, extra: dict[str, Any] | None = None) -> None: ...

    _restore_answer: tuple[Any, dict] | None = None   # the last chunk's sender and message, answered when done

    def _restoring_files(self) -> SnapshotFiles | None:
        files = self._SyncObj__serializer
        return files if isinstance(files, SnapshotFiles) and files.restoring else None

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (pysyncobj's names)
        self._restore_tick()
        super()._onTick(timeToWait)  # type: ignore[misc]

    def _append(self, node: Any, message: dict, entries: list, leader_commit: int) -> None:
        if self._restoring_files() is not None:
            self._reply(node, message, success=False, next_idx=self._SyncObj__raftLog[-1][1] + 1)
            return
        super()._append(node, message, entries, leader_commit)  # type: ignore[misc]

    def _on_snapshot_chunk(self, node: Any, message: dict, serialized: Any) -> None:
        if self._restoring_files() is not None:
            return  # the leader starts a transmission again if it still wants one when we answer
        super()._on_snapshot_chunk(node, message, serialized)  # type: ignore[misc]
        if self._restoring_files() is not None:  # that was the last chunk: restoring from now on
            self._restore_answer = (node, message)

    def _restore_tick(self) -> None:
        files = self._restoring_files()
        if files is None:
            return
        if self._SyncObj__raftState != psyncobj._RAFT_STATE.FOLLOWER:
            log.info("abandoning the snapshot being restored: no longer a follower")
            files.abandon_restore()
            self._restore_answer = None
            return
        done = files.restore_poll()
        if done is None:
            return
        answer, self._restore_answer = self._restore_answer, None
        if not done:
            return
        log.info("snapshot restored in %.0f ms beside the tick thread; loading it", files.last_restore_ms or 0.0)
        self._snapshot_rx = None
        self._SyncObj__loadDumpFile(clearJournal=True)
        raft_log = self._SyncObj__raftLog
        if len(raft_log) == 0:  # pysyncobj logs and swallows any error while loading
            raise RuntimeError("installing the leader's snapshot failed after the journal was cleared")
        last = raft_log[-1][1]  # the log is the snapshot's boundary now: all committed
        self._SyncObj__raftCommitIndex = last
        raft_log.setRaftCommitIndex(last)
        if answer is not None:
            self._reply(answer[0], answer[1], success=True, next_idx=last + 1)
