"""Failover benchmarks on a real 3-replica cluster with sim agents.

(1) Machine loss: kill -9 the agent of a machine running replicas; time until
    every replica of the job is healthy on another machine and discovery lists
    none on the dead one. p50/p99 over N trials. Anchors: Kubernetes defaults
    ~5 min 50 s, Nomad ~20 s, Swarm ~15 s; aim p99 <= TTL + 2 s.
(2) Leader kill -9 -> next committed write, p50/p99 over N trials; aim p99 <= 1 s.
(3) Graceful stop: SIGTERM the leader while a client (raftctl.client, failing over between the two
    followers) writes in a loop; the longest a write waited from the signal (the leader change as a
    client sees it), p50/p99, and the requests that failed (after the client's retries) or were
    retried by it (a 503 or a refused connection answered, then retried on another replica).
    Aim p99 <= 200 ms and no failed request.
(4) Idle terms: the Raft term before and after --idle seconds of an idle cluster (spurious elections).
--parts picks which to run (default all); RAFTCTL_RAFT_TIMING="min,max,heartbeat" (seconds) in the
environment sets the replicas' election timeouts and heartbeat period, to compare settings back to back.
Prints figures and one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.client import Client  # noqa: E402
from raftctl.devcluster import LocalCluster  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def healthy(c: Client, job: str) -> list[dict]:
    pl = c.request("GET", f"/v1/jobs/{job}/placements")["placements"]
    return [p for p in pl if p["desired"] == "run" and p["state"] == "running" and p["health"] == "healthy"]


def wait(fn, timeout: float = 60.0, step: float = 0.02):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        time.sleep(step)
    raise TimeoutError


def machine_loss(cluster: LocalCluster, trials: int, ttl: float) -> list[float]:
    c = Client(cluster.urls, cluster.token(), retry_for=30)
    c.request("PUT", "/v1/jobs/fo", {"name": "fo", "image": "sim:1", "command": ["serve"], "replicas": 6,
                                     "resources": {"cpu": "100m", "memory": "32Mi"}, "ports": [{"name": "http"}],
                                     "spread": [{"level": "rack", "mode": "soft"}]})
    out = []
    for _ in range(trials):
        before = wait(lambda: (lambda r: r if len(r) == 6 else None)(healthy(c, "fo")))
        victim_id = Counter(p["machine"] for p in before).most_common(1)[0][0]
        victim = next(a for a in cluster.agents if a.id == victim_id)
        t0 = time.monotonic()
        cluster.kill(victim, signal.SIGKILL)

        def recovered() -> bool:
            r = healthy(c, "fo")
            eps = c.request("GET", "/v1/discovery/fo")["endpoints"]
            return (len(r) == 6 and all(p["machine"] != victim_id for p in r)
                    and len(eps) == 6 and all(e["machine"] != victim_id for e in eps))
        wait(recovered)
        out.append(time.monotonic() - t0)
        cluster.start_proc(victim)
        wait(lambda: {m["id"]: m for m in c.request("GET", "/v1/machines")["machines"]}[victim_id]["status"] == "up")
    return out


class TracingClient(Client):
    """raftctl.client.Client that records every attempt: (server, start, end, outcome) on time.monotonic()."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.attempts: list[tuple[str, float, float, str]] = []

    def urlopen(self, req, timeout):  # type: ignore[no-untyped-def]
        s = time.monotonic()
        server = req.full_url.split("/v1")[0]
        try:
            resp = super().urlopen(req, timeout)
        except Exception as exc:
            self.attempts.append((server, s, time.monotonic(), f"{type(exc).__name__} {getattr(exc, 'code', '')}"))
            raise
        self.attempts.append((server, s, time.monotonic(), "ok"))
        return resp


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def _raft_events(p, since: float, until: float) -> list[tuple[float, str, str]]:  # type: ignore[no-untyped-def]
    """(wall time, replica, event) from a replica's log between two wall times: 'pre-vote' (a pre-vote round
    after hearing from a leader; logged by raftctl after issue 13's failover work only), 'candidate', 'leader'."""
    out = []
    try:
        with open(os.path.join(p.data_dir, "server.log"), errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        m = _LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if not since - 0.002 <= at <= until + 0.002:
            continue
        text = m.group(2)
        if "raft state" in text and text.endswith("-> 1"):
            out.append((at, p.id, "candidate"))
        elif "raft state" in text and text.endswith("-> 2"):
            out.append((at, p.id, "leader"))
        elif text.startswith("pre-vote: asking"):
            out.append((at, p.id, "pre-vote"))
    return sorted(out)


def leader_kill(cluster: LocalCluster, trials: int, all_servers: bool = False) -> tuple[list[float], list[dict]]:
    """kill -9 the leader, then write through a client of the followers (or of all three replicas, the dead one
    first, with ``all_servers``): the time to the first committed write, and per trial a breakdown read from the
    replicas' logs (needs --log-level info) and the client's attempts."""
    out, details = [], []
    for i in range(trials):
        leader = wait(cluster.leader)
        others = [p for p in cluster.servers if p is not leader]
        urls = [leader.url] + [p.url for p in others] if all_servers else [p.url for p in others]
        c = TracingClient(urls, cluster.token(), timeout=0.5, retry_for=30)
        c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6})
        c.attempts.clear()
        w0, t0 = time.time(), time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        while True:
            try:
                c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6, "reason": f"trial {i}"})
                break
            except Exception:
                time.sleep(0.01)
        out.append(time.monotonic() - t0)
        events = [e for p in others for e in _raft_events(p, w0, w0 + out[-1])]
        first = {kind: next((at - w0 for at, _, k in events if k == kind), None)
                 for kind in ("pre-vote", "candidate", "leader")}
        ok_start = next((s - t0 for _, s, _, o in reversed(c.attempts) if o == "ok"), None)
        d = {"total": round(out[-1], 3), "pre_vote": first["pre-vote"], "candidate": first["candidate"],
             "leader": first["leader"], "elections": sum(1 for e in events if e[2] == "candidate"),
             "attempts": len(c.attempts), "failed_attempts": [f"{o} {e - s:.3f}s" for _, s, e, o in c.attempts
                                                              if o != "ok"],
             "last_attempt_start": ok_start}
        details.append({k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()})
        print(f"trial {i}: kill -9 {leader.id}, next write committed after {out[-1]:.3f} s; {details[-1]}",
              file=sys.stderr)
        cluster.start_proc(leader)
        cluster.wait_ready(90, procs=[leader])
    return out, details


