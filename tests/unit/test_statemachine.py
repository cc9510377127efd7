"""The state machine as a specification: per-command tables, determinism, purity."""
from __future__ import annotations

import ast
import pathlib

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply, apply_entry
from raftctl.statemachine.state import State

SPEC = {"name": "web", "image": "web:1", "command": ["python3", "-m", "http.server"], "replicas": 2,
        "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}, "ports": [{"name": "http", "static": None, "to": None}],
        "service": "web"}
M1 = dict(machine="m1", address="127.0.0.2", fault_domain={"region": "r", "zone": "z1", "rack": "k1"},
          labels={}, resources={"cpu": 2000, "memory": 1 << 30, "pids": 1000}, ports=[31000, 31999], runtime="sim")


def fresh(*cmds: c.Command) -> State:
    s = State()
    for cmd in cmds:
        r = apply(s, cmd)
        assert r.ok, r.error
    return s


def place(job: str = "web", replica: int = 0, machine: str = "m1", port: int = 31000, version: int = 1) -> dict:
    return {"job": job, "version": version, "replica": replica, "machine": machine,
            "resources": {"cpu": 250, "memory": 64 << 20, "pids": 128}, "ports": {"http": port}}


# -- table: each command, accepted and rejected ----------------------------------------

REJECTIONS = [
    ("unknown job scale", [], c.ScaleJob(name="nope", replicas=1), "not_found", "name"),
    ("scale out of range", [c.PutJob(spec=SPEC)], c.ScaleJob(name="web", replicas=10001), "invalid", "replicas"),
    ("bad job name", [], c.PutJob(spec={**SPEC, "name": "Bad_Name"}), "invalid", "name"),
    ("cas on missing job", [], c.PutJob(spec=SPEC, cas=5), "cas_failed", "cas"),
    ("rollback to missing version", [c.PutJob(spec=SPEC)], c.RollbackJob(name="web", version=9), "not_found", "version"),
    ("rollback to current", [c.PutJob(spec=SPEC)], c.RollbackJob(name="web", version=1), "conflict", "version"),
    ("machine bad resources", [], c.RegisterMachine(**{**M1, "resources": {"cpu": 0, "memory": 1, "pids": 1}}),
     "invalid", "resources.cpu"),
    ("machine bad ports", [], c.RegisterMachine(**{**M1, "ports": [5, 1]}), "invalid", "ports"),
    ("down unknown machine", [], c.MachineDown(machine="zz"), "not_found", "machine"),
    ("down twice", [c.RegisterMachine(**M1), c.MachineDown(machine="m1")], c.MachineDown(machine="m1"), "conflict", "machine"),
    ("stale epoch claim", [c.ClaimEpoch(term=3)], c.ClaimEpoch(term=3), "stale_epoch", "term"),
    ("plan from old epoch", [c.ClaimEpoch(term=3)], c.Plan(epoch=2, place=[]), "stale_epoch", "epoch"),
    ("token bad role", [], c.CreateToken(hash="a" * 64, role="god", name="x"), "invalid", "role"),
    ("token duplicate name", [c.CreateToken(hash="a" * 64, role="reader", name="x")],
     c.CreateToken(hash="b" * 64, role="reader", name="x"), "conflict", "name"),
    ("agent token without machine", [], c.CreateToken(hash="a" * 64, role="agent", name="x"), "invalid", "machine"),
    ("revoke unknown token", [], c.RevokeToken(name="x"), "not_found", "name"),
    ("image bad digest", [], c.PutImage(name="web:1", digest="md5:00", size=1), "invalid", "digest"),
    ("report for unknown placement", [], c.PlacementUpdate(placement="p", machine="m1", state="running"), "not_found", "placement"),
]


