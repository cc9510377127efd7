"""The write path's encodings as a specification (issue 15, the apply hot path).

- ``commands.canonical`` is cbor2's canonical CBOR, byte for byte, for any value: log entries, the dedup
  digests and the hash chain depend on those bytes, so replicas running either encoder agree.
- apply takes a command's dedup digest from the wire map it decoded when that map is complete, and
  ``command_digest`` of the typed command otherwise; both give the digest recorded before this change
  (sha256 of cbor2's canonical CBOR of the body), so a dedup table written by older code still matches
  retries, and an entry written by older code without a field added since still binds to the same digest.
"""
from __future__ import annotations

import hashlib

import cbor2
from hypothesis import given, settings, strategies as st

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply, apply_entry
from raftctl.statemachine.state import State

KEYS = (st.text(max_size=30) | st.sampled_from(["a", "b", "aa", "ab", "é", "z", "e" * 23, "e" * 24, "d" * 25,
                                                "x" * 300, "\U0001f600", "ä" * 12]))
LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
          | st.text(max_size=40) | st.binary(max_size=30) | st.floats())
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS, inner, max_size=30),
                      max_leaves=80)


def old_digest(wire: dict) -> str:
    """The digest as recorded before the fast encoder: cbor2's canonical encoding of the body."""
    body = {k: v for k, v in wire.items() if k not in ("at", "id")}
    return hashlib.sha256(cbor2.dumps(body, canonical=True)).hexdigest()


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_canonical_is_cbor2_canonical_byte_for_byte(value):
    assert c.canonical(value) == cbor2.dumps(value, canonical=True)


def test_canonical_of_what_the_fast_path_leaves_to_cbor2():
    # floats anywhere, tuples, non-text keys, an IntEnum, deep nesting: cbor2's canonical bytes, or its error
    for value in ({"b": 1.5, "a": [0.0, -0.0, 1e300]}, ("x", (1, 2)), {1: "a", "b": 2}, {"op": c.Op.PUT_JOB},
                  {"k": [[[[[[["deep"]]]]]]]}, {"s" * 40: {"t": b"\x00"}}):
        assert c.canonical(value) == cbor2.dumps(value, canonical=True)
    deep: list = []
    for _ in range(300):
        deep = [deep]
    assert c.canonical({"d": deep}) == cbor2.dumps({"d": deep}, canonical=True)
    for bad in ({"k": "\ud800"}, {"\udfff": 1}):
        try:
            expected: object = cbor2.dumps(bad, canonical=True)
        except Exception as exc:  # noqa: BLE001 - whatever cbor2 raises, canonical raises the same type
            expected = type(exc)
        try:
            got: object = c.canonical(bad)
        except Exception as exc:  # noqa: BLE001
            got = type(exc)
        assert got == expected


def test_canonical_orders_keys_by_encoded_length_then_bytes():
    # a 2-byte character sorts by its UTF-8 length, not by its code point count
    assert list(cbor2.loads(c.canonical({"é": 1, "zz": 2, "b": 3, "aaa": 4}))) == ["b", "zz", "é", "aaa"]
    # the order cache is per key set, whatever order the keys came in
    assert c.canonical({"id": 1, "at": 2}) == c.canonical({"at": 2, "id": 1}) == bytes.fromhex("a26261740262696401")


