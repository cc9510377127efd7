"""The proposer's in-flight cap (RAFTCTL_MAX_INFLIGHT) against writes/s, CPU per write and fsyncs.

For each cap, alternated within one run (the order reverses every round), a fresh 3-replica local cluster:
the Python client and wrk loads of bench/raft_commit.py (writes/s, p50/p99, members' CPU per write), then one
more wrk load with strace counting every replica's fsync/fdatasync calls, against the entries committed in
that load (the leader's commit index before and after). strace slows the replicas: that phase gives only the
counts, not rates.

    .venv/bin/python bench/proposer_inflight.py --caps 2,4,8 --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import raft_commit as rc  # noqa: E402

from raftctl.devcluster import LocalCluster  # noqa: E402

STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(?:fdatasync|fsync)\s*$", re.M)


def commit_index(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url + "/v1/status", headers=headers)
    return int(json.loads(urllib.request.urlopen(req, timeout=5).read())["commit_index"])


def count_syncs(pids: list[int], load: Any) -> tuple[Any, list[int]]:
    """Run ``load()`` with strace -c attached to each pid; returns its result and each pid's sync calls."""
    traces = []
    for pid in pids:
        fd, path = tempfile.mkstemp(suffix=".strace")
        os.close(fd)
        traces.append((path, subprocess.Popen(["strace", "-f", "-qq", "-c", "-e", "trace=fdatasync,fsync",
                                               "-o", path, "-p", str(pid)])))
    time.sleep(1.0)  # attached
    try:
        result = load()
    finally:
        counts = []
        for path, proc in traces:
            proc.send_signal(2)
            proc.wait(timeout=20)
            with open(path) as f:
                counts.append(sum(int(m.group(1)) for m in STRACE_LINE.finditer(f.read())))
            os.unlink(path)
    return result, counts


def one(cap: int, seconds: float, wrk_seconds: int, clients: int) -> dict[str, Any]:
    os.environ["RAFTCTL_MAX_INFLIGHT"] = str(cap)  # the replicas read it at start (replica.py)
    with tempfile.TemporaryDirectory(prefix="bench-inflight-") as d:
        cluster = LocalCluster(d, replicas=3, log_level="warning")
        cluster.start(timeout=30)
        try:
            leader = cluster.leader()
            assert leader is not None, "no leader"
            urls = [leader.url] + [u for u in cluster.urls if u != leader.url]
            rc.URLS[:] = urls
            headers = {"Authorization": f"Bearer {cluster.token() or ''}", "Content-Type": "application/json"}
            pids = [leader.pid] + [p.pid for p in cluster.servers if p.url != leader.url]
            pids = [p for p in pids if p is not None]
            asyncio.run(rc.http_load(urls, headers, rc.raftctl_request, 1.5, clients, rc.raftctl_setup(clients)))
            py = rc.with_cpu(lambda: asyncio.run(rc.http_load(urls, headers, rc.raftctl_request, seconds, clients)),
                             pids)
            wk = rc.with_cpu(lambda: rc.wrk_load(urls, headers, rc.raftctl_request, wrk_seconds, clients, clients),
                             pids)
            before = commit_index(urls[0], headers)
            traced, syncs = count_syncs(pids, lambda: rc.wrk_load(urls, headers, rc.raftctl_request, wrk_seconds,
                                                                   clients, clients))
            entries = commit_index(urls[0], headers) - before
        finally:
            cluster.stop()
    writes = round(traced["writes_per_s"] * wrk_seconds) if traced else 0
    return {"cap": cap, "load1": round(os.getloadavg()[0], 1), "python": rc._round(py), "wrk": rc._round(wk),
            "traced_writes": writes, "traced_entries": entries, "syncs_leader_first": syncs,
            "leader_syncs_per_entry": round(syncs[0] / entries, 2) if entries else None,
            "leader_syncs_per_write": round(syncs[0] / writes, 3) if writes else None,
            "writes_per_entry": round(writes / entries, 1) if entries else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--caps", default="2,4,8", help="RAFTCTL_MAX_INFLIGHT values, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="Python-client load per cap")
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("strace"):
        sys.exit("needs wrk and strace")
    caps = [int(x) for x in args.caps.split(",")]
    for n in range(args.rounds):
        for cap in caps if n % 2 == 0 else caps[::-1]:
            print(json.dumps({"round": n + 1, **one(cap, args.seconds, args.wrk_seconds, args.clients)}), flush=True)


if __name__ == "__main__":
    main()
