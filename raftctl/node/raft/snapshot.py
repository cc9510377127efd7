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
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from pysyncobj.config import SERIALIZER_STATE

from raftctl.node.raft.disk import Disk, OsDisk

log = logging.getLogger("raftctl.raft.snapshot")


class SnapshotFiles:
    """pysyncobj's Serializer interface for one snapshot file on a Disk."""

    def __init__(self, path: str, disk: Disk, encode: Callable[[tuple], bytes], decode: Callable[[bytes], tuple],
                 chunk_size: int, use_fork: bool | None = None) -> None:
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
        self.last_sent: tuple[int, int] | None = None  # (offset, file size) of the last chunk sent
        self.last_fork_ms: float | None = None
        self.last_total_ms: float | None = None
        # Leftovers of a run that crashed (``.tmp``: raftctl before issue 13): never the snapshot.
        for leftover in (path + ".tmp", self._part, self._incoming):
            disk.remove(leftover)

    # -- taking a snapshot -------------------------------------------------------------------
    def serialize(self, data: tuple, id: Any) -> None:  # noqa: A002 (pysyncobj's name)
        if self._pid != 0:
            return
        self._current_id = id
        self._started = time.monotonic()
        raw = data[1:]  # (entry before last applied, last applied entry, cluster), as a custom serializer gets
        self._disk.remove(self._part)
        if self._fork:
            t0 = time.perf_counter()
            pid = os.fork()
            if pid == 0:  # the child: no locks, no logging, no return into pysyncobj
                code = 1
                try:
                    blob = self._encode(raw)
                    fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
                    view = memoryview(blob)
                    while view:
                        view = view[os.write(fd, view):]
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
            data, self._preloaded = self._preloaded, None
            return data
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
        """The node is stopping: a snapshot still being written is abandoned (the next start removes it)."""
        if self._pid > 0:
            self._abandon_own()
        self._pid = 0

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

    def cancelTransmisstion(self, id: Any) -> None:  # noqa: N802,A002 (pysyncobj's spelling)
        self._transmissions.pop(id, None)

    # -- receiving one (follower) -----------------------------------------------------------
    def abandon_incoming(self) -> None:
        """Forget a half-received snapshot (its next chunk was lost, or it is no longer wanted)."""
        self._incoming_at = None

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802
        """Returns True once the whole snapshot is durable under its name (then pysyncobj loads it)."""
        if data is None:
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
            self._install(self._incoming)
            self._sending = None
            self._transmissions = {}  # were we to lead: every follower starts over on the new file
            return True
        except OSError:
            log.exception("writing the snapshot received from the leader failed")
            self._incoming_at = None
            return False
