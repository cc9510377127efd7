"""Typed records (raftctl/statemachine/records.py): one vocabulary, converted at one boundary.

The state's tables hold these records; their wire form is the shape the tables held as dicts before: for every
table record of any state the commands can build, ``from_wire(T, to_wire(x)) == x`` and the wire form converts
back to the same canonical CBOR (snapshots are the canonical CBOR of the wire form)."""
from __future__ import annotations

import cbor2
import msgspec
from msgspec.structs import replace
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from raftctl.statemachine import apply as apply_mod, commands as c, records as r, spec as spec_mod
from raftctl.statemachine.apply import apply
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.state import State

D1 = "sha256:" + "1" * 64


def canon(x: object) -> bytes:
    return cbor2.dumps(x, canonical=True)


# -- generated specs and states --------------------------------------------------------------------------------

durations = st.sampled_from(["100ms", "1s", "2s", "30s", "1m", 5, 0.5])
user_specs = st.fixed_dictionaries({
    "name": st.sampled_from(["web", "api", "db"]),
    "image": st.sampled_from(["web:1", "api:v2", D1]),
    "command": st.lists(st.text("abc-/ ", min_size=1, max_size=5), min_size=1, max_size=3),
    "replicas": st.integers(0, 4),
    "ports": st.sampled_from([[{"name": "http"}], [{"name": "http"}, {"name": "admin", "static": 9000, "to": 80}]]),
}, optional={
    "base": st.sampled_from(["host", "scratch"]),
    "env": st.dictionaries(st.sampled_from(["A", "B_1"]), st.one_of(st.text(max_size=5), st.integers(0, 9))),
    "user": st.sampled_from(["1000", "1000:1000", 1000]),
    "resources": st.fixed_dictionaries({}, optional={"cpu": st.sampled_from(["100m", "1", 2, 0.25]),
                                                     "memory": st.sampled_from(["32Mi", "1Gi", 8 << 20]),
                                                     "pids": st.integers(1, 1000)}),
    "network": st.sampled_from(["host", "bridge"]),
    "health": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["http", "tcp"]), "port": st.just("http")},
                              optional={"interval": durations, "timeout": durations, "failures": st.integers(1, 5),
                                        "grace": durations, "path": st.just("/ready")}),
        st.fixed_dictionaries({"type": st.just("exec"), "command": st.just(["true"])})),
    "restart": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["always", "on-failure", "never"]),
                                                   "backoff": st.just({"initial": "1s", "max": "1m"}),
                                                   "reset": st.just("2m")}),
    "update": st.fixed_dictionaries({}, optional={"max_surge": st.integers(1, 2), "canary": st.integers(0, 2),
                                                  "auto_promote": st.booleans(), "deadline": durations.filter(
                                                      lambda d: d not in ("100ms", 0.5))}),
    "spread": st.lists(st.fixed_dictionaries({"level": st.sampled_from(r.LEVELS)},
                                             optional={"mode": st.sampled_from(["hard", "soft"])}), max_size=2),
    "constraints": st.lists(st.one_of(
        st.fixed_dictionaries({"attr": st.just("labels.ssd"), "op": st.sampled_from(["==", "!="]),
                               "value": st.sampled_from(["true", True, 3])}),
        st.fixed_dictionaries({"attr": st.just("zone"), "op": st.sampled_from(["in", "not_in"]),
                               "value": st.just(["a", "b"])}),
        st.fixed_dictionaries({"attr": st.just("labels.gpu"), "op": st.sampled_from(["exists", "not_exists"])}),
        st.fixed_dictionaries({"attr": st.just("id"), "op": st.just("regex"), "value": st.just("^m[0-9]+$")})),
        max_size=3),
    "autoscale": st.fixed_dictionaries({"min": st.just(0), "max": st.just(5), "target": st.sampled_from([0.5, 2, 100])},
                                       optional={"metric": st.just("rps"), "tolerance": st.just(0.2),
                                                 "cooldown": st.just("1m")}),
    "disruption": st.fixed_dictionaries({"max_unavailable": st.integers(0, 3)}),
    "lifecycle": st.one_of(st.just({}), st.just({"pre_stop": {"exec": ["/bin/stop"], "timeout": "5s"}})),
    "priority": st.integers(0, 100),
    "service": st.sampled_from(["web", "front"]),
    "capabilities": st.sampled_from([[], ["net_bind_service", "CAP_CHOWN"]]),
})
specs = user_specs.map(validate_spec)

MACHINES = ["m1", "m2"]


