"""The Raft log and its term/vote/commit meta on disk, checksummed and crash-safe (issue 13).

pysyncobj's ``FileJournal`` writes through mmap with no checksum and compacts by clearing the file
and rewriting it in place. :class:`CheckedJournal` implements the same ``Journal`` interface on a
:class:`~raftctl.node.raft.disk.Disk`:

* The log is one append-only file: an 8-byte header (:data:`LOG_MAGIC`), then records
  ``[u32 length][u32 crc32 of payload][payload]`` (little-endian) whose payload is the canonical CBOR
  array ``[idx, term, command]``. On open, the records are read until the first one that is torn
  (shorter than its length), fails its crc or does not decode; the file is cut back there, synced,
  and the cut is logged at WARNING. A record is never half-believed.
* Sync points: outside a batch, :meth:`add`, :meth:`deleteEntriesFrom` and :meth:`clear` return
  only once the file is fsync'd. Inside ``with journal.batch():`` they only write; leaving the
  outermost block fsyncs once (a follower's AppendEntries costs one fsync, before it answers).
* Compaction (:meth:`deleteEntriesTo`) never touches the live file: the kept records go to
  ``<log>.compact``, which is fsync'd, renamed over the log, and the directory fsync'd. A crash at any
  step leaves either the old log or the new one, both complete.
* The meta (current term, vote, commit index) is its own small file ``<log>.meta`` written the same
  way (write ``.meta.tmp``, fsync, rename, fsync the directory). :meth:`setCurrentTerm` returns only
  once the new term and vote are durable; the commit index (a hint pysyncobj re-learns) is written
  at most once a second from :meth:`onOneSecondTimer`, as pysyncobj does.
* A log written by pysyncobj's ``FileJournal`` (the ``PYSYNCOBJ`` header, raftctl's format before
  issue 13) and its pickled meta are read once and rewritten in this format, crash-safely.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from typing import Any, Iterator

import cbor2
import pysyncobj.journal as pjournal

from raftctl.node.raft.disk import Disk, OsDisk

log = logging.getLogger("raftctl.raft.journal")

LOG_MAGIC = b"RCLOG01\n"
META_MAGIC = b"RCMETA1\n"
_REC = struct.Struct("<II")  # length, crc32 of the payload
MAX_RECORD = 1 << 30  # a length above this is garbage, not a record

# pysyncobj's FileJournal layout (journal.py of 0.3.17): name (24) + version (8) + format (u32) +
# offset of the end of the last record (u32), then records [u32 n][u64 idx][u64 term][command][u32 n].
_OLD_MAGIC = b"PYSYNCOBJ"
_OLD_END_OFFSET_AT = 24 + 8 + 4
_OLD_FIRST_RECORD = 24 + 8 + 4 + 4


class JournalCorrupt(RuntimeError):
    """A journal or meta file that cannot be read safely (never silently dropped)."""


def encode_record(command: bytes, idx: int, term: int) -> bytes:
    payload = cbor2.dumps([idx, term, bytes(command)], canonical=True)
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


def scan_records(data: bytes, start: int) -> tuple[list[tuple[bytes, int, int]], list[int], int]:
    """Decode records from ``start``: (entries, their offsets, offset just past the last valid one)."""
    entries: list[tuple[bytes, int, int]] = []
    offsets: list[int] = []
    pos = start
    end = len(data)
    while pos + _REC.size <= end:
        length, crc = _REC.unpack_from(data, pos)
        body = pos + _REC.size
        if length > MAX_RECORD or body + length > end:
            break
        payload = data[body:body + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            idx, term, command = cbor2.loads(payload)
        except Exception:  # crc-valid but not ours: treat as the end, like a torn record
            break
        if not (isinstance(idx, int) and isinstance(term, int) and isinstance(command, bytes)):
            break
        entries.append((command, idx, term))
        offsets.append(pos)
        pos = body + length
    return entries, offsets, pos


def parse_old_filejournal(data: bytes) -> list[tuple[bytes, int, int]]:
    """The entries of a pysyncobj FileJournal file (stopping at anything inconsistent)."""
    (end,) = struct.unpack_from("<I", data, _OLD_END_OFFSET_AT)
    end = min(end, len(data))
    entries: list[tuple[bytes, int, int]] = []
    pos = _OLD_FIRST_RECORD
    while pos + 4 <= end:
        (n,) = struct.unpack_from("<I", data, pos)
        if n < 16 or pos + 4 + n + 4 > end or struct.unpack_from("<I", data, pos + 4 + n)[0] != n:
            log.warning("old-format journal: inconsistent record at offset %d, keeping %d entries", pos, len(entries))
            break
        idx, term = struct.unpack_from("<QQ", data, pos + 4)
        entries.append((bytes(data[pos + 20:pos + 4 + n]), idx, term))
        pos += n + 8
    return entries


def write_file_atomically(disk: Disk, path: str, data: bytes, tmp_suffix: str = ".tmp") -> None:
    """Write new, fsync it, rename over ``path``, fsync the directory."""
    tmp = path + tmp_suffix
    disk.remove(tmp)
    disk.write(tmp, 0, data)
    disk.fsync(tmp)
    disk.rename(tmp, path)
    disk.fsync_dir(os.path.dirname(os.path.abspath(path)))


class MetaFile:
    """currentTerm, votedForNodeId and raftCommitIndex, each write durable when it returns."""

    def __init__(self, disk: Disk, path: str) -> None:
        self._disk = disk
        self.path = path
        self.meta: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        raw = self._disk.read(self.path)
        if raw is None or raw == b"":
            return {}
        if raw.startswith(META_MAGIC):
            body = raw[len(META_MAGIC):]
            if len(body) >= _REC.size:
                length, crc = _REC.unpack_from(body, 0)
                payload = body[_REC.size:_REC.size + length]
                if len(payload) == length and zlib.crc32(payload) == crc:
                    meta = cbor2.loads(payload)
                    if isinstance(meta, dict):
                        return meta
            # Written only by rename after an fsync: a bad one is media damage, not a crash. Losing
            # the vote could elect two leaders in one term, so refuse to start rather than guess.
            raise JournalCorrupt(f"{self.path}: meta file fails its checksum; refusing to guess term and vote")
        # pysyncobj's MetaStorer format (pickle of a dict), written by raftctl before issue 13. The
        # file is our own, written by this replica; it is read once and rewritten in our format.
        try:
            meta = pjournal.loads(raw)
        except Exception as exc:
            raise JournalCorrupt(f"{self.path}: neither raftctl nor pysyncobj meta format") from exc
        if not isinstance(meta, dict):
            raise JournalCorrupt(f"{self.path}: old-format meta is not a dict")
        meta = {k: meta[k] for k in ("currentTerm", "votedForNodeId", "raftCommitIndex") if k in meta}
        self.meta = meta
        self.store()
        log.warning("migrated %s from pysyncobj's meta format", self.path)
        return meta

    def store(self) -> None:
        payload = cbor2.dumps(self.meta, canonical=True)
        write_file_atomically(self._disk, self.path,
                              META_MAGIC + _REC.pack(len(payload), zlib.crc32(payload)) + payload)


class CheckedJournal(pjournal.Journal):
    """pysyncobj's Journal interface on a checksummed append-only file (see the module doc)."""

    def __init__(self, path: str, disk: Disk | None = None) -> None:
        self._disk: Disk = disk if disk is not None else OsDisk()
        self.path = path
        self._dir = os.path.dirname(os.path.abspath(path))
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        self._end = len(LOG_MAGIC)
        self._batch_depth = 0
        self._dirty = False
        self.syncs = 0
        self._meta = MetaFile(self._disk, path + ".meta")
        self._meta_saved = True
        self._open()

    # -- opening ---------------------------------------------------------------
    def _open(self) -> None:
        data = self._disk.read(self.path)
        if data is None or len(data) == 0 or (len(data) < len(LOG_MAGIC) and LOG_MAGIC.startswith(data)):
            if data:
                log.warning("%s: cut-short header (%d bytes) of a journal never written to; starting empty",
                            self.path, len(data))
            self._rewrite([])  # a new file is durable by name only after the directory fsync
            return
        if data.startswith(_OLD_MAGIC):
            entries = parse_old_filejournal(data)
            self._rewrite(entries)
            log.warning("migrated %s from pysyncobj's FileJournal format (%d entries)", self.path, len(entries))
            return
        if not data.startswith(LOG_MAGIC):
            raise JournalCorrupt(f"{self.path}: unknown journal format (header {data[:16]!r})")
        self._entries, self._offsets, self._end = scan_records(data, len(LOG_MAGIC))
        if self._end < len(data):
            cut = len(data) - self._end
            self._disk.truncate(self.path, self._end)
            self._disk.fsync(self.path)
            log.warning("%s: torn or corrupt tail: cut %d bytes after the last valid record (%d entries kept, "
                        "last index %s)", self.path, cut, len(self._entries),
                        self._entries[-1][1] if self._entries else None)

    def _rewrite(self, entries: list[tuple[bytes, int, int]]) -> None:
        """Replace the log by ``entries``: write new, fsync, rename, fsync the directory."""
        parts = [LOG_MAGIC]
        offsets = []
        pos = len(LOG_MAGIC)
        for command, idx, term in entries:
            rec = encode_record(command, idx, term)
            offsets.append(pos)
            parts.append(rec)
            pos += len(rec)
        write_file_atomically(self._disk, self.path, b"".join(parts), tmp_suffix=".compact")
        self.syncs += 1
        self._entries = [(bytes(c), i, t) for c, i, t in entries]
        self._offsets = offsets
        self._end = pos
        self._dirty = False

    # -- sync points -------------------------------------------------------------
    def sync(self) -> None:
        """fsync what was written since the last sync (no-op if nothing)."""
        if self._dirty:
            self._disk.fsync(self.path)
            self.syncs += 1
            self._dirty = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside are not synced one by one; leaving the outermost block syncs once."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self.sync()

    def _written(self) -> None:
        self._dirty = True
        if self._batch_depth == 0:
            self.sync()

    # -- pysyncobj's Journal interface ---------------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        rec = encode_record(command, idx, term)
        self._disk.write(self.path, self._end, rec)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(rec)
        self._written()

    def clear(self) -> None:
        self._entries = []
        self._offsets = []
        self._end = len(LOG_MAGIC)
        self._disk.truncate(self.path, self._end)
        self._written()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802,N803 (pysyncobj's names)
        if entryFrom < 0:
            entryFrom = max(0, len(self._entries) + entryFrom)
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._disk.truncate(self.path, self._end)
        self._written()

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802,N803
        """Compaction: drop the first ``entryTo`` entries (crash-safe rewrite, see the module doc)."""
        self.sync()
        self._rewrite(self._entries[entryTo:])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.sync()
        if not self._meta_saved:
            self._meta.store()
            self._meta_saved = True

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        if self._meta.meta.get("raftCommitIndex") != raftCommitIndex:
            self._meta.meta["raftCommitIndex"] = raftCommitIndex
            self._meta_saved = False

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return int(self._meta.meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802,N803
        """Durable before it returns: pysyncobj sends the vote (or acts on the term) right after."""
        self._meta.meta["currentTerm"] = term
        self._meta.meta["votedForNodeId"] = votedForNodeId
        self._meta.store()
        self._meta_saved = True

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if not self._meta_saved:
            self._meta.store()
            self._meta_saved = True
