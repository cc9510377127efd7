"""Writes snapshot_schema1.cbor: a schema-1 snapshot as revision 7585bac wrote it (tables of plain dicts).

Kept to show how the fixture was made; run against that revision only:
    git worktree add /tmp/old 7585bac && PYTHONPATH=/tmp/old python tests/unit/data/make_snapshot_schema1.py
test_statemachine_snapshot.py restores it with today's code."""
from __future__ import annotations

import dataclasses
import os

from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.spec import validate_spec
from raftctl.statemachine.state import State

AT = 1_700_000_000_000
SPEC = {"name": "web", "image": "web:1", "command": ["serve"], "replicas": 2,
        "resources": {"cpu": "250m", "memory": "64Mi"}, "ports": [{"name": "http"}],
        "health": {"type": "http", "port": "http", "interval": "2s"},
        "spread": [{"level": "zone"}], "update": {"max_unavailable": 1, "canary": 1},
        "autoscale": {"min": 1, "max": 4, "target": 0.5}}
OTHER = {"name": "batch", "image": "sha256:" + "b" * 64, "command": ["run"], "replicas": 1,
         "constraints": [{"attr": "labels.ssd", "op": "==", "value": "true"}], "priority": 80}


def build() -> State:
    s = State()
    cmds: list[c.Command] = [
        c.ClaimEpoch(term=1, node="n1"),
        c.PutImage(name="web:1", digest="sha256:" + "a" * 64, size=1234),
        c.PutImage(name="web:2", digest="sha256:" + "c" * 64, size=99),
        c.SetMember(raft="127.0.0.1:7001", api="http://127.0.0.1:8001", node="n1"),
        c.CreateToken(hash="d" * 64, role="agent", name="agent-m1", machine="m1"),
    ]
    for i in range(3):
        cmds.append(c.RegisterMachine(
            machine=f"m{i}", address=f"127.0.0.{i + 2}", fault_domain={"region": "r", "zone": f"z{i % 2}", "rack": f"k{i}"},
            labels={"ssd": "true"} if i == 1 else {}, resources={"cpu": 4000, "memory": 4 << 30, "pids": 1000},
            ports=[31000, 31999], runtime="sim", api=f"http://127.0.0.{i + 2}:9000" if i else ""))
    cmds += [c.PutJob(spec=validate_spec(SPEC), id="put-web-1"),
             c.PutJob(spec=validate_spec({**SPEC, "image": "web:2", "env": {"A": "1"}}), id="put-web-2"),
             c.PutJob(spec=validate_spec(OTHER)),
             c.RollbackJob(name="web", version=1),
             c.Plan(epoch=1, place=[
                 {"job": "web", "version": 3, "replica": r, "machine": f"m{r}", "resources": {"cpu": 250,
                  "memory": 64 << 20, "pids": 256}, "ports": {"http": 31000 + r}} for r in range(2)] + [
                 {"job": "batch", "version": 1, "replica": 0, "machine": "m1",
                  "resources": {"cpu": 100, "memory": 64 << 20, "pids": 256}, "ports": {}}], pending={"batch": ""}),
             c.PlacementUpdate(placement="web-00001", machine="m0", state="running", health="healthy", at=AT + 5),
             c.PlacementUpdate(placement="web-00002", machine="m1", state="running", health="unhealthy", at=AT + 6),
             c.PlacementUpdate(placement="batch-00003", machine="m1", state="exited", exit_code=3, reason="boom"),
             c.Retire(epoch=1, placements=["web-00001"], reason="deploy"),
             c.SetDeployment(epoch=1, job="web", deployment={"job": "web", "version": 3, "status": "running",
                             "started_at": AT, "deadline": AT + 300_000, "total": 2, "surge": 1, "canary": 1,
                             "promoted": False}, message="deploy of web 3"),
             c.DrainMachine(machines=["m2"], deadline=AT + 60_000),
             c.MachineDown(machine="m0", reason="ttl", epoch=1),
             c.ScaleJob(name="batch", replicas=2, id="scale-batch")]
    for cmd in cmds:
        if not cmd.at:
            cmd = dataclasses.replace(cmd, at=AT)
        r = apply(s, cmd)
        assert r.ok, (cmd, r.error)
    return s


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshot_schema1.cbor")
    with open(out, "wb") as f:
        f.write(build().snapshot())
    print(out)