def machine(mid: str, zone: str, full: bool) -> c.RegisterMachine:
    domain = {"region": "r1", "zone": zone, "rack": "k1"} if full else {"zone": zone}
    return c.RegisterMachine(machine=mid, address=f"127.0.0.{2 + MACHINES.index(mid)}", fault_domain=domain,
                             labels={"ssd": "true"} if full else {}, runtime="sim", api="http://127.0.0.1:1",
                             resources={"cpu": 4000, "memory": 8 << 30, "pids": 4000}, ports=[31000, 31099])


def deployment(job: str, version: int, kind: int, at: int) -> dict:
    dep = {"job": job, "version": version, "status": "running", "started_at": at, "deadline": at + 60_000,
           "total": 2, "surge": kind % 2, "canary": 0, "promoted": True}
    if kind == 2:
        dep = {**dep, "status": "successful", "finished_at": at + 5}
    elif kind == 3:
        dep = {**dep, "status": "failed", "finished_at": at + 5, "reason": "not healthy by the deadline (60s)"}
    elif kind == 4:
        dep = {**dep, "held": "drain held back: job at its disruption budget"}
    return dep


names = st.sampled_from(["web", "api", "db"])
pids = st.integers(1, 8).map(lambda i: f"{['web', 'api', 'db'][i % 3]}-{i:05d}")
commands = st.one_of(
    st.builds(lambda s: c.PutJob(spec=s), specs),
    st.builds(lambda n, v: c.RollbackJob(name=n, version=v), names, st.integers(1, 3)),
    st.builds(lambda n, k: c.ScaleJob(name=n, replicas=k), names, st.integers(0, 4)),
    st.builds(lambda n, p: c.DeleteJob(name=n, purge=p), names, st.booleans()),
    st.builds(lambda n, rep, m, port, v: c.Plan(epoch=1, place=[{
        "job": n, "version": v, "replica": rep, "machine": m, "resources": {"cpu": 100, "memory": 64 << 20, "pids": 10},
        "ports": {"http": port}}]), names, st.integers(0, 3), st.sampled_from(MACHINES), st.integers(31000, 31009),
        st.integers(1, 2)),
    st.builds(lambda p, m, s, h, code: c.PlacementUpdate(placement=p, machine=m, state=s, health=h, exit_code=code,
                                                         reason="why" if code else ""),
              pids, st.sampled_from(MACHINES), st.sampled_from(r.PLACEMENT_STATES), st.sampled_from(["healthy", "", "unhealthy"]),
              st.sampled_from([None, 0, 137])),
    st.builds(lambda p: c.Retire(epoch=1, placements=[p], reason="deploy"), pids),
    st.builds(lambda p: c.Plan(epoch=1, stop=[{"placement": p, "reason": "scale down"}],
                               pending={"web": "no machine fits"}), pids),
    st.builds(lambda n, v, k, at: c.SetDeployment(epoch=1, job=n, deployment=deployment(n, v, k, at), message="d"),
              names, st.integers(1, 3), st.integers(0, 4), st.integers(0, 10**6)),
    st.builds(lambda m, d, dl: c.DrainMachine(machines=[m], drain=d, deadline=dl), st.sampled_from(MACHINES),
              st.booleans(), st.sampled_from([None, 10**6])),
    st.builds(lambda m: c.MachineDown(machine=m, reason="ttl"), st.sampled_from(MACHINES)),
    st.builds(lambda m: c.MachineUp(machine=m), st.sampled_from(MACHINES)),
    st.builds(lambda n, d: c.PutImage(name=n, digest=d, size=10), st.sampled_from(["web:1", "api:v2"]),
              st.sampled_from([D1, "sha256:" + "2" * 64])),
)

TABLE_RECORDS = [("jobs", r.Job), ("placements", r.Placement), ("machines", r.Machine),
                 ("deployments", r.Deployment), ("images", r.Image)]


def build(cmds: list, full: bool) -> State:
    s = State()
    for i, cmd in enumerate([machine("m1", "z1", full), machine("m2", "z2", full), c.ClaimEpoch(term=1, node="n1")]
                            + cmds):
        apply(s, type(cmd)(**{**{f: getattr(cmd, f) for f in c.to_wire(cmd) if f not in ("v", "op")}, "at": 1000 + i}))
    return s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands, max_size=30), st.booleans())
def test_every_stored_record_converts_to_the_same_canonical_cbor(cmds, full):
    s = build(cmds, full)
    for table, kind in TABLE_RECORDS:
        for key, record in getattr(s, table).items():
            assert type(record) is kind, (table, key)
            wire = r.to_wire(record)
            assert r.from_wire(kind, wire) == record, (table, key)
            assert canon(r.to_wire(r.from_wire(kind, cbor2.loads(canon(wire))))) == canon(wire), (table, key)
    for job in s.jobs.values():
        for v in job.versions:
            assert r.from_wire(r.JobSpec, r.to_wire(v.spec)) == v.spec