ONE_OF_EACH = [
    c.Noop(), c.PutJob(spec={"name": "web", "replicas": 2, "env": {"Z": "1", "A": "2"}}, cas=0),
    c.DeleteJob(name="web", purge=True), c.ScaleJob(name="web", replicas=3, reason="r"),
    c.RollbackJob(name="web", version=1),
    c.RegisterMachine(machine="m1", address="10.0.0.1", fault_domain={"zone": "z"}, labels={"é": "x"},
                      resources={"cpu": 1}, ports=[1, 2], runtime="sim", api="http://x"),
    c.MachineDown(machine="m1", reason="ttl", epoch=2), c.MachineUp(machine="m1"),
    c.MachinesSilent(silent={"m2": 15000, "m1": 20000}, epoch=2),
    c.DrainMachine(machines=["m1"], drain=True, deadline=123), c.ClaimEpoch(term=2, node="n1"),
    c.Plan(epoch=1, index=2, place=[{"job": "web", "ports": {"http": 1}}], stop=[], pending={"web": ""}),
    c.PlacementUpdate(placement="p", machine="m1", state="running", health="healthy", exit_code=None),
    c.CreateToken(hash="h", role="admin", name="t"), c.RevokeToken(name="t"),
    c.PutImage(name="web:1", digest="sha256:" + "0" * 64, size=1), c.SetMember(raft="a:1", api="b", node="n"),
    c.RemoveMember(raft="a:1"), c.Retire(epoch=1, placements=["p"], reason="deploy"),
    c.SetDeployment(epoch=1, job="web", deployment={"state": "running"}, message="m"),
]


def test_every_op_has_an_example_here():
    assert {type(cmd) for cmd in ONE_OF_EACH} == set(c.COMMANDS.values())


def test_digests_equal_the_digest_recorded_before():
    for cmd in ONE_OF_EACH:
        wire = c.to_wire(cmd)
        decoded = cbor2.loads(c.encode_command(wire))
        skip = ("at", "id") + cmd.CLOCK_FIELDS
        expected = old_digest({k: v for k, v in wire.items() if k not in skip})
        assert c.command_digest(cmd) == expected
        assert c.wire_digest(decoded, cmd.CLOCK_FIELDS) == expected
        assert len(decoded) == c.WIRE_SIZE[type(cmd)]


def _recorded_digest(state: State, items: list[dict]) -> str:
    results = apply_entry(state, cbor2.dumps(items, canonical=True))
    assert all(r.ok for r in results), results
    return state.dedup[items[-1]["id"]]["digest"]


def test_an_entry_without_a_field_added_since_binds_its_id_to_the_full_command():
    """An entry an older proposer wrote has no "api" (added later, default ""): its id is bound to the command
    with that default, so the retry a newer proposer writes (with "api": "") is answered, not a conflict."""
    cmd = c.RegisterMachine(machine="m1", address="10.0.0.1", resources={"cpu": 1, "memory": 1, "pids": 1},
                            ports=[1000, 2000], runtime="sim", id="reg-1", at=5)
    full = c.to_wire(cmd)
    old = {k: v for k, v in full.items() if k != "api"}
    state = State()
    assert _recorded_digest(state, [old]) == c.command_digest(cmd)
    retry = apply_entry(state, cbor2.dumps([{**full, "at": 9}], canonical=True))
    assert retry[0].ok and retry[0].index == 1, retry


def test_the_log_replays_to_the_same_state_with_either_digest_path():
    """A log mixing complete and old-shaped entries, with retries: the snapshot after replay is the one the digest
    of the typed command alone gives (as before this change)."""
    base = dict(address="10.0.0.1", resources={"cpu": 1, "memory": 1, "pids": 1}, ports=[1000, 2000], runtime="sim")
    entries = []
    for i in range(6):
        full = c.to_wire(c.RegisterMachine(machine=f"m{i % 3}", id=f"r{i % 4}", at=i + 1, **base))
        entries.append([full if i % 2 else {k: v for k, v in full.items() if k != "api"}])
    replayed = State()
    for items in entries:
        apply_entry(replayed, cbor2.dumps(items, canonical=True))
    typed = State()
    for items in entries:
        typed.entries += 1
        typed.chain = hashlib.sha256(typed.chain.encode() + cbor2.dumps(items, canonical=True)).hexdigest()
        for item in items:
            apply(typed, c.from_wire(item))
    assert replayed.snapshot() == typed.snapshot()
    assert any(r["op"] for r in replayed.dedup.values())
