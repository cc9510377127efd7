"""Check a finished run and write its report.

    python analyse.py RUN_DIR      results.json, report.md and timeline.svg in RUN_DIR; exit 0/1/2

Checkers (see checkers/): linearizability per job register, no lost acknowledged write,
at most one leader per term, replicas' hash chains agree, convergence after heal,
discovery bound (answers read with ?consistent=1), no 5xx other than 503, every fault
verified, nothing of bridge mode left behind. A checker that cannot decide says "unknown" (never "pass").
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from checkers import chains, combine, convergence, discovery, fencing, leaders, leftovers, linear, lost_writes  # noqa: E402,E501
from history import iter_json_lines, pair_ops, read_history  # noqa: E402

CONVERGENCE_BOUND_S = 30.0
DISCOVERY_BOUND_S = 6.0   # health checks (300 ms x 2) + the commit of the transition, with slack
LINEAR_TIMEOUT_S = 120.0
FENCING_BOUND_S = 20.0    # stop grace (10 s) + the agent's 1 s connect bound and 1 s level-triggered pass, with slack


AGENT_OUT = ("agent-cut", "kill-agent", "pause-agent")


def _agent_cuts(faults: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """When an agent could not reach the control plane or act (agent-cut; an agent killed or paused: its
    containers run on and it learns nothing until it is back). One list for every agent: an agent's fault
    also widens the bound for the other agents' containers during it."""
    out, start = [], None
    for f in faults:
        if f.get("kind") in AGENT_OUT and f.get("type") == "start":
            start = f["time"]
        elif f.get("kind") in AGENT_OUT and f.get("type") == "end" and start is not None:
            out.append((start, f["time"]))
            start = None
    return out


def _lines(run_dir: str, name: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, name)
    return list(iter_json_lines(path)) if os.path.exists(path) else []


def _load(run_dir: str, name: str) -> dict[str, Any]:
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def check_run(run_dir: str) -> dict[str, Any]:
    meta = _load(run_dir, "meta.json")
    work = _load(run_dir, "workload.json")
    results: dict[str, Any] = {}
    if meta.get("harness_error"):
        results["harness"] = {"valid": False, "error": meta["harness_error"]}
    faults = _lines(run_dir, "faults.jsonl")
    unverified = [f for f in faults if f.get("type") == "start"
                  and isinstance(f["done"].get("verified"), dict) and f["done"]["verified"].get("ok") is False]
    results["faults_verified"] = {"valid": not unverified and not meta.get("harness_error"),
                                  "faults": sum(1 for f in faults if f.get("type") == "start"),
                                  "unverified": unverified}
    history = read_history(os.path.join(run_dir, "history.jsonl")) if os.path.exists(
        os.path.join(run_dir, "history.jsonl")) else []
    calls = pair_ops(history)
    results["linearizable"] = linear.check(calls, timeout_s=LINEAR_TIMEOUT_S).to_json()
    if "final_at_ns" in work:
        final = lost_writes.final_reads(history, work["final_at_ns"])
        results["no_lost_writes"] = lost_writes.check(calls, final).to_json()
    else:
        results["no_lost_writes"] = {"valid": "unknown", "why": "no final reads (the workload did not finish)"}
    status = [s for s in _lines(run_dir, "status.jsonl") if s.get("ok")]
    results["one_leader_per_term"] = leaders.check(status).to_json()
    per_node: dict[str, list[tuple[int, str]]] = {}
    for s in status:
        if s.get("chain") is not None and s.get("entries") is not None:
            per_node.setdefault(s["node"], []).append((s["entries"], s["chain"]))
    results["hash_chains_agree"] = chains.check(per_node).to_json()
    heal_ns = meta.get("heal_ns")
    if heal_ns:
        results["convergence"] = convergence.check(_lines(run_dir, "jobs.jsonl"), heal_ns, CONVERGENCE_BOUND_S).to_json()
    else:
        results["convergence"] = {"valid": "unknown", "why": "the run never healed"}
    answers = _lines(run_dir, "answers.jsonl")
    health = _lines(run_dir, "health.jsonl")
    consistent = [dict(a, time=a.get("invoked", a["time"])) for a in answers if a.get("consistent")]
    results["discovery_bound"] = discovery.check(consistent, health, DISCOVERY_BOUND_S).to_json()
    plain = discovery.check([dict(a, time=a.get("invoked", a["time"])) for a in answers if not a.get("consistent")],
                            health, DISCOVERY_BOUND_S).to_json()
    plain["valid"] = "informational"  # plain reads may be stale by design (they say so in X-Raftctl-Index)
    results["discovery_plain_reads"] = plain
    cuts = _agent_cuts(faults)
    results["fencing"] = fencing.check(_lines(run_dir, "placements.jsonl"),
                                       [c for c in _lines(run_dir, "containers.jsonl") if "running" in c],
                                       cuts, FENCING_BOUND_S).to_json()
    results["no_network_leftovers"] = leftovers.check(meta)
    results["recovery"] = recovery(faults, _lines(run_dir, "status.jsonl"), meta.get("nodes") or [])
    bugs = work.get("bugs", [])
    results["no_server_errors"] = {"valid": not bugs, "count": len(bugs), "examples": bugs[:5]}
    ops = {"total": len(calls), "by_type": {}}
    for c in calls:
        ops["by_type"][f"{c.f}:{c.status}"] = ops["by_type"].get(f"{c.f}:{c.status}", 0) + 1
    ops["fail"] = sum(1 for op in history if op.type == "fail")
    verdicts = [r["valid"] for r in results.values() if r.get("valid") != "informational"]
    return {"valid": combine(verdicts), "seed": meta.get("seed"), "nodes": meta.get("nodes"),
            "duration": meta.get("duration"), "ops": ops, "workload": {k: work.get(k) for k in ("ops", "final_missing")},
            "checkers": results}


