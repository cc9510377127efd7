"""The proposer as a specification: nothing one caller sends stops the write path.

A fake raft object stands in for pysyncobj (``apply_entry(data, callback)``) and applies each entry
to a real State, so every answer below is what the state machine computed.
"""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysyncobj import FAIL_REASON

from raftctl.clock import FakeClock
from raftctl.errors import OutcomeUnknown, RaftctlError, Unavailable, ValidationError
from raftctl.node import proposer as proposer_mod
from raftctl.node.proposer import Proposer
from raftctl.statemachine import apply as apply_mod
from raftctl.statemachine import commands as c
from raftctl.statemachine.state import State

SPEC = {"name": "web", "image": "web:1", "command": ["true"], "replicas": 1,
        "resources": {"cpu": 100, "memory": 1 << 20, "pids": 10}}


class FakeRaft:
    """Applies each entry at once to a real State; can be told to raise on the next submits."""

    def __init__(self) -> None:
        self.state = State()
        self.entries: list[list[dict]] = []
        self.raise_next = 0
        self.answer: list | None = None  # a canned result list instead of applying

    def leader_address(self) -> str | None:
        return "10.0.0.1:7000"

    def apply_entry(self, data: bytes, callback) -> None:
        if self.raise_next:
            self.raise_next -= 1
            raise RuntimeError("boom inside raft")
        self.entries.append(c.decode_entry(data))
        results = self.answer if self.answer is not None else apply_mod.apply_entry(self.state, data)
        callback(results, FAIL_REASON.SUCCESS)


@pytest.fixture
async def prop():
    raft = FakeRaft()
    p = Proposer(raft, timeout=1.0)
    p.start()
    yield p
    await p.stop()


def job(name: str, **extra) -> c.PutJob:
    return c.PutJob(spec={**SPEC, "name": name, **extra})


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


async def test_each_command_of_a_batch_gets_its_own_result(prop):
    results = await asyncio.gather(*(prop.propose(job(f"j{i}")) for i in range(5)))
    assert [r.value["name"] for r in results] == [f"j{i}" for i in range(5)]
    assert len(prop.raft.entries) == 1 and len(prop.raft.entries[0]) == 5  # one group-commit entry


async def test_a_lone_surrogate_is_refused_to_its_caller_while_the_batch_commits(prop):
    bad = job("bad", env={"GREETING": "\ud800"})
    results = await asyncio.gather(prop.propose(job("a")), prop.propose(bad), prop.propose(job("b")),
                                   return_exceptions=True)
    assert isinstance(results[1], ValidationError)
    assert results[1].http_status == 400 and results[1].field == "spec.env.GREETING"
    assert [results[0].value["name"], results[2].value["name"]] == ["a", "b"]
    assert sorted(prop.raft.state.jobs) == ["a", "b"]
    # and the write path is still alive
    assert (await prop.propose(job("c"))).ok
    assert await prop.barrier() >= 0


async def test_a_command_nested_too_deep_to_decode_is_refused_alone(prop):
    deep = job("deep", env={"X": nested(500)})
    results = await asyncio.gather(prop.propose(job("a")), prop.propose(deep), prop.propose(job("b")),
                                   return_exceptions=True)
    assert isinstance(results[1], ValidationError) and results[1].field == "spec"
    assert results[0].ok and results[2].ok
    assert sorted(prop.raft.state.jobs) == ["a", "b"]
    assert all(isinstance(cmd, dict) for entry in prop.raft.entries for cmd in entry)


async def test_nesting_that_still_decodes_is_accepted(prop):
    # it decodes and reaches apply, where the JobSpec record's shape check (not the decoder) judges it:
    # an env value must be a string
    r = await prop.propose(job("ok", env={"X": nested(300)}))
    assert (r.ok, r.error.code, r.error.field) == (False, "invalid", "env[...]")
    assert (await prop.propose(job("ok", env={"X": "x"}))).ok


