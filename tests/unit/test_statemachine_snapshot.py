"""Snapshots of a state whose tables hold records (issue 14): canonical CBOR of the wire form, schema 2, and a
migration from schema 1 (tables of plain dicts, as revision 7585bac wrote them; tests/unit/data/).

Specification: a schema-1 snapshot restores into records, every field it lacked taking its record's default;
what it held is kept as it was; restoring a snapshot and taking one again gives the same bytes; a replica that
restored and one that applied the same commands go on to identical snapshots."""
from __future__ import annotations

import importlib.util
import pathlib

import cbor2
import pytest

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.records import Deployment, Image, Job, Machine, Placement, to_wire
from raftctl.statemachine.state import SNAPSHOT_SCHEMA, State

DATA = pathlib.Path(__file__).parent / "data"
SCHEMA1 = (DATA / "snapshot_schema1.cbor").read_bytes()
RECORD_TABLES = {"images": Image, "machines": Machine, "deployments": Deployment, "jobs": Job,
                 "placements": Placement}


def _builder():  # the fixture's own command list (tests/unit/data/make_snapshot_schema1.py), run on today's code
    spec = importlib.util.spec_from_file_location("make_snapshot_schema1", DATA / "make_snapshot_schema1.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build


def test_the_fixture_is_a_schema_1_snapshot_of_plain_dicts():
    old = cbor2.loads(SCHEMA1)
    assert old["schema"] == 1 and SNAPSHOT_SCHEMA == 2
    spec = old["jobs"]["web"]["versions"][0]["spec"]
    assert "egress" not in spec and "publish" not in spec["ports"][0]   # fields added since 7585bac
    assert "subnet" not in old["machines"]["m0"]


def test_a_schema_1_snapshot_restores_into_records_with_the_missing_fields_defaulted():
    old = cbor2.loads(SCHEMA1)
    s = State.restore(SCHEMA1)
    for table, kind in RECORD_TABLES.items():
        assert set(getattr(s, table)) == set(old[table]), table
        for key, record in getattr(s, table).items():
            assert type(record) is kind
            wire = to_wire(record)
            # everything the old row held is kept as it was ...
            if table != "jobs":
                assert wire == old[table][key], (table, key)
    # ... and a job spec gains the fields it lacked, with their defaults
    web = s.jobs["web"]
    spec = web.spec_of(3)
    assert spec is not None and (spec.egress, spec.ports[0].publish) == ("masquerade", False)
    got, had = to_wire(web), old["jobs"]["web"]
    assert {k: v for k, v in got.items() if k != "versions"} == {k: v for k, v in had.items() if k != "versions"}
    for new_v, old_v in zip(got["versions"], had["versions"]):
        assert {k: v for k, v in new_v["spec"].items() if k != "egress"} == \
            {**old_v["spec"], "ports": [{**p, "publish": False} for p in old_v["spec"]["ports"]]}
    # the derived indexes and the other tables
    assert s.by_machine == {"m0": {"web-00001"}, "m1": {"web-00002", "batch-00003"}}
    assert s.machines["m2"].drain is not None and s.machines["m0"].status == "down"
    assert s.placements["web-00001"].retiring_at == old["placements"]["web-00001"]["retiring_at"]
    assert (s.tokens, s.members, s.events, s.index) == (old["tokens"], old["members"], old["events"], old["index"])
    assert s.machine_state(s.machines["m2"]) == "drained" and s.machine_state(s.machines["m0"]) == "down"


def test_a_migrated_snapshot_is_schema_2_and_restores_to_the_same_bytes():
    once = State.restore(SCHEMA1).snapshot()
    assert cbor2.loads(once)["schema"] == 2
    assert State.restore(once).snapshot() == once


def test_restored_and_applied_replicas_hold_identical_snapshots():
    build = _builder()
    applied = build()
    restored = State.restore(applied.snapshot())
    assert restored.snapshot() == applied.snapshot()
    # snapshot() encodes the records as it reaches them: the same bytes as the wire form of to_obj()
    assert applied.snapshot() == cbor2.dumps(applied.to_obj(), canonical=True)
    more = [c.PlacementUpdate(placement="web-00002", machine="m1", state="running", health="healthy", at=9),
            c.MachineUp(machine="m0", at=10), c.PutJob(spec=to_wire(applied.jobs["web"].versions[0].spec), at=11),
            c.Plan(epoch=1, stop=[{"placement": "batch-00003", "reason": "x"}], at=12),
            c.DrainMachine(machines=["m2"], drain=False, at=13)]
    for cmd in more:
        a, b = apply(applied, cmd), apply(restored, cmd)
        assert a == b
    assert restored.snapshot() == applied.snapshot()


def test_a_replica_that_restored_schema_1_agrees_with_another_that_did():
    a, b = State.restore(SCHEMA1), State.restore(SCHEMA1)
    for cmd in (c.ScaleJob(name="web", replicas=3, at=20), c.RegisterMachine(
            machine="m3", address="127.0.0.9", fault_domain={"zone": "z9"}, labels={}, runtime="sim",
            resources={"cpu": 1000, "memory": 1 << 30, "pids": 100}, ports=[31000, 31099], at=21)):
        assert apply(a, cmd) == apply(b, cmd)
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize("schema", [0, 3, None, "2"])
def test_an_unknown_schema_is_refused(schema):
    obj = cbor2.loads(SCHEMA1)
    obj["schema"] = schema
    with pytest.raises(ValueError, match="unknown snapshot schema"):
        State.restore(cbor2.dumps(obj, canonical=True))


def test_a_row_that_is_not_a_valid_record_fails_the_restore_naming_it():
    obj = cbor2.loads(SCHEMA1)
    obj["machines"]["m1"]["labels"] = {"ssd": 1}      # a label's value is text
    with pytest.raises(ValueError, match="labels"):
        State.restore(cbor2.dumps(obj, canonical=True))


def test_a_big_table_converts_in_chunks_to_the_same_records():
    from raftctl.statemachine.records import TABLE_CHUNK, table_from_wire
    rows = {f"i{n:05d}:1": {"name": f"i{n:05d}:1", "digest": "sha256:" + "0" * 64, "size": n, "create_index": n,
                            "modify_index": n} for n in range(2 * TABLE_CHUNK + 3)}
    got = table_from_wire(Image, rows)
    assert list(got) == list(rows) and {k: to_wire(v) for k, v in got.items()} == rows
