"""The Raft journal on disk (issue 13): checksummed records, torn tails cut back, one fsync per batch,
crash-safe compaction and meta, and migration from pysyncobj's FileJournal format."""
from __future__ import annotations

import logging
import os

import pytest
import pysyncobj.journal as pjournal

from raftctl.node.raft.disk import OsDisk
from raftctl.node.raft.journal import LOG_MAGIC, CheckedJournal, JournalCorrupt


class Crash(Exception):
    pass


class _Inode:
    def __init__(self) -> None:
        self.data = bytearray()   # what read() sees
        self.durable = bytearray()  # what survives a crash for sure
        self.pending: list[tuple] = []  # writes and truncates since the last fsync, in order

    def apply(self, buf: bytearray, op: tuple) -> None:
        if op[0] == "write":
            _, offset, data = op
            if len(buf) < offset:
                buf.extend(b"\0" * (offset - len(buf)))
            buf[offset:offset + len(data)] = data
        else:
            del buf[op[1]:]
            buf.extend(b"\0" * (op[1] - len(buf)))


class CrashDisk:
    """An in-memory Disk with POSIX's weakest durability: file contents survive a crash only once
    fsync'd, names (creations, renames, removals) only once their directory is fsync'd. A crash may
    also have written back the first ``writeback`` unsynced writes/truncates of each file (the
    kernel flushes dirty pages whenever it likes, in any order; in order is the kind case).
    ``fail_at=k`` raises :class:`Crash` instead of performing the k-th mutating call (0-based)."""

    def __init__(self) -> None:
        self.names: dict[str, _Inode] = {}
        self.durable_names: dict[str, _Inode] = {}
        self.ops = 0
        self.fail_at: int | None = None
        self.fsyncs: list[str] = []

    def _step(self) -> None:
        if self.fail_at is not None and self.ops == self.fail_at:
            raise Crash(self.ops)
        self.ops += 1

    def crash(self, writeback: int = 0) -> None:
        self.names = dict(self.durable_names)
        for inode in set(self.names.values()):
            inode.data = bytearray(inode.durable)
            for op in inode.pending[:writeback]:
                inode.apply(inode.data, op)
            inode.durable = bytearray(inode.data)
            inode.pending = []
        self.fail_at = None

    def max_pending(self) -> int:
        return max((len(i.pending) for i in self.names.values()), default=0)

    def read(self, path):
        inode = self.names.get(path)
        return None if inode is None else bytes(inode.data)

    def write(self, path, offset, data):
        self._step()
        inode = self.names.setdefault(path, _Inode())
        op = ("write", offset, bytes(data))
        inode.apply(inode.data, op)
        inode.pending.append(op)

    def truncate(self, path, size):
        self._step()
        inode = self.names.setdefault(path, _Inode())
        op = ("truncate", size)
        inode.apply(inode.data, op)
        inode.pending.append(op)

    def size(self, path):
        inode = self.names.get(path)
        return -1 if inode is None else len(inode.data)

    def fsync(self, path):
        self._step()
        self.fsyncs.append(path)
        self.names[path].durable = bytearray(self.names[path].data)
        self.names[path].pending = []

    def rename(self, src, dst):
        self._step()
        self.names[dst] = self.names.pop(src)

    def fsync_dir(self, dirpath):
        self._step()
        prefix = dirpath.rstrip("/") + "/"
        self.durable_names = {n: i for n, i in self.durable_names.items() if not n.startswith(prefix)}
        self.durable_names.update({n: i for n, i in self.names.items() if n.startswith(prefix)})

    def remove(self, path):
        if path in self.names:
            self._step()
            del self.names[path]

    def put(self, path, data):
        """A file as a previous run left it on disk (durable)."""
        self.write(path, 0, data)
        self.fsync(path)
        self.fsync_dir(os.path.dirname(path))

    def listdir(self, dirpath):
        prefix = dirpath.rstrip("/") + "/"
        return sorted(n[len(prefix):] for n in self.names if n.startswith(prefix))


