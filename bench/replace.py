"""Re-placement after losing 1 % of the machines: the scheduler pass a failover asks for, pure (no sockets).

The 10,000-machine bed's shape (bench/scale.py): N machines of 1,100m CPU, jobs of 500 replicas (100m, 64Mi,
a dynamic port, soft zone spread) filling 10 a machine. The passes are given the machines' usage, as the
leader's are (the state keeps it as an index). Every replica is placed by one pass; then 1 % of the
machines go down and their placements are lost, and the timed pass places those slots again (what the leader's
scheduler does after the MachineDown commits: in session 16's failover profile it held the GIL 9.2 s of 50).
Also timed: one pass with a job that fits nowhere (every pass re-explains it; given the state's per-job placement
ids, as the leader's passes are, it reads only that job's), and the next re-placement: the
first one's plan committed, another 1 % of the machines down, the pass with the views the first one left (the
leader's scheduler keeps them, ``ViewCache``, and builds only the changed machines' again; a checkout without it
builds every view).

``--baseline DIR`` runs the same figures with another checkout's raftctl (in a subprocess, alternated with this
one, best of ``--rounds`` each) and prints the ratio. Prints figures and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.environ.get("RAFTCTL_ROOT") or os.path.join(os.path.dirname(__file__), ".."))
from raftctl.scheduler import schedule  # noqa: E402
from raftctl.statemachine.records import Job, Machine, Placement, from_wire  # noqa: E402
from raftctl.statemachine.spec import validate_spec  # noqa: E402
from raftctl.statemachine.state import State, usage_of  # noqa: E402
try:
    from raftctl.scheduler.machines import ViewCache  # noqa: E402
except ImportError:   # an older checkout (--baseline): every pass builds every view
    ViewCache = None  # type: ignore[assignment,misc]

GROUPS = hasattr(State, "job_groups")   # an older checkout's pass groups every placement itself
JOB_REPLICAS = 500


def grouped(placements: dict[str, Placement]) -> dict[str, Any]:
    """The ``groups`` keyword the leader's pass is given (its state's per-job ids), when this checkout has them."""
    if not GROUPS:
        return {}
    s = State()
    for p in placements.values():
        s.put_placement(p)
    return {"groups": s.job_groups()}


def machines(n: int, down: set[str] = frozenset()) -> dict[str, Machine]:  # type: ignore[assignment]
    return {f"m{i:05d}": from_wire(Machine, {
        "id": f"m{i:05d}", "address": f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}",
        "fault_domain": {"region": "r1", "zone": f"z{i % 4}", "rack": f"k{i % 50}"}, "labels": {},
        "resources": {"cpu": 1100, "memory": 16 << 30, "pids": 100_000}, "ports": [20000, 32000],
        "status": "down" if f"m{i:05d}" in down else "up", "drain": None, "eligible": True, "runtime": "sim",
        "registered_at": 0, "last_transition": 0, "create_index": 0, "modify_index": 0}) for i in range(n)}


def jobs(n_replicas: int, extra: dict[str, Any] | None = None) -> dict[str, Job]:
    out = {}
    raws = [{"name": f"s{j}", "image": "scale:1", "command": ["serve"],
             "replicas": min(JOB_REPLICAS, n_replicas - j * JOB_REPLICAS),
             "resources": {"cpu": "100m", "memory": "64Mi", "pids": 16}, "ports": [{"name": "http"}],
             "spread": [{"level": "zone", "mode": "soft"}]} for j in range(-(-n_replicas // JOB_REPLICAS))]
    if extra:
        raws.append(extra)
    for r in raws:
        s = validate_spec(r)
        out[s["name"]] = from_wire(Job, {
            "name": s["name"], "version": 1, "versions": [{"version": 1, "spec": s, "submitted_at": 0, "index": 0}],
            "status": "running", "replicas": s["replicas"], "pending_reason": None, "create_index": 0,
            "modify_index": 0})
    return out


def measure(n: int, rounds: int) -> dict[str, Any]:
    """Best of ``rounds`` for each pass, on this process's raftctl."""
    ms, js = machines(n), jobs(10 * n)
    t0 = time.perf_counter()
    plan = schedule(js, {}, ms, index=1, now=0)
    first_s = time.perf_counter() - t0
    placements = {f"p{i}": running(f"p{i}", p, 1) for i, p in enumerate(plan.place)}
    lost = {f"m{i:05d}" for i in range(0, n, 100)}      # 1 %
    after = machines(n, down=lost)
    for pid, p in list(placements.items()):
        if p.machine in lost:
            placements[pid] = from_wire(Placement, {**_wire(p), "state": "lost", "desired": "stop"})
    kw = grouped(placements)
    n_lost = sum(1 for p in placements.values() if p.machine in lost)
    usage = usage_of(placements.values())   # the state's index, which the leader's pass is given (not timed)
    best: dict[str, float] = {"replace": float("inf"), "unplaceable": float("inf"), "one_job": float("inf")}
    huge = {"name": "huge", "image": "scale:1", "command": ["x"], "replicas": 1, "resources": {"cpu": "64", "memory": "1Gi"}}
    js_huge = jobs(10 * n, huge)
    placed = 0
    every = machines(n)   # all up: job s3 has none on the lost machines (those are m00000, m00100, ...)
    for _ in range(rounds):
        t0 = time.perf_counter()
        re = schedule(js, placements, after, index=2, now=0, usage=usage, **kw)
        best["replace"] = min(best["replace"], time.perf_counter() - t0)
        placed = len(re.place)
        t0 = time.perf_counter()
        un = schedule(js_huge, placements, after, index=2, now=0, job_names=["huge"], usage=usage, **kw)
        best["unplaceable"] = min(best["unplaceable"], time.perf_counter() - t0)
        assert un.pending["huge"], "the huge job must not fit"
        t0 = time.perf_counter()   # a settled job's pass: what a health report or a scale to the same count asks
        one = schedule(js, placements, every, index=2, now=0, job_names=["s3"], usage=usage, **kw)
        best["one_job"] = min(best["one_job"], time.perf_counter() - t0)
        assert not one.place and not one.stop
    nxt = next_pass(js, placements, after, rounds)
    return {"machines": n, "placements": len(plan.place), "first_pass_s": round(first_s, 2),
            "first_pass_machines": len({p.machine for p in plan.place}),
            "machines_bound": -(-sum(p.resources["cpu"] for p in plan.place) // 1100), "lost": n_lost,
            "replaced": placed, "replace_pass_ms": round(best["replace"] * 1000, 1),
            "unplaceable_pass_ms": round(best["unplaceable"] * 1000, 1),
            "one_job_pass_ms": round(best["one_job"] * 1000, 2), **nxt}


def next_pass(js: dict[str, Job], placements: dict[str, Placement], after: dict[str, Machine],
              rounds: int) -> dict[str, Any]:
    """Best of ``rounds``: the re-placement pass (as the leader runs it, with its view cache when it has one),
    its plan committed into a state (the usage index replaces only the entries that changed, as apply does),
    another 1 % of the machines down (their records replaced, the rest the same objects), and the next pass."""
    cached = ViewCache is not None
    best = float("inf")
    placed = 0
    for _ in range(rounds):
        s = State()
        for p in placements.values():
            s.put_placement(p)
        kw: dict[str, Any] = {"cache": ViewCache()} if ViewCache is not None else {}
        if GROUPS:
            kw["groups"] = s.job_groups()
        first = schedule(js, s.placements, after, index=2, now=0, usage=dict(s.usage), **kw)
        for i, p in enumerate(first.place):
            s.put_placement(running(f"r{i}", p, 2))
        n = len(after)
        lost = {f"m{i:05d}" for i in range(50, n, 100)}
        now_down = dict(after)
        for mid in lost:
            now_down[mid] = from_wire(Machine, {**_wire(after[mid]), "status": "down"})
        for pid in sorted(pid for m in lost for pid in s.by_machine.get(m, ())):
            s.put_placement(from_wire(Placement, {**_wire(s.placements[pid]), "state": "lost", "desired": "stop"}))
        t0 = time.perf_counter()   # the groups of the jobs the first plan added to are built again: timed
        if GROUPS:
            kw["groups"] = s.job_groups()
        second = schedule(js, s.placements, now_down, index=3, now=0, usage=dict(s.usage), **kw)
        best = min(best, time.perf_counter() - t0)
        placed = len(second.place)
    return {"next_pass_ms": round(best * 1000, 1), "next_replaced": placed, "view_cache": cached, "job_groups": GROUPS}


def running(pid: str, p: Any, index: int) -> Placement:
    """Plan item ``p`` committed as placement ``pid`` at ``index``, running and healthy."""
    return from_wire(Placement, {
        "id": pid, "job": p.job, "version": p.version, "replica": p.replica, "machine": p.machine,
        "resources": dict(p.resources), "ports": dict(p.ports), "address": "10.0.0.1", "desired": "run",
        "state": "running", "health": "healthy", "exit_code": None, "reason": "", "created_at": 0,
        "updated_at": 0, "create_index": index, "modify_index": index})


def _wire(p: Placement | Machine) -> dict[str, Any]:
    from raftctl.statemachine.records import to_wire
    return to_wire(p)


def run_other(root: str, n: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "RAFTCTL_ROOT": root, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--machines", str(n), "--rounds", str(rounds),
                          "--json-only"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="another checkout's root: the same figures with its raftctl, alternated")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json_only:
        print(json.dumps(measure(args.machines, args.rounds)))
        return
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    mine: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    for _ in range(2 if args.baseline else 1):   # alternated: baseline, this, baseline, this
        if args.baseline:
            base.append(run_other(args.baseline, args.machines, args.rounds))
        mine.append(run_other(here, args.machines, args.rounds))

    def best(rows: list[dict[str, Any]], key: str) -> float:
        return min(r[key] for r in rows)

    row = mine[0]
    print(f"re-placement at {row['machines']:,} machines: {row['placements']:,} placed by one pass in "
          f"{row['first_pass_s']} s on {row['first_pass_machines']:,} machines (lower bound "
          f"{row['machines_bound']:,}); 1 % down, {row['lost']:,} lost, {row['replaced']:,} placed again in "
          f"{best(mine, 'replace_pass_ms')} ms; a job that fits nowhere: {best(mine, 'unplaceable_pass_ms')} ms a pass; "
          f"a settled job's pass: {best(mine, 'one_job_pass_ms')} ms; "
          f"another 1 % down after the first plan committed, {row['next_replaced']:,} placed again in "
          f"{best(mine, 'next_pass_ms')} ms" + (" (views kept from the pass before)" if row["view_cache"] else ""))
    out: dict[str, Any] = {"bench": "replace", **row, "replace_pass_ms": best(mine, "replace_pass_ms"),
                           "unplaceable_pass_ms": best(mine, "unplaceable_pass_ms"),
                           "one_job_pass_ms": best(mine, "one_job_pass_ms"), "next_pass_ms": best(mine, "next_pass_ms")}
    if base:
        print(f"  baseline: first pass {base[0]['first_pass_s']} s on {base[0]['first_pass_machines']:,} machines; "
              f"{base[0]['lost']:,} lost")
        for key in ("replace_pass_ms", "unplaceable_pass_ms", "one_job_pass_ms", "next_pass_ms"):
            if not all(key in r for r in base):
                continue   # an older checkout's bench printed no such figure
            b, m = best(base, key), best(mine, key)
            out[f"baseline_{key}"] = b
            out[f"{key}_ratio"] = round(b / m, 2) if m else None
            print(f"  {key}: baseline {b} ms, this {m} ms: {b / m:.2f} x faster" if m else f"  {key}: baseline {b}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