@settings(max_examples=200, deadline=None)
@given(user_specs)
def test_a_validated_spec_is_a_jobspec_record_and_converts_back_unchanged(raw):
    spec = validate_spec(raw)
    record = r.from_wire(r.JobSpec, spec)
    assert canon(r.to_wire(record)) == canon(spec)
    assert r.to_wire(record) == spec


def test_records_are_immutable():
    spec = r.from_wire(r.JobSpec, validate_spec({"name": "web", "image": "web:1", "command": ["x"]}))
    with pytest.raises(AttributeError):
        spec.replicas = 3  # type: ignore[misc]
    assert isinstance(spec.command, tuple)


def test_durations_are_one_unit_type_with_the_stored_keys():
    spec = r.from_wire(r.JobSpec, validate_spec({
        "name": "web", "image": "web:1", "command": ["x"], "ports": [{"name": "http"}],
        "health": {"type": "http", "port": "http", "interval": "1m30s"}, "restart": {"backoff": {"initial": "2s"}}}))
    assert spec.health is not None and spec.health.interval == 90_000 and spec.restart.initial == 2000
    assert r.seconds(spec.health.interval) == 90.0
    wire = r.to_wire(spec)
    assert wire["health"]["interval_ms"] == 90_000 and "interval" not in wire["health"]


# -- the boundary: strict, every problem names its field path ----------------------------------------------------

SPEC = validate_spec({"name": "web", "image": "web:1", "command": ["x"], "ports": [{"name": "http"}]})


@pytest.mark.parametrize("change,field", [
    ({"replicas": True}, "replicas"),
    ({"replicas": "2"}, "replicas"),
    ({"name": "Web"}, "name"),
    ({"ports": {"http": 80}}, "ports"),
    ({"ports": [{"nam": "http"}]}, "ports[0].nam"),
    ({"resources": {"cpu": "1", "memory": 1, "pids": 1}}, "resources.cpu"),
    ({"health": {"type": "grpc"}}, "health.type"),
    ({"restart": {**SPEC["restart"], "initial_ms": "1s"}}, "restart.initial_ms"),
    ({"colour": "blue"}, "colour"),
    ({"command": None}, "command"),
])
def test_from_wire_refuses_with_the_field_path(change, field):
    with pytest.raises(r.RecordError) as exc:
        r.from_wire(r.JobSpec, {**SPEC, **change})
    assert exc.value.field == field and exc.value.http_status == 400


def test_a_missing_field_is_named():
    with pytest.raises(r.RecordError) as exc:
        r.from_wire(r.JobSpec, {k: v for k, v in SPEC.items() if k != "image"})
    assert (exc.value.field, exc.value.message) == ("image", "is required")


# -- apply checks a PutJob read from the log against the record (once; validate_spec did the values) -------------

MINIMAL = {"name": "web", "image": "web:1", "command": ["true"], "replicas": 1,
           "resources": {"cpu": 100, "memory": 1 << 20, "pids": 10}}


@pytest.mark.parametrize("change,field", [
    ({"env": {"A": ["x"]}}, "env[...]"),
    ({"health": {"type": "http", "port": "http", "interval_ms": "1s"}}, "health.interval_ms"),
    ({"update": {"max_unavailable": "1"}}, "update.max_unavailable"),
    ({"restart": {"policy": "sometimes"}}, "restart.policy"),
    ({"constraints": [{"attr": "x", "op": "==", "value": {"a": 1}}]}, "constraints[0].value"),
    ({"lifecycle": {"pre_stop": {"exec": "sh -c x"}}}, "lifecycle.pre_stop.exec"),
    ({"colour": "blue"}, "colour"),
])
def test_apply_refuses_a_put_job_whose_spec_is_not_a_jobspec(change, field):
    # these reached the job table before: an agent or the scheduler would have failed reading them later
    s = State()
    before = s.snapshot()
    res = apply(s, c.PutJob(spec={**MINIMAL, **change}))
    assert not res.ok and res.error is not None
    assert (res.error.code, res.error.field) == ("invalid", field)
    assert s.snapshot() == before


def test_apply_stores_a_minimal_spec_as_its_record():
    s = State()
    assert apply(s, c.PutJob(spec=MINIMAL, at=5)).ok
    spec = s.jobs["web"].versions[0].spec
    assert spec == r.from_wire(r.JobSpec, {**MINIMAL, "image_digest": None})
    assert r.to_wire(spec) == {**r.to_wire(r.JobSpec(name="web", image="x", command=(), replicas=0)), **MINIMAL,
                               "image_digest": None}   # every field, the record's defaults filled in