class RecordingDisk(OsDisk):
    def __init__(self) -> None:
        super().__init__()
        self.fsyncs: list[str] = []

    def fsync(self, path):
        self.fsyncs.append(path)
        super().fsync(path)


def entry(i: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"cmd-%d-" % i + bytes(range(i % 7)) * 3, i, term)


def fill(j, n: int, start: int = 1) -> list[tuple[bytes, int, int]]:
    es = [entry(i) for i in range(start, start + n)]
    for e in es:
        j.add(*e)
    return es


JPATH = "/data/raft.journal"


def test_round_trip_entries_term_vote_commit(tmp_path):
    path = str(tmp_path / "raft.journal")
    j = CheckedJournal(path)
    es = fill(j, 50)
    j.setCurrentTerm(7, "127.0.0.1:4001")
    j.setRaftCommitIndex(42)
    j._destroy()
    assert list(j) == es and len(j) == 50 and j[-1] == es[-1] and j[10:12] == es[10:12]
    k = CheckedJournal(path)
    assert [k[i] for i in range(len(k))] == es
    assert (k.getCurrentTerm(), k.getVotedForNodeId(), k.getRaftCommitIndex()) == (7, "127.0.0.1:4001", 42)
    assert open(path, "rb").read().startswith(LOG_MAGIC)