async def test_an_exception_inside_raft_fails_only_its_batch(prop):
    prop.raft.raise_next = 1
    results = await asyncio.gather(prop.propose(job("a")), prop.propose(job("b")), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert prop.raft.state.jobs == {}
    r = await prop.propose(job("c"))
    assert r.ok and list(prop.raft.state.jobs) == ["c"]
    assert prop.failed_batches == 1 and not prop._task.done()


async def test_a_bug_in_the_flusher_fails_its_batch_and_the_flusher_goes_on(prop, monkeypatch):
    real = c.join_entry
    calls = {"n": 0}

    def flaky(items):  # the first call checks the command (round trip), the second builds the batch
        calls["n"] += 1
        if calls["n"] == 2:
            raise TypeError("a bug")
        return real(items)
    monkeypatch.setattr(c, "join_entry", flaky)
    with pytest.raises(RaftctlError) as err:
        await prop.propose(job("a"))
    assert err.value.code == "internal" and err.value.http_status == 500
    assert (await prop.propose(job("b"))).ok
    assert list(prop.raft.state.jobs) == ["b"]


async def test_an_entry_rejected_as_a_whole_answers_every_command(prop):
    rejection = apply_mod.Result(False, 0, error=apply_mod.Rejection("corrupt_entry", "garbage"))
    prop.raft.answer = [rejection]
    results = await asyncio.gather(*(prop.propose(job(f"j{i}")) for i in range(3)))
    assert [r.error.code for r in results] == ["corrupt_entry"] * 3  # none left to time out


async def test_commands_without_an_id_get_none_invented(prop):
    await prop.propose(job("a"))
    await prop.propose(job("b", replicas=2), timeout=1.0)
    await prop.propose(c.ScaleJob(name="a", replicas=3, id="req-7"))
    assert [cmd["id"] for entry in prop.raft.entries for cmd in entry] == ["", "", "req-7"]


def test_join_entry_is_the_canonical_encoding_of_the_batch():
    for n in (0, 1, 23, 24, 255, 256, 1024):
        wires = [{**c.to_wire(c.ScaleJob(name=f"j{i}", replicas=i)), "at": i} for i in range(n)]
        assert c.join_entry([c.encode_command(w) for w in wires]) == c.encode_wire_entry(wires)


def test_round_trip_names_the_field():
    with pytest.raises(ValidationError) as err:
        proposer_mod.round_trip(c.to_wire(c.ScaleJob(name="x", reason="\udfff")))
    assert err.value.field == "reason"


_leaves = st.one_of(st.text(max_size=8), st.integers(min_value=-(1 << 70), max_value=1 << 70), st.booleans(),
                   st.none(), st.binary(max_size=8))


@st.composite
def _flat_wires(draw: st.DrawFn) -> dict:
    """A wire map of leaves only: a command's fields (some of them, maybe one it lacks), each any leaf type."""
    op = draw(st.sampled_from(sorted(c.COMMANDS)))
    names = sorted(c._FIELDS[c.COMMANDS[op]]) + ["nope"]
    wire = {"v": draw(st.sampled_from([c.SCHEMA_VERSION, c.SCHEMA_VERSION + 1])), "op": op}
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        wire[name] = draw(_leaves)
    return wire


@settings(max_examples=400, deadline=None)
@given(_flat_wires())
def test_a_flat_command_gets_the_verdict_a_full_decode_gives(wire: dict) -> None:
    # round_trip checks a map of leaves without decoding it: it must refuse exactly what the decode refuses
    assert c.flat(wire)
    try:
        item = c.encode_command(wire)
    except Exception:
        return   # refused before either check (a lone surrogate): test_round_trip_names_the_field
    try:
        proposer_mod.decodes_back(item)
        full = None
    except c.DecodeError as exc:
        full = (exc.code, exc.field)
    try:
        assert proposer_mod.round_trip(wire) == item
        fast = None
    except ValidationError as exc:
        fast = ("refused", exc.field)
    assert (fast is None) == (full is None)
    if full is not None:
        assert fast is not None
        if full[1] in ("v", "op"):   # checked first on both paths
            assert fast[1] == full[1]
        else:   # the first bad field in the map's own order, or in canonical CBOR's: a field bad on its own either way
            def refused_alone(key: str) -> bool:
                try:
                    c.from_wire({"v": wire["v"], "op": wire["op"], key: wire[key]})
                except c.DecodeError:
                    return True
                return False
            bad = {k for k in wire if k not in ("v", "op") and refused_alone(k)}
            assert full[1] in bad and fast[1] in bad


def test_nested_commands_still_decode_back() -> None:
    wire = c.to_wire(c.PutJob(spec={"name": "x", "nested": [[[]]]}))
    assert not c.flat(wire)
    assert proposer_mod.round_trip(wire) == c.encode_command(wire)
    assert c.flat(c.to_wire(c.ScaleJob(name="x", replicas=2)))


class _Dies(BaseException):
    """Not an Exception: escapes the supervisor loop and kills the task (what 'dies anyway' means)."""


async def test_a_flusher_task_that_dies_anyway_is_started_again(prop, monkeypatch):
    real = Proposer._flusher
    deaths = {"n": 0}

    async def dying(self):
        if deaths["n"] == 0:
            deaths["n"] += 1
            raise _Dies()
        await real(self)
    monkeypatch.setattr(Proposer, "_flusher", dying)
    await prop.stop()
    prop.start()
    first = prop._task
    await asyncio.sleep(0.05)
    assert first.done() and prop._task is not first and prop.restarts == 1
    assert (await prop.propose(job("after"))).ok


async def test_writes_queued_when_the_flusher_died_are_sent_by_its_successor():
    raft = FakeRaft()
    p = Proposer(raft, timeout=1.0, max_batch=1)
    real = c.join_entry
    calls = {"n": 0}

    def dies_on_first_batch(items):
        calls["n"] += 1
        if calls["n"] == 3:  # calls 1-2: the round trips of a and b; call 3: the first batch
            raise _Dies()
        return real(items)
    c.join_entry = dies_on_first_batch
    try:
        p.start()
        results = await asyncio.gather(p.propose(job("a")), p.propose(job("b")), return_exceptions=True)
    finally:
        c.join_entry = real
        await p.stop()
    assert isinstance(results[0], OutcomeUnknown)  # its batch died with the task: outcome unknown
    assert results[1].ok and list(raft.state.jobs) == ["b"] and p.restarts == 1


class LeaderlessRaft(FakeRaft):
    """pysyncobj on a replica cut off from the others (commandsWaitLeader): while it knows no leader it keeps
    what it is handed and applies it whenever it hears a leader again, however late."""

    def __init__(self, leaders: list[str | None]) -> None:
        super().__init__()
        self.leaders = leaders       # what leader_address answers, call by call (the last one sticks)
        self.held: list[tuple[bytes, object]] = []

    def leader_address(self) -> str | None:
        return self.leaders.pop(0) if len(self.leaders) > 1 else self.leaders[0]

    def apply_entry(self, data: bytes, callback) -> None:
        if self.leaders[0] is None:
            self.held.append((data, callback))
            return
        super().apply_entry(data, callback)

    def hear_leader(self) -> None:
        self.leaders = ["10.0.0.1:7000"]
        for data, callback in self.held:
            super().apply_entry(data, callback)
        self.held = []


async def test_a_replica_that_knows_no_leader_refuses_writes_and_hands_raft_nothing():
    # jepsen-style finding 9: agents' reports sent to a replica cut off for 35 s were answered "not applied"
    # after 5 s, held by pysyncobj and applied 25-35 s late at the heal, over newer state
    raft = LeaderlessRaft([None])
    clock = FakeClock()
    p = Proposer(raft, timeout=1.0, clock=clock)
    p.leader_wait_s = 0.3  # how long a write waits for an election, on the proposer's clock
    p.start()
    try:
        t0 = clock.monotonic()
        with pytest.raises(Unavailable) as err:
            await p.propose(job("stale"))
        took = clock.monotonic() - t0
        with pytest.raises(Unavailable):
            await p.barrier()
    finally:
        await p.stop()
    assert not isinstance(err.value, OutcomeUnknown), err.value  # certainly not applied, and says so
    # the wait polled the clock until leader_wait_s had passed on it, and no longer
    assert "nothing was applied" in str(err.value)
    assert 0.3 <= took < 0.3 + proposer_mod.LEADER_POLL_S + 1e-9 and set(clock.sleeps) == {proposer_mod.LEADER_POLL_S}
    assert raft.held == [] and raft.entries == []
    raft.hear_leader()  # the partition heals
    assert "stale" not in raft.state.jobs


async def test_a_command_without_a_time_is_stamped_with_the_proposers_clock():
    clock = FakeClock(wall_ms=1_234_000)
    raft = FakeRaft()
    p = Proposer(raft, timeout=1.0, clock=clock)
    p.start()
    try:
        await p.propose(job("stamped"))
        await p.propose(c.PutJob(spec={**SPEC, "name": "dated"}, at=99))
    finally:
        await p.stop()
    assert [cmd["at"] for entry in raft.entries for cmd in entry] == [1_234_000, 99]


async def test_a_write_waits_for_an_election_then_commits():
    raft = LeaderlessRaft([None])
    p = Proposer(raft, timeout=2.0)
    p.leader_wait_s = 1.0
    p.start()
    try:
        asyncio.get_running_loop().call_later(0.2, raft.hear_leader)
        r = await p.propose(job("after-election"))
    finally:
        await p.stop()
    assert r.ok and list(raft.state.jobs) == ["after-election"]


async def test_a_batch_whose_replica_lost_its_leader_before_the_flush_is_refused_unsent():
    raft = LeaderlessRaft(["10.0.0.1:7000", None])  # known when the write arrives, gone when the batch is sent
    p = Proposer(raft, timeout=1.0)
    p.leader_wait_s = 0.2
    p.start()
    try:
        with pytest.raises(Unavailable) as err:
            await p.propose(job("late"))
        assert not isinstance(err.value, OutcomeUnknown)
        raft.hear_leader()
        assert raft.entries == [] and "late" not in raft.state.jobs
        assert (await p.propose(job("next"))).ok  # the slot came back
    finally:
        await p.stop()


class SlowRaft(FakeRaft):
    """Holds each entry until told to commit it; names ``leader`` as the leader."""

    def __init__(self, leader: str) -> None:
        super().__init__()
        self.leader = leader
        self.pending: list[tuple[bytes, object]] = []

    def leader_address(self) -> str | None:
        return self.leader

    def apply_entry(self, data: bytes, callback) -> None:
        self.pending.append((data, callback))

    def commit_all(self) -> None:
        for data, callback in self.pending:
            super().apply_entry(data, callback)
        self.pending = []


async def test_a_leader_change_fails_writes_handed_to_the_old_leader_and_keeps_those_handed_to_the_new_one():
    # H1's SIGTERM trials: the replica that had just become leader failed the writes it had proposed to itself
    # (503 "the leader changed while the write was in flight") in the moments before it noticed its new role
    raft = SlowRaft("old:7000")
    p = Proposer(raft, timeout=2.0)
    p.start()
    try:
        to_old = asyncio.ensure_future(p.propose(job("a")))
        await asyncio.sleep(0.02)
        raft.leader = "me:7000"          # this replica won the election
        to_me = asyncio.ensure_future(p.propose(job("b")))
        await asyncio.sleep(0.02)
        p.leader_changed("me:7000")      # Leadership._step noticed the new leader
        with pytest.raises(OutcomeUnknown) as err:
            await to_old
        assert err.value.handed_to == "old:7000"  # what the API's retry compares with the leader after
        raft.commit_all()
        assert (await to_me).ok
    finally:
        await p.stop()


async def test_a_step_that_saw_an_election_late_keeps_writes_handed_to_the_leader_raft_names_now():
    # CI, twice: a write proposed again after its first leader was paused waited out the election, was handed
    # to its winner, and was failed by a Leadership step that read "no leader" from a status cached before it
    raft = SlowRaft("winner:7000")
    p = Proposer(raft, timeout=2.0)
    p.start()
    try:
        handed = asyncio.ensure_future(p.propose(job("a")))
        await asyncio.sleep(0.02)
        p.leader_changed(None)           # the step's status still showed the election
        await asyncio.sleep(0.02)
        assert not handed.done()
        raft.commit_all()
        assert (await handed).ok
    finally:
        await p.stop()


async def test_a_write_begun_during_an_election_names_the_winner_it_was_handed_to():
    raft = SlowRaft(None)  # type: ignore[arg-type]  # no leader known when the write arrives
    p = Proposer(raft, timeout=2.0)
    p.start()
    try:
        write = asyncio.ensure_future(p.propose(job("a")))
        await asyncio.sleep(0.05)
        assert not write.done() and raft.pending == []  # waiting for the election, not handed to raft
        raft.leader = "winner:7000"
        await asyncio.sleep(0.05)
        assert len(raft.pending) == 1
        raft.leader = "next:7000"         # the winner lost its term before answering
        p.leader_changed("next:7000")
        with pytest.raises(OutcomeUnknown) as err:
            await write
        assert err.value.handed_to == "winner:7000"
    finally:
        await p.stop()


@pytest.mark.parametrize("reason, refused", [(FAIL_REASON.LEADER_CHANGED, False), (FAIL_REASON.NOT_LEADER, True)])
async def test_a_write_raft_fails_names_the_leader_it_was_handed_to(reason: int, refused: bool) -> None:
    raft = SlowRaft("a:7000")
    p = Proposer(raft, timeout=2.0)
    p.start()
    try:
        write = asyncio.ensure_future(p.propose(job("a")))
        await asyncio.sleep(0.02)
        raft.leader = "b:7000"
        (_, callback), = raft.pending
        callback(None, reason)
        with pytest.raises(Unavailable) as err:
            await write
        assert isinstance(err.value, proposer_mod.RefusedByRaft) == refused
        assert isinstance(err.value, OutcomeUnknown) != refused
        assert err.value.handed_to == "a:7000"
    finally:
        await p.stop()


class SilentRaft(FakeRaft):
    """Takes entries and keeps their callbacks (pysyncobj lost them, or they come later)."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list = []

    def apply_entry(self, data: bytes, callback) -> None:
        self.entries.append(c.decode_entry(data))
        self.callbacks.append((data, callback))


async def test_a_write_raft_never_answers_is_outcome_unknown_and_a_late_answer_breaks_nothing():
    raft = SilentRaft()
    p = Proposer(raft, timeout=5.0)
    p.start()
    try:
        with pytest.raises(OutcomeUnknown, match="not confirmed in time"):
            await p.propose(job("lost"), timeout=0.05)
        data, callback = raft.callbacks.pop()
        callback(apply_mod.apply_entry(raft.state, data), FAIL_REASON.SUCCESS)  # the answer after the timeout
        await asyncio.sleep(0.01)
        assert "lost" in raft.state.jobs  # it was applied after all: "unknown" was the honest answer
    finally:
        await p.stop()


async def test_a_caller_that_goes_away_leaves_the_rest_of_its_entry_answered():
    raft = SilentRaft()
    p = Proposer(raft, timeout=5.0, max_inflight=1)
    p.start()
    try:
        first = asyncio.create_task(p.propose(job("first")))
        await asyncio.sleep(0.01)  # `first` is in flight alone; the next two share the next entry
        gone = asyncio.create_task(p.propose(job("gone")))
        kept = asyncio.create_task(p.propose(job("kept")))
        await asyncio.sleep(0.01)
        gone.cancel()  # e.g. its HTTP client disconnected
        for _ in range(2):
            while not raft.callbacks:
                await asyncio.sleep(0.005)
            data, callback = raft.callbacks.pop(0)
            callback(apply_mod.apply_entry(raft.state, data), FAIL_REASON.SUCCESS)
        assert (await first).ok and (await kept).ok
        assert gone.cancelled() and {"first", "gone", "kept"} <= set(raft.state.jobs)
    finally:
        await p.stop()
