"""Smoke of the jepsen-style harness: 3 seeds x 90 s of faults against a real 3-replica cluster
in network namespaces made by the run. Every checker must pass (or say "unknown"), every fault
must be verified, and the old leader's isolation for longer than 30 s must not stop
`?consistent=1` reads on the majority side."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from history import read_history

pytestmark = [pytest.mark.root, pytest.mark.slow]

RUN = os.path.join(os.path.dirname(__file__), "..", "..", "jepsen-style", "run.py")
SEEDS, DURATION = 3, 90


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "not root (network namespaces and nftables need root)"
    missing = [t for t in ("unshare", "ip", "nft") if shutil.which(t) is None]
    if missing:
        return f"missing {missing} (apt-get install iproute2 nftables util-linux, or `make deps` as root)"
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    problem = _problem()
    if problem:
        msg = f"!!! JEPSEN-STYLE SMOKE SKIPPED: {problem}. Fault tolerance is NOT being tested. !!!"
        print("\n" + msg, file=sys.stderr)
        warnings.warn(msg)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("jepsen")
    p = subprocess.run([sys.executable, RUN, "--seeds", str(SEEDS), "--duration", str(DURATION), "--out", str(out)],
                       capture_output=True, text=True, timeout=SEEDS * (DURATION + 300))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    dirs = [r["run"] for r in summary["runs"]]
    reports = "\n".join(open(os.path.join(d, "report.md")).read() for d in dirs if os.path.exists(os.path.join(d, "report.md")))
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}\n{reports[:8000]}"
    return dirs


def test_every_seed_passes_every_checker_with_verified_faults(runs: list[str]) -> None:
    assert len(runs) == SEEDS
    for d in runs:
        res = json.load(open(os.path.join(d, "results.json")))
        checks = res["checkers"]
        for name in ("linearizable", "no_lost_writes", "one_leader_per_term", "hash_chains_agree",
                     "convergence", "discovery_bound", "fencing", "no_server_errors", "faults_verified"):
            assert checks[name]["valid"] in (True, "unknown"), (d, name, checks[name])
        assert checks["faults_verified"]["faults"] >= 3
        assert checks["no_lost_writes"]["acknowledged"] > 100
        for f in ("report.md", "timeline.svg", "schedule.json", "history.jsonl", "status.jsonl", "logs/n1.log"):
            assert os.path.getsize(os.path.join(d, f)) > 0, f


def test_consistent_reads_continue_while_the_old_leader_is_isolated_past_30s(runs: list[str]) -> None:
    for d in runs:
        faults = [json.loads(line) for line in open(os.path.join(d, "faults.jsonl"))]
        start = next(f for f in faults if f.get("type") == "start" and f["event"]["args"].get("long"))
        end = next(f for f in faults if f.get("type") == "end" and f["time"] > start["time"])
        assert (end["time"] - start["time"]) / 1e9 > 30
        old = start["done"]["target"]
        ops = read_history(os.path.join(d, "history.jsonl"))
        reads_ok = [op for op in ops if op.f == "read" and op.type == "ok" and start["time"] < op.time < end["time"]
                    and op.extra.get("node") != old]
        assert len(reads_ok) > 50, (d, old, len(reads_ok))