def test_empty_journal_defaults():
    j = CheckedJournal(JPATH, CrashDisk())
    assert (len(j), j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (0, 0, None, 1)


def test_torn_tail_at_every_byte_of_the_last_record_is_cut_back(caplog):
    disk = CrashDisk()
    j = CheckedJournal(JPATH, disk)
    es = fill(j, 5)
    whole = disk.read(JPATH)
    last_start = j._offsets[-1]
    for cut in range(last_start, len(whole)):
        d = CrashDisk()
        d.put(JPATH, whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftctl.raft.journal"):
            k = CheckedJournal(JPATH, d)
        assert list(k) == es[:4], cut
        assert d.read(JPATH) == whole[:last_start], cut
        if cut > last_start:
            assert f"cut {cut - last_start} bytes" in caplog.text
        # the cut is durable, and the log appends where the valid records end
        d.crash()
        k = CheckedJournal(JPATH, d)
        k.add(*entry(5, term=2))
        assert list(CheckedJournal(JPATH, d)) == es[:4] + [entry(5, term=2)]


@pytest.mark.parametrize("where", ["length", "crc", "payload_start", "payload_middle", "payload_end"])
def test_a_corrupt_byte_in_the_last_record_is_caught(where, caplog):
    disk = CrashDisk()
    j = CheckedJournal(JPATH, disk)
    es = fill(j, 5)
    whole = bytearray(disk.read(JPATH))
    start = j._offsets[-1]
    pos = {"length": start + 1, "crc": start + 5, "payload_start": start + 8,
           "payload_middle": (start + 8 + len(whole)) // 2, "payload_end": len(whole) - 1}[where]
    whole[pos] ^= 0x40
    d = CrashDisk()
    d.put(JPATH, bytes(whole))
    with caplog.at_level(logging.WARNING, logger="raftctl.raft.journal"):
        k = CheckedJournal(JPATH, d)
    assert list(k) == es[:4]
    assert "torn or corrupt tail" in caplog.text
    assert d.size(JPATH) == start


def test_unknown_format_is_refused_not_overwritten():
    d = CrashDisk()
    d.put(JPATH, b"something else entirely")
    with pytest.raises(JournalCorrupt):
        CheckedJournal(JPATH, d)
    assert d.read(JPATH) == b"something else entirely"


def test_add_outside_a_batch_is_durable_when_it_returns():
    d = CrashDisk()
    j = CheckedJournal(JPATH, d)
    es = fill(j, 3)
    j.deleteEntriesFrom(2)
    j.add(*entry(3, term=2))
    d.crash()
    assert list(CheckedJournal(JPATH, d)) == es[:2] + [entry(3, term=2)]


def test_one_fsync_per_batch(tmp_path):
    d = RecordingDisk()
    path = str(tmp_path / "raft.journal")
    j = CheckedJournal(path, d)
    d.fsyncs.clear()
    with j.batch():
        fill(j, 20)
        with j.batch():  # nested: still one sync, at the outermost exit
            j.deleteEntriesFrom(15)
            fill(j, 5, start=16)
        assert d.fsyncs == []
    assert d.fsyncs == [path]
    fill(j, 3, start=21)  # outside a batch: one per add
    assert d.fsyncs == [path] * 4
    with j.batch():
        pass  # nothing written, nothing synced
    assert d.fsyncs == [path] * 4
    assert [e[1] for e in CheckedJournal(path)] == list(range(1, 24))


def test_unsynced_batch_is_lost_whole_on_crash_synced_batch_survives():
    d = CrashDisk()
    j = CheckedJournal(JPATH, d)
    with j.batch():
        es = fill(j, 4)
    d.fail_at = d.ops + 3  # crash on the fsync that would end the second batch
    with pytest.raises(Crash):
        with j.batch():
            fill(j, 3, start=5)
    d.crash()
    assert list(CheckedJournal(JPATH, d)) == es


def test_compaction_is_crash_safe_at_every_step():
    base = CrashDisk()
    j = CheckedJournal(JPATH, base)
    es = fill(j, 30)
    start_ops = base.ops
    j.deleteEntriesTo(20)
    steps = base.ops - start_ops
    assert list(j) == es[20:] and steps >= 4  # write, fsync, rename, fsync dir
    seen = set()
    for k in range(steps + 1):
        writeback = 0
        while True:
            d = CrashDisk()
            j = CheckedJournal(JPATH, d)
            fill(j, 30)
            d.fail_at = d.ops + k
            try:
                j.deleteEntriesTo(20)
            except Crash:
                pass
            pending = d.max_pending()
            d.crash(writeback)
            after = list(CheckedJournal(JPATH, d))
            # never a mix, never a loss of the kept (acknowledged, uncompacted) records
            assert after in (es, es[20:]), (k, writeback)
            seen.add(len(after))
            if k == steps:
                assert after == es[20:]
            writeback += 1
            if writeback > pending:
                break
    assert seen == {30, 10}


def test_compaction_then_append_then_reopen():
    d = CrashDisk()
    j = CheckedJournal(JPATH, d)
    es = fill(j, 10)
    j.deleteEntriesTo(8)
    more = fill(j, 3, start=11)
    j.deleteEntriesFrom(3)
    d.crash()
    assert list(CheckedJournal(JPATH, d)) == es[8:] + more[:1]


def test_term_and_vote_are_durable_when_set_current_term_returns_at_every_crash_point():
    base = CrashDisk()
    CheckedJournal(JPATH, base).setCurrentTerm(3, "a")
    j = CheckedJournal(JPATH, base)
    start = base.ops
    j.setCurrentTerm(4, "b")
    steps = base.ops - start
    base.crash()
    k = CheckedJournal(JPATH, base)
    assert (k.getCurrentTerm(), k.getVotedForNodeId()) == (4, "b")
    for step in range(steps):
        d = CrashDisk()
        CheckedJournal(JPATH, d).setCurrentTerm(3, "a")
        j = CheckedJournal(JPATH, d)
        d.fail_at = d.ops + step
        with pytest.raises(Crash):
            j.setCurrentTerm(4, "b")
        d.crash()
        k = CheckedJournal(JPATH, d)
        assert (k.getCurrentTerm(), k.getVotedForNodeId()) in ((3, "a"), (4, "b")), step


def test_commit_index_is_written_on_the_one_second_timer():
    d = CrashDisk()
    j = CheckedJournal(JPATH, d)
    j.setRaftCommitIndex(9)
    d.crash()
    assert CheckedJournal(JPATH, d).getRaftCommitIndex() == 1
    j = CheckedJournal(JPATH, d)
    j.setRaftCommitIndex(9)
    j.onOneSecondTimer()
    d.crash()
    assert CheckedJournal(JPATH, d).getRaftCommitIndex() == 9


def test_migrates_pysyncobj_filejournal_and_meta(tmp_path, caplog):
    path = str(tmp_path / "raft.journal")
    old = pjournal.FileJournal(path)
    es = [entry(i, term=1 + i // 10) for i in range(1, 40)]
    for e in es:
        old.add(*e)
    old.deleteEntriesFrom(35)  # the old format's end offset, not the file size, ends the log
    old.setCurrentTerm(5, "127.0.0.1:4002")
    old.setRaftCommitIndex(30)
    old.onOneSecondTimer()
    old._destroy()
    assert open(path, "rb").read().startswith(b"PYSYNCOBJ")
    with caplog.at_level(logging.WARNING, logger="raftctl.raft.journal"):
        j = CheckedJournal(path)
    assert "migrated" in caplog.text
    assert list(j) == es[:35]
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (5, "127.0.0.1:4002", 30)
    j.add(*entry(36, term=5))
    j._destroy()
    assert open(path, "rb").read().startswith(LOG_MAGIC)
    assert not os.path.exists(path + ".compact") and not os.path.exists(path + ".meta.tmp")
    k = CheckedJournal(path)
    assert list(k) == es[:35] + [entry(36, term=5)] and k.getCurrentTerm() == 5


# -- snapshots (snapshot.py) ---------------------------------------------------------------------

from pysyncobj.config import SERIALIZER_STATE  # noqa: E402

from raftctl.node.raft.snapshot import SnapshotFiles  # noqa: E402

SPATH = "/data/raft.snapshot"
RAW = ((b"\x00", 9, 2), (b"\x00", 10, 2), ["a:1", "b:2"])


def snapshots(disk, encode=lambda raw: b"SNAP:" + repr(raw).encode(), use_fork=False, chunk=7):
    return SnapshotFiles(SPATH if not isinstance(disk, OsDisk) else disk.base + "/raft.snapshot", disk, encode,
                         lambda data: (data,), chunk, use_fork=use_fork)


def run_to_end(s, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, ident = s.checkSerializing()
        if state not in (SERIALIZER_STATE.SERIALIZING,):
            return state, ident
        time.sleep(0.01)
    raise AssertionError("snapshot never finished")


def test_snapshot_encoding_runs_in_a_child_and_the_caller_returns_at_once(tmp_path):
    import time
    disk = OsDisk()
    disk.base = str(tmp_path)

    def slow(raw):
        time.sleep(0.5)
        return b"SNAP:" + repr(raw).encode()

    s = snapshots(disk, slow, use_fork=True)
    t0 = time.monotonic()
    s.serialize((None,) + RAW, 10)
    assert time.monotonic() - t0 < 0.3  # pysyncobj's own Serializer runs the 0.5 s encode right here
    assert s.checkSerializing() == (SERIALIZER_STATE.SERIALIZING, 10)
    assert s.getTransmissionData("n2") is None  # nothing sent while the file is being replaced
    assert run_to_end(s) == (SERIALIZER_STATE.SUCCESS, 10)
    assert s.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    assert open(s.path, "rb").read() == b"SNAP:" + repr(RAW).encode()
    assert sorted(os.listdir(tmp_path)) == ["raft.snapshot"]
    assert s.deserialize() == (None, b"SNAP:" + repr(RAW).encode())


def test_a_failing_snapshot_child_reports_failed_and_keeps_the_old_file(tmp_path):
    disk = OsDisk()
    disk.base = str(tmp_path)
    (tmp_path / "raft.snapshot").write_bytes(b"old")

    def boom(raw):
        raise RuntimeError("no")

    s = snapshots(disk, boom, use_fork=True)
    s.serialize((None,) + RAW, 10)
    assert run_to_end(s) == (SERIALIZER_STATE.FAILED, 10)
    assert sorted(os.listdir(tmp_path)) == ["raft.snapshot"] and (tmp_path / "raft.snapshot").read_bytes() == b"old"


def test_taking_a_snapshot_is_crash_safe_and_durable_before_success_is_reported():
    base = CrashDisk()
    base.put(SPATH, b"old snapshot")
    s = snapshots(base)
    start = base.ops
    s.serialize((None,) + RAW, 10)
    steps = base.ops - start
    assert s.checkSerializing() == (SERIALIZER_STATE.SUCCESS, 10)
    new = base.read(SPATH)
    base.crash()  # success was reported (pysyncobj now compacts the journal): the new file must survive
    assert base.read(SPATH) == new != b"old snapshot"
    for k in range(steps):
        d = CrashDisk()
        d.put(SPATH, b"old snapshot")
        s = snapshots(d)
        d.fail_at = d.ops + k
        s.serialize((None,) + RAW, 10)  # caught and logged inside (pysyncobj expects no exception)
        for writeback in range(3):
            e = CrashDisk()
            e.names, e.durable_names = dict(d.names), dict(d.durable_names)
            e.crash(writeback)
            assert e.read(SPATH) in (b"old snapshot", new), (k, writeback)


def test_a_received_snapshot_is_durable_under_its_name_before_it_counts():
    payload = b"leader's snapshot " * 10
    chunks = [payload[i:i + 7] for i in range(0, len(payload), 7)]
    base = CrashDisk()
    base.put(SPATH, b"old snapshot")
    s = snapshots(base)
    results = [s.setTransmissionData((c, i == 0, False)) for i, c in enumerate(chunks)]
    start = base.ops
    assert results == [False] * len(chunks) and s.setTransmissionData((b"", False, True)) is True
    steps = base.ops - start
    base.crash()  # pysyncobj now loads it and clears the journal: it must survive
    assert base.read(SPATH) == payload
    for k in range(steps):
        d = CrashDisk()
        d.put(SPATH, b"old snapshot")
        s = snapshots(d)
        for i, c in enumerate(chunks):
            s.setTransmissionData((c, i == 0, False))
        d.fail_at = d.ops + k
        with pytest.raises(Crash):
            s.setTransmissionData((b"", False, True))
        d.crash()
        assert d.read(SPATH) in (b"old snapshot", payload), k


def test_a_received_snapshot_supersedes_the_one_being_written(tmp_path):
    import time
    disk = OsDisk()
    disk.base = str(tmp_path)

    def slow(raw):
        time.sleep(5)
        return b"ours, older"

    s = snapshots(disk, slow, use_fork=True)
    s.serialize((None,) + RAW, 10)
    assert s.setTransmissionData((b"theirs, newer", True, False)) is False
    t0 = time.monotonic()
    assert s.setTransmissionData((b"", False, True)) is True
    assert time.monotonic() - t0 < 2
    # never renamed over the newer one, and pysyncobj must not compact the journal to its index
    assert s.checkSerializing() == (SERIALIZER_STATE.FAILED, 10)
    assert open(s.path, "rb").read() == b"theirs, newer"
    assert sorted(os.listdir(tmp_path)) == ["raft.snapshot"]


def test_sending_a_snapshot_in_chunks_per_follower():
    d = CrashDisk()
    d.put(SPATH, b"0123456789abcdefghij")
    s = snapshots(d, chunk=8)
    got = [s.getTransmissionData("n2") for _ in range(4)]
    assert got == [(b"01234567", True, False), (b"89abcdef", False, False), (b"ghij", False, False),
                   (b"", False, True)]
    assert s.getTransmissionData("n3") == (b"01234567", True, False)
    s.cancelTransmisstion("n3")
    assert s.getTransmissionData("n3") == (b"01234567", True, False)


def test_leftovers_of_a_crashed_run_are_removed_never_installed():
    d = CrashDisk()
    d.put(SPATH, b"good")
    for leftover in (".tmp", ".part", ".1.tmp"):
        d.put(SPATH + leftover, b"half")
    snapshots(d)
    assert d.listdir("/data") == ["raft.snapshot"] and d.read(SPATH) == b"good"


# -- RaftNode wiring (__init__.py) ---------------------------------------------------------------

def _free_addr() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _node(data_dir: str, disk=None):
    from raftctl.node import raft
    return raft.RaftNode(_free_addr(), [], data_dir, None, on_applied=lambda: None, disk=disk,
                         conf_overrides={"autoTick": False})


def test_a_replica_data_dir_from_before_issue_13_is_migrated_on_start(tmp_path):
    old = pjournal.FileJournal(str(tmp_path / "raft.journal"))
    es = [(b"\x00", 1, 0)] + [entry(i, term=3) for i in range(2, 30)]
    for e in es:
        old.add(*e)
    old.setCurrentTerm(4, "127.0.0.1:9")
    old._destroy()
    node = _node(str(tmp_path))
    try:
        log_ = node._SyncObj__raftLog
        assert isinstance(log_, CheckedJournal) and list(log_) == es
        assert node.raftCurrentTerm == 4 and node._SyncObj__votedForNodeId == "127.0.0.1:9"
    finally:
        node.destroy()
    assert open(tmp_path / "raft.journal", "rb").read().startswith(LOG_MAGIC)


def test_a_node_on_a_given_disk_writes_nothing_to_the_real_file_system_and_loads_its_snapshot(tmp_path):
    from raftctl.node import raft
    from raftctl.statemachine import commands as c
    from raftctl.statemachine.apply import apply
    from raftctl.statemachine.state import State

    st = State()
    assert apply(st, c.ClaimEpoch(term=1)).ok
    d = CrashDisk()
    data_dir = str(tmp_path / "not-created")
    d.put(data_dir + "/raft.snapshot",
          raft._snapshot_bytes(raft.SEED_ENTRIES[0], raft.SEED_ENTRIES[1], [], st.snapshot()))
    node = _node(data_dir, disk=d)
    try:
        node.doTick()  # pysyncobj's first tick loads the snapshot only if os.path.isfile() finds it
        assert node.state.epoch == 1 and node.state.digest() == st.digest()
        assert list(node._SyncObj__raftLog)[:2] == [raft.SEED_ENTRIES[1], raft.SEED_ENTRIES[0]]
    finally:
        node.destroy()
    assert not os.path.exists(data_dir)
    assert d.listdir(data_dir) == ["raft.journal", "raft.snapshot"]


def test_installing_a_snapshot_counts_as_hearing_from_the_leader(tmp_path):
    """A big state takes seconds to restore on the tick thread; the election timer restarts after it."""
    from raftctl.node import raft
    from raftctl.statemachine.state import State

    d = CrashDisk()
    data_dir = str(tmp_path / "n")
    d.put(data_dir + "/raft.snapshot",
          raft._snapshot_bytes(raft.SEED_ENTRIES[0], raft.SEED_ENTRIES[1], [], State().snapshot()))
    node = _node(data_dir, disk=d)
    try:
        term = node.raftCurrentTerm
        node._SyncObj__raftElectionDeadline = 0  # as if the restore took longer than the election timeout
        node.doTick()  # loads the snapshot, then checks the election deadline
        assert node._SyncObj__raftState == 0 and node.raftCurrentTerm == term  # still a follower, same term
    finally:
        node.destroy()


def test_a_followers_append_entries_costs_one_journal_sync_before_it_answers():
    from raftctl.node import raft

    d = CrashDisk()
    node = raft.RaftNode(_free_addr(), [_free_addr()], "/data", None, on_applied=lambda: None, disk=d,
                         conf_overrides={"autoTick": False})
    try:
        leader = next(iter(node._SyncObj__otherNodes))
        d.fsyncs.clear()
        entries = [entry(i, term=1) for i in range(2, 12)]
        node._SyncObj__onMessageReceived(leader, {"type": "append_entries", "term": 1, "commit_index": 1,
                                                  "entries": entries, "prevLogIdx": 1, "prevLogTerm": 0})
        assert list(node._SyncObj__raftLog)[1:] == entries
        assert d.fsyncs.count("/data/raft.journal") == 1  # (and the new term's meta file, once)
        d.crash()  # the answer has been sent: all ten entries must survive
        assert list(CheckedJournal("/data/raft.journal", d))[1:] == entries
    finally:
        node.destroy()
