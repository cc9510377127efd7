"""API writes and reads on a control plane holding a fleet's state, without the fleet: what the scheduler loop and
the apply lock cost each write when the state is large.

A fresh 3-replica cluster per round; ``--machines`` registered through the API (an agent token, TTL 1 h: nobody
heartbeats, nobody goes down), ``--jobs`` jobs of ``--replicas`` replicas placed (they stay pending: no agent
reports), then 8 clients scaling eight empty jobs to 0 (each write still wakes a scheduler pass) and 8 reading a
job, ``--seconds`` long, spread over the three replicas: the API phase of bench/scale.py with the agents' load taken
away, so the figures are the control plane's. Prints writes/s, p50, p99, reads/s and the leader's scheduler passes
during the load, per round and as medians; ``--baseline DIR`` runs another checkout's raftctl (e.g. a clone at an
older commit) in the same run, the order turning each round, and prints the ratios. One JSON line at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

from trees import add_options, alternated, run_inner, trees


def inner(machines: int, jobs: int, replicas: int, seconds: float) -> dict[str, Any]:
    """One round against the raftctl of the working directory (the tree under test: its replicas run it); the
    bench's own helpers (bench/scale.py) are this checkout's."""
    import scale

    with tempfile.TemporaryDirectory(prefix="bench-api-scale-") as d:
        bed = scale.Bed(d, 20000, ttl="1h")
        try:
            bed.cluster.start(timeout=60)
            scale.register_machines(bed, machines, lambda i: f"z{i % 10}")
            leader = bed.leader
            for j in range(jobs):
                bed.call("PUT", f"/v1/jobs/s{j}", {"name": f"s{j}", "image": "scale:1", "command": ["s"],
                                                   "replicas": replicas, "resources": {"cpu": "100m", "memory": "64Mi"}})

            def metric(prefix: str) -> float:
                text = bed.get(leader.url, "/metrics").decode()
                return sum(float(line.split()[-1]) for line in text.splitlines()
                           if line.startswith(prefix + " ") or line.startswith(prefix + "{"))
            deadline = time.monotonic() + 600
            while metric("raftctl_placements") < jobs * replicas:
                if time.monotonic() > deadline:
                    raise RuntimeError("the placements were not all made in 600 s")
                time.sleep(1)
            for i in range(8):
                bed.call("PUT", f"/v1/jobs/w{i}", {"name": f"w{i}", "image": "scale:1", "command": ["w"], "replicas": 0})
            time.sleep(2)
            before = metric("raftctl_scheduler_passes")
            writes, reads = asyncio.run(scale.api_under_load(bed, seconds, 8))
            passes = metric("raftctl_scheduler_passes") - before
        finally:
            bed.stop()
    return {"write_per_s": round(writes["writes_per_s"], 1), "write_p50_ms": round(writes["p50_ms"], 2),
            "write_p99_ms": round(writes["p99_ms"], 2), "read_per_s": round(reads["per_s"], 1),
            "passes_per_s": round(passes / seconds, 1), "load1": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=8.0)
    add_options(ap, rounds=2)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args.machines, args.jobs, args.replicas, args.seconds)))
        return
    argv = ["--machines", str(args.machines), "--jobs", str(args.jobs), "--replicas", str(args.replicas),
            "--seconds", str(args.seconds)]

    def show(r: int, name: str, row: dict[str, Any]) -> None:
        print(f"round {r}, {name}: {row['write_per_s']:,} writes/s (p50 {row['write_p50_ms']} ms, p99 "
              f"{row['write_p99_ms']} ms), {row['read_per_s']:,} reads/s, {row['passes_per_s']} scheduler "
              f"passes/s (load {row['load1']})", flush=True)
    medians = alternated(trees(args.baseline), args.rounds, lambda tree: run_inner(__file__, tree, argv), show)
    for name, m in medians.items():
        print(f"{name}: {m['write_per_s']:,.1f} writes/s, p99 {m['write_p99_ms']} ms, {m['read_per_s']:,.1f} reads/s "
              f"({args.machines:,} machines, {args.jobs * args.replicas:,} placements; medians of {args.rounds})")
    out: dict[str, Any] = {"bench": "api_scale", "machines": args.machines, "placements": args.jobs * args.replicas,
                           "rounds": args.rounds, "medians": medians}
    if args.baseline:
        out["ratio_writes"] = round(medians["this tree"]["write_per_s"] / medians["baseline"]["write_per_s"], 3)
        print(f"writes/s, this tree / baseline: {out['ratio_writes']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
