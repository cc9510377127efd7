"""Micro-benchmark of the apply path (the tick thread's share of a write): µs per command.

Log entries are built as the proposer builds them (each command encoded once, joined into an entry) and
applied with ``apply_entry`` to a state holding 32 jobs and 1,000 machines, as on a replica:
- scale: ScaleJob, 32 per entry (bench/raft_commit.py's write), without and with a request id;
- put: PutJob of a full spec, one per entry, with a request id (its dedup digest covers the spec);
- plan: one Plan of 100 placements per entry (bench/schedule.py's write), no id.
Prints one line per case and one JSON line. Run against another tree with PYTHONPATH=<tree> to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.environ.get("PYTHONPATH") or os.path.join(os.path.dirname(__file__), ".."))
from raftctl.statemachine import commands as c  # noqa: E402
from raftctl.statemachine.apply import apply_entry  # noqa: E402
from raftctl.statemachine.spec import validate_spec  # noqa: E402
from raftctl.statemachine.state import State  # noqa: E402

GI = 1 << 30
SPEC = {"name": "web", "image": "bench:1", "command": ["serve", "--port", "8080"], "replicas": 3,
        "env": {"A": "1", "B": "two", "LOG": "info"}, "resources": {"cpu": "500m", "memory": "1Gi"},
        "ports": [{"name": "http"}], "spread": [{"level": "zone", "mode": "soft"}]}


def entry(cmds: list[c.Command]) -> bytes:
    """As the proposer encodes a batch (propose() stamps ``at``)."""
    wires = []
    for cmd in cmds:
        w = c.to_wire(cmd)
        w["at"] = w["at"] or 1_700_000_000_000
        wires.append(w)
    return c.join_entry([c.encode_command(w) for w in wires])


def base_state(machines: int = 1000, jobs: int = 32) -> State:
    s = State()
    apply_entry(s, entry([c.ClaimEpoch(term=1, node="n1")]))
    regs = [c.RegisterMachine(machine=f"m{i:04d}", address=f"10.1.{i // 250}.{i % 250 + 1}",
                              fault_domain={"region": "r1", "zone": f"z{i % 4}", "rack": f"k{i % 50}"},
                              resources={"cpu": 32000, "memory": 128 * GI, "pids": 100000}, ports=[20000, 32000],
                              runtime="sim") for i in range(machines)]
    for i in range(0, machines, 100):
        apply_entry(s, entry(regs[i:i + 100]))
    puts = [c.PutJob(spec=validate_spec({**SPEC, "name": f"b{i}", "replicas": 0})) for i in range(jobs)]
    for r in apply_entry(s, entry(puts)):
        assert r.ok, r
    return s


def measure(make: Callable[[int], list[bytes]], per_entry: int, rounds: int, state: Callable[[], State]) -> float:
    """Best µs per command over ``rounds`` runs of the entries ``make(round)`` on a fresh state: this thread's CPU
    time, so that other processes on a shared machine inflate it less than wall time."""
    best = float("inf")
    for r in range(rounds):
        s = state()
        entries = make(r)
        t0 = time.thread_time()
        for data in entries:
            results = apply_entry(s, data)
        dt = time.thread_time() - t0
        assert all(x.ok for x in results), results[:1]
        best = min(best, dt / (len(entries) * per_entry))
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    base = base_state()
    snap = base.snapshot()

    def fresh() -> State:
        return State.restore(snap)

    n = args.entries

    def scale(with_id: bool) -> Callable[[int], list[bytes]]:
        return lambda r: [entry([c.ScaleJob(name=f"b{j}", replicas=(e + j) % 3,
                                            id=f"r{r}-{e}-{j}" if with_id else "") for j in range(32)])
                          for e in range(n)]

    spec = validate_spec(SPEC)

    def put(r: int) -> list[bytes]:
        return [entry([c.PutJob(spec={**spec, "name": f"p{e % 50}", "replicas": e % 5}, id=f"p{r}-{e}")])
                for e in range(n)]

    def plan(r: int) -> list[bytes]:
        out = []
        for e in range(max(1, n // 10)):
            place = [{"job": f"b{e % 32}", "version": 1, "replica": k, "machine": f"m{(e * 100 + k) % 1000:04d}",
                      "resources": {"cpu": 500, "memory": GI, "pids": 100}, "ports": {"http": 20000 + e}}
                     for k in range(100)]
            out.append(entry([c.ScaleJob(name=f"b{e % 32}", replicas=100),
                              c.Plan(epoch=1, index=0, place=place, stop=[], pending={})]))
        return out

    res: dict[str, Any] = {"bench": "apply", "load1": round(os.getloadavg()[0], 2)}
    res["scale_no_id_us"] = measure(scale(False), 32, args.rounds, fresh)
    res["scale_id_us"] = measure(scale(True), 32, args.rounds, fresh)
    res["put_id_us"] = measure(put, 1, args.rounds, fresh)
    res["plan_item_us"] = measure(plan, 101, args.rounds, fresh)
    for k, v in res.items():
        if k.endswith("_us"):
            print(f"{k[:-3]:>14}: {v:7.1f} us per command")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