def recovery(faults: list[dict[str, Any]], status: list[dict[str, Any]], nodes: list[str]) -> dict[str, Any]:
    """Informational: after each fault is undone, how long until every replica answers and names
    the same leader in the same term, and until every replica has applied what was committed
    when the fault ended."""
    by_time: dict[int, dict[str, dict[str, Any]]] = {}
    for s in status:
        by_time.setdefault(s["time"], {})[s["node"]] = s
    rounds = sorted(by_time.items())
    out = []
    for f in faults:
        if f.get("type") not in ("end", "heal"):
            continue
        agreed = None
        for t, ss in rounds:
            if t < f["time"]:
                continue
            views = {(s.get("term"), s.get("leader")) for s in ss.values() if s.get("ok")}
            if len(ss) == len(nodes) and all(s.get("ok") for s in ss.values()) and len(views) == 1 \
                    and next(iter(views))[1]:
                agreed = t
                break
        # caught up: every replica has applied what the most advanced one had committed at the fault's end
        before = [s for t, ss in rounds if t <= f["time"] for s in ss.values() if s.get("ok")]
        target = max((s.get("commit_index") or 0 for s in before[-3 * len(nodes):]), default=0)
        caught = None
        for t, ss in rounds:
            if t >= f["time"] and len(ss) == len(nodes) and all(
                    s.get("ok") and (s.get("applied_index") or 0) >= target for s in ss.values()):
                caught = t
                break
        entry = {"after": f.get("kind", "heal"), "target": f.get("target"),
                 "seconds": None if agreed is None else round((agreed - f["time"]) / 1e9, 2),
                 "caught_up_s": None if caught is None else round((caught - f["time"]) / 1e9, 2)}
        # The next fault may begin before every replica caught up (a kill-leader 1 s after a heal keeps the
        # killed replica behind until it restarts): that figure measures the next fault, not this recovery.
        nxt = next((g for g in faults if g.get("type") == "start" and g["time"] > f["time"]), None)
        if nxt is not None and (caught is None or caught > nxt["time"]):
            entry["interrupted_by"] = {"kind": nxt.get("kind"), "after_s": round((nxt["time"] - f["time"]) / 1e9, 2)}
        out.append(entry)
    secs = [o["seconds"] for o in out if o["seconds"] is not None]
    caught_up = [o["caught_up_s"] for o in out if o["caught_up_s"] is not None and "interrupted_by" not in o]
    return {"valid": "informational", "max_s": max(secs) if secs else None,
            "max_caught_up_s": max(caught_up) if caught_up else None,
            "interrupted": [o for o in out if "interrupted_by" in o], "faults": out}


def exit_code(res: dict[str, Any]) -> int:
    checks = res["checkers"]
    if checks.get("harness") or checks["faults_verified"]["valid"] is False:
        return 2
    return 1 if res["valid"] is False else 0


def analyse(run_dir: str) -> int:
    res = check_run(run_dir)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    import report

    report.write(run_dir, res)
    code = exit_code(res)
    bad = [k for k, v in res["checkers"].items() if v.get("valid") is False]
    print(f"  checkers: {'FAILED ' + ', '.join(bad) if bad else 'all passed or unknown'} (exit {code})", flush=True)
    return code


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(analyse(sys.argv[1]))
