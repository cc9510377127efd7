"""State.job_change_index (derived, not in snapshots): the index of the last command that added, changed or
removed one of a job's placements; the rollout controller's memo keys on it, so a missed bump would leave a job
undecided. Every placement-changing command bumps its own job only; a restore floors every job at its index."""
from __future__ import annotations

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.state import State

from .fake_replica import machine

EPOCH = 3


def spec(name: str) -> dict:
    return validate_spec({"name": name, "image": "x:1", "command": ["x"], "replicas": 1,
                          "resources": {"cpu": "10m", "memory": "8Mi"}})


def item(job: str, replica: int = 0) -> dict:
    return {"job": job, "version": 1, "replica": replica, "machine": "m1", "resources": {"cpu": 10, "memory": 8 << 20},
            "ports": {}}


def ok(s: State, cmd: c.Command) -> None:
    assert apply(s, cmd).ok, cmd


def test_each_placement_change_bumps_its_own_job_only_and_a_restore_floors_them_all() -> None:
    s = State()
    for cmd in (c.ClaimEpoch(term=EPOCH), machine("m1"), c.PutJob(spec=spec("a")), c.PutJob(spec=spec("b"))):
        ok(s, cmd)
    assert s.job_change_index("a") == s.job_change_index("b") == 0
    ok(s, c.Plan(epoch=EPOCH, place=[item("a"), item("b")]))            # placed
    placed = s.index
    assert s.job_change_index("a") == s.job_change_index("b") == placed
    pa = s.job_placements("a")[0].id
    ok(s, c.PlacementUpdate(placement=pa, machine="m1", state="running", health="healthy"))   # changed
    assert s.job_change_index("a") == s.index and s.job_change_index("b") == placed
    ok(s, c.PutJob(spec=spec("c")))                                       # another job: no bump
    assert s.job_change_index("a") == s.index - 1
    ok(s, c.Plan(epoch=EPOCH, place=[], stop=[{"placement": pa, "reason": "x"}]))
    stopped = s.index
    assert s.job_change_index("a") == stopped
    ok(s, c.PlacementUpdate(placement=pa, machine="m1", state="stopped"))                     # removed
    assert pa not in s.placements and s.job_change_index("a") == s.index > stopped
    assert s.job_change_index("b") == placed
    r = State.restore(s.snapshot())
    assert r.job_change_index("b") == r.job_change_index("zzz") == s.index


def test_only_a_drain_moves_the_drain_index_and_a_restore_floors_it() -> None:
    """State.drain_index (derived): the rollout controller's memo keys on it instead of the machines table, so a
    machine registered, lost or back leaves settled jobs undecided, and a drain or undrain does not."""
    s = State()
    for cmd in (c.ClaimEpoch(term=EPOCH), machine("m1"), machine("m2")):
        ok(s, cmd)
    assert s.drain_index == 0
    ok(s, c.DrainMachine(machines=["m1"]))
    drained = s.index
    assert s.drain_index == drained
    for cmd in (machine("m3"), c.MachineDown(machine="m2", reason="x"), c.MachineUp(machine="m2"), machine("m1")):
        ok(s, cmd)
        assert s.drain_index == drained, cmd
    ok(s, c.DrainMachine(machines=["m1"], drain=False))
    assert s.drain_index == s.index > drained
    ok(s, machine("m4"))
    assert State.restore(s.snapshot()).drain_index == s.index
