"""The efficiency view at fleet size: what GET /v1/efficiency and a /metrics scrape cost on the leader.

A synthetic cluster of N machines (3 regions, 10 zones each, racks of 40) holding ``--per-machine`` placements
each, from ``--jobs`` jobs whose replicas ask one of a few sizes, with a usage report for half of them. Times,
per round and in a fresh process each:

- ``view``: ``efficiency()`` over the whole state (the route's work; a scrape's when it computes);
- ``ffd``: its first-fit-decreasing figure alone;
- ``scrape``: a /metrics scrape's efficiency families once the last (costly) view is older than the reuse window
  and the state has moved on: before session 29 the scrape computed the view itself and waited for it; since then
  it answers with the last view and a new one is computed on a thread of its own.

``--baseline DIR`` runs the same rounds against the raftctl of another checkout (e.g. a clone at an older commit),
alternated with this tree's, and prints the ratios of the medians. Prints figures and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from trees import add_options, alternated, run_inner, trees


def inner(machines: int, per_machine: int, jobs: int) -> dict[str, float]:
    """One round in this process, against the raftctl on sys.path: seconds per step."""
    from raftctl.clock import FakeClock
    from raftctl.node.autoscale import Metrics
    from raftctl.node.efficiency import ViewCache, prometheus_families
    from raftctl.scheduler import efficiency as eff
    from raftctl.statemachine.records import Machine, Placement, from_wire
    from raftctl.statemachine.state import State

    sizes = [(100, 64 << 20), (250, 128 << 20), (500, 256 << 20), (1000, 1 << 30), (200, 512 << 20)]
    state = State()
    for i in range(machines):
        mid = f"m{i:06d}"
        state.machines[mid] = from_wire(Machine, {
            "id": mid, "address": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "labels": {}, "ports": [20000, 20100],
            "fault_domain": {"region": f"r{i % 3}", "zone": f"z{i % 30}", "rack": f"k{i // 40}"},
            "resources": {"cpu": 16000, "memory": 64 << 30, "pids": 10000}, "runtime": "sim", "status": "up",
            "registered_at": 0, "last_transition": 0, "create_index": 0, "modify_index": 0, "eligible": True,
            "drain": None})
    usage = {}
    n = 0
    for i in range(machines):
        for _ in range(per_machine):
            job = n % jobs
            cpu, mem = sizes[job % len(sizes)]
            pid = f"j{job:04d}-{n:07d}"
            state.placements[pid] = from_wire(Placement, {
                "id": pid, "job": f"j{job:04d}", "version": 1, "replica": n // jobs, "machine": f"m{i:06d}",
                "resources": {"cpu": cpu, "memory": mem}, "ports": {}, "address": "10.0.0.1", "desired": "run",
                "state": "running", "health": "healthy", "exit_code": None, "reason": "", "created_at": 0,
                "updated_at": 0, "create_index": 0, "modify_index": 0})
            if n % 2:
                usage[pid] = eff.Usage(cpu=cpu * 0.4, memory=mem // 3)
            n += 1
    state.index = 1
    out: dict[str, float] = {}
    t = time.perf_counter()
    eff.efficiency(state.machines, state.placements, usage)
    out["view"] = time.perf_counter() - t
    live = [p for p in state.placements.values() if p.holds_resources()]
    up = sorted(((mid, {"cpu": m.resources["cpu"], "memory": m.resources["memory"]}) for mid, m in
                 state.machines.items()), key=lambda b: (-b[1]["cpu"], -b[1]["memory"], b[0]))
    items = [(p.id, {"cpu": p.resources["cpu"], "memory": p.resources["memory"]}) for p in live]
    t = time.perf_counter()
    eff.first_fit_decreasing(items, up)
    out["ffd"] = time.perf_counter() - t

    class Replica:   # what node/efficiency.py reads of a replica
        clock = FakeClock()
        metrics = Metrics(clock)

        @staticmethod
        def read(fn: Any) -> Any:
            return fn(state)

    now = [0.0]
    rep = Replica()
    rep._efficiency_cache = cache = ViewCache(timer=lambda: now[0] + time.perf_counter())  # type: ignore[attr-defined]
    list(prometheus_families(rep))                      # the first scrape computes (both trees)
    state.index += 1                                    # the state moved on,
    now[0] += 11 * max(cache.cost_s, 1.0)               # and the reuse window is over
    t = time.perf_counter()
    list(prometheus_families(rep))
    out["scrape"] = time.perf_counter() - t
    refresher = getattr(cache, "refresher", None)
    if refresher is not None:
        refresher.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=30000)
    ap.add_argument("--per-machine", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=600)
    add_options(ap, rounds=3)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args.machines, args.per_machine, args.jobs)))
        return
    argv = ["--machines", str(args.machines), "--per-machine", str(args.per_machine), "--jobs", str(args.jobs)]
    medians = alternated(
        trees(args.baseline), args.rounds, lambda tree: run_inner(__file__, tree, argv),
        lambda r, name, got: print(f"round {r}, {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in got.items()),
                                   flush=True))
    result: dict[str, Any] = {"bench": "efficiency", "machines": args.machines,
                              "placements": args.machines * args.per_machine, "jobs": args.jobs,
                              "rounds": args.rounds, "load1": round(os.getloadavg()[0], 2), "medians_s": medians}
    for name, m in medians.items():
        print(f"{name}: view {m['view']:.3f} s, ffd {m['ffd']:.3f} s, a stale scrape {m['scrape']:.3f} s "
              f"({args.machines:,} machines, {args.machines * args.per_machine:,} placements)")
    if "baseline" in medians:
        ratio = {k: round(medians["this tree"][k] / medians["baseline"][k], 3) if medians["baseline"][k] else None
                 for k in medians["baseline"]}
        result["ratio_vs_baseline"] = ratio
        print("this tree / baseline: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