@pytest.mark.parametrize("name,setup,cmd,code,field", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections_leave_state_byte_identical(name, setup, cmd, code, field):
    s = fresh(*setup)
    before = s.snapshot()
    r = apply(s, cmd)
    assert not r.ok
    assert (r.error.code, r.error.field) == (code, field)
    assert s.snapshot() == before


def test_put_job_versions_and_identical_resubmit():
    s = fresh(c.PutJob(spec=SPEC, at=1))
    assert s.jobs["web"].version == 1
    r = apply(s, c.PutJob(spec=SPEC, at=2))
    assert r.ok and r.value["unchanged"] and s.jobs["web"].version == 1
    r = apply(s, c.PutJob(spec={**SPEC, "image": "web:2"}, at=3))
    assert r.value["version"] == 2 and len(s.jobs["web"].versions) == 2
    r = apply(s, c.RollbackJob(name="web", version=1, at=4))
    assert r.value["version"] == 3 and s.jobs["web"].versions[-1].spec.image == "web:1"


def test_cas_write():
    s = fresh(c.PutJob(spec=SPEC, cas=0))
    idx = s.jobs["web"].modify_index
    assert not apply(s, c.PutJob(spec={**SPEC, "replicas": 3}, cas=idx + 7)).ok
    assert apply(s, c.PutJob(spec={**SPEC, "replicas": 3}, cas=idx)).ok


def test_request_ids_deduplicate_retries():
    s = fresh(c.PutJob(spec=SPEC))
    r1 = apply(s, c.ScaleJob(name="web", replicas=5, id="req-1"))
    snap = s.snapshot()
    r2 = apply(s, c.ScaleJob(name="web", replicas=5, id="req-1"))
    assert r1.to_obj() == r2.to_obj() and s.snapshot() == snap


def test_plan_places_rechecks_capacity_and_ports():
    s = fresh(c.RegisterMachine(**M1), c.PutJob(spec={**SPEC, "replicas": 3}), c.ClaimEpoch(term=1))
    r = apply(s, c.Plan(epoch=1, index=s.index, place=[place(replica=0), place(replica=1, port=31000)]))
    assert len(r.value["placed"]) == 1
    assert "port 31000" in r.value["rejected"][0]["reason"]
    # the same slot twice (a plan replayed after a leader change) is refused
    r = apply(s, c.Plan(epoch=1, index=s.index, place=[place(replica=0, port=31005)]))
    assert r.value["placed"] == [] and "already placed" in r.value["rejected"][0]["reason"]
    big = {**place(replica=2, port=31010), "resources": {"cpu": 5000, "memory": 1, "pids": 1}}
    r = apply(s, c.Plan(epoch=1, index=s.index, place=[big]))
    assert r.value["rejected"][0]["reason"] == "insufficient cpu on m1"


def test_health_publishes_and_machine_down_unpublishes():
    s = fresh(c.RegisterMachine(**M1), c.PutJob(spec=SPEC), c.ClaimEpoch(term=1))
    pid = apply(s, c.Plan(epoch=1, place=[place()])).value["placed"][0]
    assert apply(s, c.PlacementUpdate(placement=pid, machine="m1", state="running", health="healthy")).ok
    ep = s.discovery["web"]["endpoints"][pid]
    assert (ep["address"], ep["port"], ep["machine"]) == ("127.0.0.2", 31000, "m1")
    assert apply(s, c.PlacementUpdate(placement=pid, machine="m1", state="running", health="unhealthy")).ok
    assert s.discovery["web"]["endpoints"] == {}
    apply(s, c.PlacementUpdate(placement=pid, machine="m1", state="running", health="healthy"))
    r = apply(s, c.MachineDown(machine="m1", reason="ttl"))
    assert r.value["lost"] == [pid] and s.placements[pid].state == "lost"
    assert s.discovery["web"]["endpoints"] == {}


def test_placement_report_from_wrong_machine_is_refused():
    s = fresh(c.RegisterMachine(**M1), c.RegisterMachine(**{**M1, "machine": "m2"}), c.PutJob(spec=SPEC),
              c.ClaimEpoch(term=1))
    pid = apply(s, c.Plan(epoch=1, place=[place()])).value["placed"][0]
    r = apply(s, c.PlacementUpdate(placement=pid, machine="m2", state="running", health="healthy"))
    assert r.error.code == "forbidden"


def _walked_counts(s: State, job: str) -> dict[str, int]:
    """What GET /v1/jobs/{name} reported by walking the job's placements before counts were kept at apply time."""
    out = {"running": 0, "healthy": 0, "pending": 0, "lost": 0}
    for p in s.job_placements(job):
        if p.desired != "run":
            continue
        if p.state == "running":
            out["running"] += 1
            out["healthy"] += p.health == "healthy"
        elif p.state in ("pending", "starting"):
            out["pending"] += 1
        elif p.state == "lost":
            out["lost"] += 1
    return out


def test_a_jobs_counts_kept_at_apply_time_match_a_walk_over_its_placements():
    s = fresh(c.RegisterMachine(**M1), c.RegisterMachine(**{**M1, "machine": "m2", "address": "127.0.0.3"}),
              c.PutJob(spec={**SPEC, "replicas": 4}), c.ClaimEpoch(term=1))
    placed = apply(s, c.Plan(epoch=1, place=[place(replica=0), place(replica=1, port=31001),
                                             place(replica=2, machine="m2"), place(replica=3, machine="m2",
                                                                                    port=31001)])).value["placed"]
    steps: list[tuple[c.Command, dict[str, int]]] = [
        (c.Noop(), {"running": 0, "healthy": 0, "pending": 4, "lost": 0}),
        (c.PlacementUpdate(placement=placed[0], machine="m1", state="running", health=""),
         {"running": 1, "healthy": 0, "pending": 3, "lost": 0}),
        (c.PlacementUpdate(placement=placed[0], machine="m1", state="running", health="healthy"),
         {"running": 1, "healthy": 1, "pending": 3, "lost": 0}),
        (c.PlacementUpdate(placement=placed[2], machine="m2", state="running", health="healthy"),
         {"running": 2, "healthy": 2, "pending": 2, "lost": 0}),
        (c.PlacementUpdate(placement=placed[0], machine="m1", state="running", health="unhealthy"),
         {"running": 2, "healthy": 1, "pending": 2, "lost": 0}),
        (c.MachineDown(machine="m2", reason="ttl"), {"running": 1, "healthy": 0, "pending": 1, "lost": 2}),
        (c.ScaleJob(name="web", replicas=1), None),
        (c.DeleteJob(name="web", purge=True), {"running": 0, "healthy": 0, "pending": 0, "lost": 0}),
    ]
    for cmd, want in steps:
        r = apply(s, cmd)
        assert r.ok, (cmd, r.error)
        assert s.counts_of_job("web") == _walked_counts(s, "web"), cmd
        if want is not None:
            assert s.counts_of_job("web") == want, cmd
    assert s.job_counts == {} and State.restore(s.snapshot()).job_counts == {}


def test_unknown_op_and_version_are_deterministic_rejections():
    s = fresh()
    before = s.snapshot()
    for item in ({"v": 1, "op": 999}, {"v": 2, "op": 1}, {"v": 1, "op": 4, "bogus": 1}, "x"):
        (r,) = apply_entry(s, cbor2.dumps([item]))
        assert not r.ok and r.error.code in ("unknown_op", "unknown_version", "bad_command")
    (r,) = apply_entry(s, b"\xff\x00garbage")
    assert r.error.code == "corrupt_entry"
    # entries count and hash chain move (they are log positions), tables do not
    after = State.restore(s.snapshot())
    for t in ("jobs", "machines", "placements", "index"):
        assert getattr(after, t) == getattr(State.restore(before), t)


def test_wire_round_trip_for_every_command():
    for cls in c.COMMANDS.values():
        cmd = cls(at=5, id="x")
        assert c.from_wire(cbor2.loads(cbor2.dumps(c.to_wire(cmd)))) == cmd


# -- properties --------------------------------------------------------------------

names = st.sampled_from(["web", "api", "db"])
machines = st.sampled_from(["m1", "m2", "m3"])
command_st = st.one_of(
    st.builds(lambda n, r: c.PutJob(spec={**SPEC, "name": n, "replicas": r}), names, st.integers(0, 4)),
    st.builds(lambda n, r: c.ScaleJob(name=n, replicas=r), names, st.integers(-1, 6)),
    st.builds(lambda n, p: c.DeleteJob(name=n, purge=p), names, st.booleans()),
    st.builds(lambda n, v: c.RollbackJob(name=n, version=v), names, st.integers(0, 3)),
    st.builds(lambda m: c.RegisterMachine(**{**M1, "machine": m}), machines),
    st.builds(lambda m: c.MachineDown(machine=m, reason="ttl"), machines),
    st.builds(lambda m: c.MachineUp(machine=m), machines),
    st.builds(lambda m, d: c.DrainMachine(machines=[m], drain=d), machines, st.booleans()),
    st.builds(lambda t: c.ClaimEpoch(term=t), st.integers(0, 3)),
    st.builds(lambda n, rep, m, port, e: c.Plan(epoch=e, place=[place(n, rep, m, port)]),
              names, st.integers(0, 3), machines, st.integers(31000, 31003), st.integers(0, 3)),
    st.builds(lambda i, m, s, h: c.PlacementUpdate(placement=f"{['web', 'api'][i % 2]}-{i:05d}", machine=m, state=s, health=h),
              st.integers(1, 8), machines, st.sampled_from(["running", "exited", "stopped", "lost"]),
              st.sampled_from(["healthy", "unhealthy", ""])),
    st.builds(lambda n: c.Noop(), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(command_st, st.integers(0, 10**6)), max_size=40))
def test_same_log_gives_byte_identical_snapshots(cmds):
    a, b = State(), State()
    for i, (cmd, at) in enumerate(cmds):
        data = c.encode_entry([type(cmd)(**{**{f: getattr(cmd, f) for f in c.to_wire(cmd) if f not in ("v", "op")},
                                            "at": at, "id": f"r{i % 7}"})])
        ra, rb = apply_entry(a, data), apply_entry(b, data)
        assert [r.to_obj() for r in ra] == [r.to_obj() for r in rb]
    assert a.snapshot() == b.snapshot()
    # snapshot -> restore -> snapshot is the identity, derived indexes included
    r = State.restore(a.snapshot())
    assert r.snapshot() == a.snapshot()
    assert r.by_machine == a.by_machine and r.by_job == a.by_job
    assert r.placement_counts == a.placement_counts
    # each job's counts, kept at apply time, are what a walk over its placements finds (the job read's figures)
    assert r.job_counts == a.job_counts
    for job in set(a.by_job) | set(a.job_counts):
        assert a.counts_of_job(job) == _walked_counts(a, job), job


@settings(max_examples=150, deadline=None)
@given(st.lists(command_st, max_size=25), command_st)
def test_rejected_command_leaves_state_byte_identical(prefix, cmd):
    s = State()
    for p in prefix:
        apply(s, p)
    before = s.snapshot()
    r = apply(s, cmd)
    if not r.ok:
        assert s.snapshot() == before


@settings(max_examples=100, deadline=None)
@given(st.lists(command_st, max_size=40))
def test_no_machine_overcommitted_after_any_sequence(cmds):
    s = State()
    for cmd in cmds:
        apply(s, cmd)
    from raftctl.statemachine.state import NO_USAGE
    for mid, m in s.machines.items():
        u = s.usage.get(mid, NO_USAGE)
        assert u.cpu <= m.resources["cpu"] and u.memory <= m.resources["memory"] and u.pids <= m.resources["pids"]
        ports = [port for p in s.machine_placements(mid) if p.state not in ("lost", "stopped") for port in p.ports.values()]
        assert len(ports) == len(set(ports))


FORBIDDEN = {"asyncio", "time", "random", "uuid", "os", "socket", "pysyncobj", "threading", "datetime", "aiohttp"}


@pytest.mark.parametrize("package", ["statemachine", "scheduler"])
def test_pure_packages_import_no_io_clock_or_randomness(package):
    root = pathlib.Path(__file__).resolve().parents[2] / "raftctl" / package
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for mod in mods:
                assert mod.split(".")[0] not in FORBIDDEN, f"{path.name} imports {mod}"