def breakdown(details: list[dict]) -> dict:
    """Medians and maxima of the phases: detection (kill -> first pre-vote or candidate), election (-> leader),
    and the rest (leader known -> write acknowledged: the client's retries, the forward, the commit)."""
    def stats(xs: list[float]) -> dict:
        xs = [x for x in xs if x is not None]
        return {"p50": round(statistics.median(xs), 3), "max": round(max(xs), 3)} if xs else {}
    detect = [d["pre_vote"] if d["pre_vote"] is not None else d["candidate"] for d in details]
    elect = [d["leader"] - x for d, x in zip(details, detect) if d["leader"] is not None and x is not None]
    rest = [d["total"] - d["leader"] for d in details if d["leader"] is not None]
    return {"detection_s": stats(detect), "election_s": stats(elect), "after_leader_s": stats(rest),
            "trials_with_repeat_election": sum(1 for d in details if d["elections"] > 1),
            "trials_with_failed_attempts": sum(1 for d in details if d["failed_attempts"])}


class CountingClient(Client):
    """raftctl.client.Client that counts the attempts it had to retry (errors it hid from the caller)."""

    retried = 0
    kinds: Counter = Counter()

    def urlopen(self, req, timeout):  # type: ignore[no-untyped-def]
        try:
            return super().urlopen(req, timeout)
        except Exception as exc:
            self.retried += 1
            CountingClient.kinds[f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()] += 1
            raise


def graceful_stop(cluster: LocalCluster, trials: int) -> tuple[list[float], list[float], int, int]:
    """SIGTERM the leader under a write loop: (longest wait per trial, SIGTERM -> exit, failed, retried)."""
    stalls, exits, failed, retried = [], [], 0, 0
    for i in range(trials):
        leader = wait(cluster.leader)
        others = [p for p in cluster.servers if p is not leader]
        c = CountingClient([p.url for p in others], cluster.token(), timeout=2.0, retry_for=30)
        c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6})
        log: list[tuple[float, float, bool]] = []
        done = threading.Event()

        def writer() -> None:
            n = 0
            while not done.is_set():
                s = time.monotonic()
                try:
                    c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6, "reason": f"graceful {i}.{n}"})
                    ok = True
                except Exception as exc:
                    print(f"trial {i}: write failed: {exc}", file=sys.stderr)
                    ok = False
                log.append((s, time.monotonic(), ok))
                n += 1

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        time.sleep(0.5)
        c.retried = 0
        t0 = time.monotonic()
        assert leader.popen is not None
        leader.popen.send_signal(signal.SIGTERM)
        leader.popen.wait(timeout=30)
        t_exit = time.monotonic()
        time.sleep(0.5)
        done.set()
        th.join()
        hit = [(s, e, ok) for s, e, ok in log if e >= t0 and s <= t_exit]
        stalls.append(max(e - max(s, t0) for s, e, _ in hit))
        exits.append(t_exit - t0)
        failed += sum(1 for *_, ok in hit if not ok)
        retried += c.retried
        cluster.start_proc(leader)
        cluster.wait_ready(90, procs=[leader])
    return stalls, exits, failed, retried


