"""Request-id dedup as a specification, and apply's promise that a rejection changes nothing.

- Eviction order is replicated state (each entry's ``seq``), so a replica restored from a snapshot
  evicts exactly what a replica that replayed the log evicts.
- An id is bound to its operation and the digest of its command: a retry is answered from the table,
  the same id on a different command is ``request_id_conflict`` (409 on X-Request-Id).
- Every op: a rejected command leaves ``state.snapshot()`` byte-identical (one with a request id adds only its
  dedup entry: a rejection and a no-op are answers like any other, and a later copy of the request gets them).
"""
from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from raftctl.statemachine import apply as apply_mod
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State

SPEC = {"name": "web", "image": "web:1", "command": ["true"], "replicas": 2,
        "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}, "ports": [{"name": "http"}], "service": "web"}
M1 = dict(machine="m1", address="127.0.0.2", fault_domain={"zone": "z1"}, labels={},
          resources={"cpu": 2000, "memory": 1 << 30, "pids": 1000}, ports=[31000, 31999], runtime="sim")
PLACE = {"job": "web", "version": 1, "replica": 1, "machine": "m1",
         "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}, "ports": {"http": 31001}}


@contextlib.contextmanager
def max_dedup(n: int):
    old = apply_mod.MAX_DEDUP
    apply_mod.MAX_DEDUP = n
    try:
        yield
    finally:
        apply_mod.MAX_DEDUP = old


def rich_state() -> State:
    """A state with something in every table a command can touch."""
    s = State()
    for cmd in (c.RegisterMachine(**M1), c.PutJob(spec=SPEC), c.ClaimEpoch(term=1, node="n1"),
                c.CreateToken(hash="a" * 64, role="reader", name="r1", id="tok-1"),
                c.PutImage(name="web:1", digest="sha256:" + "b" * 64, size=1), c.SetMember(raft="127.0.0.1:1", api="x"),
                c.ScaleJob(name="web", replicas=2, id="scale-1")):
        assert apply(s, cmd).ok, cmd
    r = apply(s, c.Plan(epoch=1, place=[{**PLACE, "replica": 0, "ports": {"http": 31000}}]))
    assert r.value["placed"], r
    return s


PID = "web-00001"

# (name, command, expected code, expected field); the command is applied to rich_state()
REJECTED = [
    ("put job bad name", c.PutJob(spec={**SPEC, "name": "Bad"}), "invalid", "name"),
    ("put job service a list", c.PutJob(spec={**SPEC, "service": ["web"]}), "invalid", "service"),
    ("put job ports a map", c.PutJob(spec={**SPEC, "ports": {"http": 80}}), "invalid", "ports"),
    ("put job bool replicas", c.PutJob(spec={**SPEC, "replicas": True}), "invalid", "replicas"),
    ("put job cas", c.PutJob(spec={**SPEC, "replicas": 3}, cas=999), "cas_failed", "cas"),
    ("delete missing job", c.DeleteJob(name="nope"), "not_found", "name"),
    ("scale stopped range", c.ScaleJob(name="web", replicas=-1), "invalid", "replicas"),
    ("rollback missing", c.RollbackJob(name="web", version=7), "not_found", "version"),
    ("register bad id", c.RegisterMachine(**{**M1, "machine": "../x"}), "invalid", "id"),
    ("register bool cpu", c.RegisterMachine(**{**M1, "resources": {"cpu": True, "memory": 1, "pids": 1}}),
     "invalid", "resources.cpu"),
    ("down stale epoch", c.MachineDown(machine="m1", epoch=9), "stale_epoch", "epoch"),
    ("silent stale epoch", c.MachinesSilent(silent={"m1": 1}, epoch=9), "stale_epoch", "epoch"),
    ("silent age not whole ms", c.MachinesSilent(silent={"m1": 1.5}, epoch=1), "invalid", "silent.m1"),
    ("up while up", c.MachineUp(machine="m1"), "conflict", "machine"),
    ("drain unknown", c.DrainMachine(machines=["m1", "zz"]), "not_found", "machine"),
    ("drain unhashable id", c.DrainMachine(machines=["m1", ["m1"]]), "invalid", "machines"),
    ("claim old epoch", c.ClaimEpoch(term=1), "stale_epoch", "term"),
    ("plan stale", c.Plan(epoch=0, place=[PLACE]), "stale_epoch", "epoch"),
    ("plan item not a map", c.Plan(epoch=1, place=[PLACE, "x"]), "invalid", "place.1"),
    ("plan item without replica", c.Plan(epoch=1, place=[PLACE, {k: v for k, v in PLACE.items() if k != "replica"}]),
     "invalid", "place.1.replica"),
    ("plan item unhashable job", c.Plan(epoch=1, place=[{**PLACE, "job": ["web"]}]), "invalid", "place.0.job"),
    ("plan item text cpu", c.Plan(epoch=1, place=[{**PLACE, "resources": {"cpu": "250m"}}]),
     "invalid", "place.0.resources[...]"),
    ("plan item port out of range", c.Plan(epoch=1, place=[{**PLACE, "ports": {"http": 70000}}]),
     "invalid", "place.0.ports[...]"),
    ("plan item ports a list", c.Plan(epoch=1, place=[{**PLACE, "ports": [31001]}]), "invalid", "place.0.ports"),
    ("plan stop not a map", c.Plan(epoch=1, place=[PLACE], stop=[PID]), "invalid", "stop.0"),
    ("plan stop bad reason", c.Plan(epoch=1, stop=[{"placement": PID, "reason": 5}]), "invalid", "stop.0.reason"),
    ("plan pending not text", c.Plan(epoch=1, place=[PLACE], pending={"web": ["x"]}), "invalid", "pending"),
    ("update foreign machine", c.PlacementUpdate(placement=PID, machine="m2", state="running"), "forbidden", "machine"),
    ("update bad state", c.PlacementUpdate(placement=PID, machine="m1", state="flying"), "invalid", "state"),
    ("token bad hash", c.CreateToken(hash="zz", role="reader", name="x"), "invalid", "hash"),
    ("token duplicate name", c.CreateToken(hash="c" * 64, role="reader", name="r1"), "conflict", "name"),
    ("revoke unknown", c.RevokeToken(name="nobody"), "not_found", "name"),
    ("image bad name", c.PutImage(name="Web", digest="sha256:" + "b" * 64), "invalid", "name"),
    ("member without raft", c.SetMember(raft=""), "invalid", "raft"),
    ("remove unknown member", c.RemoveMember(raft="127.0.0.1:9"), "not_found", "raft"),
    ("retire unknown", c.Retire(epoch=1, placements=[PID, "zz"]), "not_found", "placements"),
    ("retire unhashable", c.Retire(epoch=1, placements=[PID, {"id": PID}]), "invalid", "placements"),
    ("deployment text surge", c.SetDeployment(epoch=1, job="web", deployment={"status": "running", "surge": "2"}),
     "invalid", "deployment.surge"),
    ("deployment without status", c.SetDeployment(epoch=1, job="web", deployment={"surge": 1}),
     "invalid", "deployment.status"),
    ("id reused by another op", c.RevokeToken(name="r1", id="tok-1"), "request_id_conflict", "X-Request-Id"),
    ("id reused by another command", c.ScaleJob(name="web", replicas=3, id="scale-1"),
     "request_id_conflict", "X-Request-Id"),
]


def test_every_op_that_can_reject_is_in_the_table():
    covered = {type(cmd) for _, cmd, _, _ in REJECTED}
    assert covered == set(apply_mod.HANDLERS) - {c.Noop}


@pytest.mark.parametrize("name,cmd,code,field", REJECTED, ids=[r[0] for r in REJECTED])
def test_a_rejected_command_leaves_the_snapshot_byte_identical(name, cmd, code, field):
    s = rich_state()
    before = s.snapshot()
    r = apply(s, cmd)
    assert not r.ok
    assert (r.error.code, r.error.field) == (code, field), r.error
    assert s.snapshot() == before
    assert State.restore(before).digest() == s.digest()


# -- binding an id to its command ------------------------------------------------------------

def test_a_rejected_request_applied_again_later_gets_its_rejection_and_changes_nothing():
    """jepsen-style seed 5: a delete answered not_found; the copy a paused leader still held was proposed 7 s
    later, after the job had been written, and deleted it: a client told "failed" saw its delete happen."""
    s = State()
    assert not apply(s, c.DeleteJob(name="web", id="del-1", at=1)).ok       # no such job: not_found
    assert apply(s, c.PutJob(spec=SPEC, id="put-1", at=2)).ok
    before = s.snapshot()
    late = apply(s, c.DeleteJob(name="web", id="del-1", at=3))              # the same request, applied again
    assert (late.ok, late.error and late.error.code) == (False, "not_found")
    assert s.snapshot() == before and s.jobs["web"].status == "running"


def test_a_no_op_request_applied_again_later_gets_its_answer_and_changes_nothing():
    s = State()
    assert apply(s, c.PutJob(spec=SPEC, id="put-1", at=1)).ok
    same = apply(s, c.PutJob(spec=SPEC, id="put-2", at=2))                   # nothing to change
    assert same.ok and s.jobs["web"].version == 1
    assert apply(s, c.PutJob(spec={**SPEC, "replicas": 3}, id="put-3", at=3)).ok
    before = s.snapshot()
    late = apply(s, c.PutJob(spec=SPEC, id="put-2", at=4))                   # put-2 again: answered, not re-run
    assert late.to_obj() == same.to_obj() and s.snapshot() == before
    assert (s.jobs["web"].version, s.jobs["web"].replicas) == (2, 3)


def test_a_rejection_with_an_id_adds_only_its_dedup_entry():
    s = rich_state()
    before = cbor2.loads(s.snapshot())
    r = apply(s, c.DeleteJob(name="nope", id="del-9", at=5))
    after = cbor2.loads(s.snapshot())
    assert not r.ok and after["dedup"].pop("del-9")["error"]["code"] == "not_found"
    assert after["seq"].pop("dedup") == before["seq"].pop("dedup") + 1
    assert after == before

def test_a_retry_is_answered_from_the_table_even_at_another_time():
    s = rich_state()
    r1 = apply(s, c.ScaleJob(name="web", replicas=4, id="req-9", at=100))
    snap = s.snapshot()
    r2 = apply(s, c.ScaleJob(name="web", replicas=4, id="req-9", at=200))
    assert r2.to_obj() == r1.to_obj() and s.snapshot() == snap


def test_a_retried_drain_is_answered_from_the_table_though_its_deadline_was_computed_again():
    s = rich_state()
    r1 = apply(s, c.DrainMachine(machines=["m1"], deadline=1000 + 600_000, id="drain-1", at=1000))
    snap = s.snapshot()
    r2 = apply(s, c.DrainMachine(machines=["m1"], deadline=5000 + 600_000, id="drain-1", at=5000))
    assert r2.to_obj() == r1.to_obj() and s.snapshot() == snap
    r3 = apply(s, c.DrainMachine(machines=["m1"], drain=False, id="drain-1"))
    assert r3.error.code == "request_id_conflict"


def test_a_revoke_reusing_a_create_id_is_a_conflict_and_revokes_nothing():
    s = rich_state()
    r = apply(s, c.RevokeToken(name="r1", id="tok-1"))
    assert r.error.code == "request_id_conflict" and "CreateToken" in r.error.message
    assert any(t["name"] == "r1" for t in s.tokens.values())


# -- eviction order ------------------------------------------------------------------------

IDS = ["z9", "a1", "m5", "b2", "y8", "c3"]  # applied in this order: not the order canonical CBOR sorts them


def test_a_restored_replica_evicts_the_same_ids_as_one_that_replayed():
    with max_dedup(4):
        a = rich_state()
        a.dedup.clear()
        for i, rid in enumerate(IDS[:4]):
            assert apply(a, c.ScaleJob(name="web", replicas=i, id=rid)).ok
        b = State.restore(a.snapshot())
        for i, rid in enumerate(IDS[4:], start=4):
            ra, rb = apply(a, c.ScaleJob(name="web", replicas=i, id=rid)), apply(b, c.ScaleJob(name="web", replicas=i, id=rid))
            assert ra.to_obj() == rb.to_obj()
        assert list(a.dedup) == list(b.dedup) == IDS[2:]  # z9 and a1 (the oldest) went first
        # a late retry of an evicted id is applied again on both, the same way
        late = c.ScaleJob(name="web", replicas=0, id="z9")
        assert apply(a, late).to_obj() == apply(b, late).to_obj()
        assert a.digest() == b.digest()


def old_format_snapshot(s: State) -> bytes:
    """``s`` as snapshots were written before dedup entries carried op/digest/seq."""
    obj = s.to_obj()
    obj["dedup"] = {k: {f: e[f] for f in ("ok", "index", "value", "error")} for k, e in s.dedup.items()}
    obj["seq"] = {k: v for k, v in s.seq.items() if k != "dedup"}
    return cbor2.dumps(obj, canonical=True)


def test_old_snapshots_restore_with_a_deterministic_order_and_dedup_by_id():
    with max_dedup(4):
        a = rich_state()
        a.dedup.clear()
        for i, rid in enumerate(["z9", "a1", "m5"]):
            apply(a, c.ScaleJob(name="web", replicas=i, id=rid))
        old = old_format_snapshot(a)
        b, b2 = State.restore(old), State.restore(old)
        assert b.snapshot() == b2.snapshot()
        assert list(b.dedup) == ["a1", "m5", "z9"]  # migrated: key order, all older than new entries
        # no digest recorded: the same id answers from the table whatever the command
        assert apply(b, c.ScaleJob(name="web", replicas=7, id="a1")).value == a.dedup["a1"]["value"]
        apply(b, c.ScaleJob(name="web", replicas=8, id="new-1"))
        apply(b, c.ScaleJob(name="web", replicas=9, id="new-2"))
        assert list(b.dedup) == ["m5", "z9", "new-1", "new-2"]
        again = State.restore(b.snapshot())
        assert again.snapshot() == b.snapshot() and list(again.dedup) == list(b.dedup)
        for rid in ("new-3", "new-4"):
            for s in (b, again):
                apply(s, c.ScaleJob(name="web", replicas=1, id=rid))
        assert list(again.dedup) == list(b.dedup) == ["new-1", "new-2", "new-3", "new-4"]
        assert again.digest() == b.digest()


# -- the property: retries and snapshots never make replicas diverge ---------------------------

JOBS = ("web", "api")
TOKENS = ("t1", "t2")
command = st.one_of(
    st.builds(lambda n, r: c.ScaleJob(name=n, replicas=r), st.sampled_from(JOBS), st.integers(0, 3)),
    st.builds(lambda n, img: c.PutJob(spec={**SPEC, "name": n, "image": img}), st.sampled_from(JOBS),
              st.sampled_from(("web:1", "web:2"))),
    st.builds(lambda n: c.DeleteJob(name=n), st.sampled_from(JOBS)),
    st.builds(lambda n, h: c.CreateToken(hash=h * 64, role="reader", name=n), st.sampled_from(TOKENS),
              st.sampled_from("0123")),
    st.builds(lambda n: c.RevokeToken(name=n), st.sampled_from(TOKENS)),
)
step = st.one_of(
    st.tuples(st.just("new"), command, st.sampled_from(["", "r0", "r1", "r2", "r3", "r4", "r5", "r6"])),
    st.tuples(st.just("retry"), st.integers(0, 1000)),  # resend an earlier command, same id, later time
    st.tuples(st.just("snapshot")),                     # replica B restarts from its own snapshot
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=40), st.integers(1, 4))
def test_retries_and_snapshots_never_make_replicas_diverge(steps, bound):
    with max_dedup(bound):
        a, b = State(), State()
        sent: list[c.Command] = []
        at = 0
        for s in steps:
            if s[0] == "snapshot":
                b = State.restore(b.snapshot())
                continue
            at += 1
            if s[0] == "new":
                cmd = type(s[1])(**{**_fields(s[1]), "id": s[2], "at": at})
            elif sent:
                cmd = type(sent[s[1] % len(sent)])(**{**_fields(sent[s[1] % len(sent)]), "at": at})
            else:
                continue
            sent.append(cmd)
            ra, rb = apply(a, cmd), apply(b, cmd)
            assert ra.to_obj() == rb.to_obj(), cmd
        assert a.digest() == b.digest()


def _fields(cmd: c.Command) -> dict:
    return {k: v for k, v in c.to_wire(cmd).items() if k not in ("v", "op")}