# -- one home for each piece of shared knowledge ------------------------------------------------------------------

def test_shared_definitions_have_one_home():
    assert spec_mod.NAME_RE is r.NAME_RE and spec_mod.IMAGE_RE is r.IMAGE_RE and not hasattr(spec_mod, "LEVELS")
    assert not hasattr(apply_mod, "NAME_RE")
    assert apply_mod.PLACEMENT_STATES is r.PLACEMENT_STATES and apply_mod.HEALTH_STATES is r.HEALTH_STATES


@pytest.mark.parametrize("state", r.PLACEMENT_STATES)
def test_holds_resources_everywhere_alike(state):
    s = build([c.PutJob(spec=SPEC), c.Plan(epoch=1, place=[{"job": "web", "version": 1, "replica": 0, "machine": "m1",
                                                              "resources": {"cpu": 1}, "ports": {"http": 31000}}])],
              True)
    p = replace(next(iter(s.placements.values())), state=state)
    expected = state not in ("lost", "stopped")
    assert r.holds_resources(state) is p.holds_resources() is expected
    assert p.is_live() is expected


def test_placement_and_job_methods():
    s = build([c.PutJob(spec={**SPEC, "replicas": 1}), c.PutJob(spec={**SPEC, "replicas": 2}),
               c.Plan(epoch=1, place=[{"job": "web", "version": 1, "replica": 0, "machine": "m1",
                                       "resources": {"cpu": 1}, "ports": {"http": 31000}}])], True)
    job = s.jobs["web"]
    spec1, spec2 = job.spec_of(1), job.spec_of(2)
    assert spec1 is not None and spec2 is not None and (spec1.replicas, spec2.replicas) == (1, 2)
    assert job.spec_of(3) is None and job.current_spec == spec2
    assert r.to_wire(spec1) == r.to_wire(job.versions[0])["spec"]
    p = next(iter(s.placements.values()))
    assert p.holds_resources() and p.is_live()
    assert spec2.service_name == "web" and spec2.first_port == "http"


@pytest.mark.parametrize("status,drain,eligible,live,expected", [
    ("down", True, True, True, "down"),
    ("up", True, True, True, "draining"),
    ("up", True, True, False, "drained"),
    ("up", False, False, False, "maintenance"),
    ("up", False, True, True, "active"),
])
def test_machine_state_is_defined_once(status, drain, eligible, live, expected):
    s = build([c.PutJob(spec=SPEC)] + ([c.Plan(epoch=1, place=[{
        "job": "web", "version": 1, "replica": 0, "machine": "m1", "resources": {"cpu": 1},
        "ports": {"http": 31000}}])] if live else []) + ([c.DrainMachine(machines=["m1"])] if drain else [])
        + ([c.MachineDown(machine="m1")] if status == "down" else []), True)
    s.machines["m1"] = m = replace(s.machines["m1"], eligible=eligible)
    assert m.state(live) == s.machine_state(m) == expected


def test_plan_items_and_reports_are_records():
    item = r.from_wire(r.PlanItem, {"job": "web", "version": 1, "replica": 0, "machine": "m1",
                                    "resources": {"cpu": 1}, "ports": {"http": 31000}})
    assert r.to_wire(item)["ports"] == {"http": 31000}
    with pytest.raises(r.RecordError) as exc:
        r.from_wire(r.PlanItem, {**r.to_wire(item), "replica": -1})
    assert exc.value.field == "replica"
    rep = r.from_wire(r.Report, {"machine": "m1", "updates": [{"placement": "web-00001", "state": "running"}]})
    assert rep.updates[0].health == "" and rep.updates[0].exit_code is None
    with pytest.raises(r.RecordError) as exc:
        r.from_wire(r.Report, {"machine": "m1", "updates": [{"placement": "p", "state": "dancing"}]})
    assert exc.value.field == "updates[0].state"


def test_records_are_msgspec_structs_with_a_json_schema():
    (out,), components = msgspec.json.schema_components([r.JobSpec], ref_template="#/components/schemas/{name}")
    assert out == {"$ref": "#/components/schemas/JobSpec"}
    assert components["Health"]["properties"]["interval_ms"]["type"] == "integer"


def test_a_machine_registered_before_api_existed_converts_unchanged():
    s = build([], True)
    old = {k: v for k, v in r.to_wire(s.machines["m1"]).items() if k != "api"}
    assert canon(r.to_wire(r.from_wire(r.Machine, old))) == canon(old)