def idle_terms(cluster: LocalCluster, seconds: float) -> tuple[int, int]:
    """(terms started, leader changes seen by polling every 0.2 s) over ``seconds`` of an idle cluster."""
    def term() -> int:
        return max(cluster.get(p, "/v1/status")["term"] for p in cluster.servers)
    first, leaders, last_leader = term(), 0, wait(cluster.leader)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.2)
        now = cluster.leader()
        if now is not None and now is not last_leader:
            leaders, last_leader = leaders + 1, now
    return term() - first, leaders


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=3.0)
    ap.add_argument("--parts", default="loss,kill,graceful,idle", help="comma-separated: loss,kill,graceful,idle")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of the idle part")
    ap.add_argument("--dir", help="keep the cluster's data dirs and logs here (default: a temporary dir)")
    ap.add_argument("--log-level", default="info", help="the replicas' log level (info: the kill part's breakdown)")
    ap.add_argument("--all-servers", action="store_true",
                    help="kill part: the client lists all three replicas, the killed leader first")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    res: dict = {"bench": "failover", "trials": args.trials, "ttl_s": args.ttl,
                 "raft_timing": os.environ.get("RAFTCTL_RAFT_TIMING", "default")}
    with (tempfile.TemporaryDirectory() if args.dir is None else contextlib.nullcontext(args.dir)) as d:
        cluster = LocalCluster(d, replicas=3, agents=5, runtime="sim", log_level=args.log_level,
                               agent_args=["--heartbeat", "500ms"])
        for p in cluster.servers:
            p.extra_args = ["--heartbeat-ttl", f"{args.ttl}s"]
        cluster.start(timeout=60)
        cluster.wait_agents(30)
        try:
            if "idle" in parts:
                res["idle_s"] = args.idle
                res["idle_terms"], res["idle_leader_changes"] = idle_terms(cluster, args.idle)
            if "loss" in parts:
                loss = machine_loss(cluster, args.trials, args.ttl)
                res["machine_loss_p50_s"] = round(statistics.median(loss), 3)
                res["machine_loss_p99_s"] = round(pct(loss, 0.99), 3)
            else:
                Client(cluster.urls, cluster.token(), retry_for=30).request(
                    "PUT", "/v1/jobs/fo", {"name": "fo", "image": "sim:1", "command": ["serve"], "replicas": 6,
                                           "resources": {"cpu": "100m", "memory": "32Mi"}})
            if "kill" in parts:
                lead, details = leader_kill(cluster, args.trials, args.all_servers)
                res["leader_kill_p50_s"] = round(statistics.median(lead), 3)
                res["leader_kill_p99_s"] = round(pct(lead, 0.99), 3)
                res["leader_kill_max_s"] = round(max(lead), 3)
                res["leader_kill_p95_s"] = round(pct(lead, 0.95), 3)
                res["leader_kill_s"] = [round(x, 3) for x in lead]
                res["leader_kill_breakdown"] = breakdown(details)
            if "graceful" in parts:
                stalls, exits, failed, retried = graceful_stop(cluster, args.trials)
                res["graceful_p50_s"] = round(statistics.median(stalls), 3)
                res["graceful_p99_s"] = round(pct(stalls, 0.99), 3)
                res["graceful_max_s"] = round(max(stalls), 3)
                res["graceful_s"] = [round(x, 3) for x in stalls]
                res["graceful_exit_p50_s"] = round(statistics.median(exits), 3)
                res["graceful_failed"], res["graceful_retried"] = failed, retried
                res["graceful_retried_kinds"] = dict(CountingClient.kinds)
        finally:
            cluster.stop()
    if "idle" in parts:
        print(f"idle {args.idle:.0f} s: {res['idle_terms']} new term(s), {res['idle_leader_changes']} leader change(s)")
    if "loss" in parts:
        print(f"machine loss -> replaced, healthy, in discovery: p50 {res['machine_loss_p50_s']} s, "
              f"p99 {res['machine_loss_p99_s']} s (TTL {args.ttl} s; aim p99 <= TTL + 2 s; Nomad ~20 s, K8s ~350 s)")
    if "kill" in parts:
        print(f"leader kill -9 -> next committed write ({args.trials} trials): p50 {res['leader_kill_p50_s']} s, "
              f"p95 {res['leader_kill_p95_s']} s, p99 {res['leader_kill_p99_s']} s, max {res['leader_kill_max_s']} s "
              f"(aim p99 <= 1 s); {res['leader_kill_breakdown']}")
    if "graceful" in parts:
        print(f"leader SIGTERM -> longest write wait: p50 {res['graceful_p50_s']} s, p99 {res['graceful_p99_s']} s "
              f"(aim p99 <= 0.2 s); {res['graceful_failed']} request(s) failed, {res['graceful_retried']} attempt(s) "
              f"retried by the client; SIGTERM -> exit p50 {res['graceful_exit_p50_s']} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
