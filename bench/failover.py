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
import json
import os
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


def leader_kill(cluster: LocalCluster, trials: int) -> list[float]:
    out = []
    for i in range(trials):
        leader = wait(cluster.leader)
        others = [p for p in cluster.servers if p is not leader]
        c = Client([p.url for p in others], cluster.token(), timeout=0.5, retry_for=30)
        c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6})
        t0 = time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        while True:
            try:
                c.request("POST", "/v1/jobs/fo/scale", {"replicas": 6, "reason": f"trial {i}"})
                break
            except Exception:
                time.sleep(0.01)
        out.append(time.monotonic() - t0)
        print(f"trial {i}: kill -9 {leader.id} at {time.time() - out[-1]:.3f}, next write committed after "
              f"{out[-1]:.3f} s", file=sys.stderr)
        cluster.start_proc(leader)
        cluster.wait_ready(90, procs=[leader])
    return out


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
    ap.add_argument("--log-level", default="warning", help="the replicas' log level")
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
                lead = leader_kill(cluster, args.trials)
                res["leader_kill_p50_s"] = round(statistics.median(lead), 3)
                res["leader_kill_p99_s"] = round(pct(lead, 0.99), 3)
                res["leader_kill_max_s"] = round(max(lead), 3)
                res["leader_kill_s"] = [round(x, 3) for x in lead]
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
        print(f"leader kill -9 -> next committed write: p50 {res['leader_kill_p50_s']} s, "
              f"p99 {res['leader_kill_p99_s']} s (aim p99 <= 1 s)")
    if "graceful" in parts:
        print(f"leader SIGTERM -> longest write wait: p50 {res['graceful_p50_s']} s, p99 {res['graceful_p99_s']} s "
              f"(aim p99 <= 0.2 s); {res['graceful_failed']} request(s) failed, {res['graceful_retried']} attempt(s) "
              f"retried by the client; SIGTERM -> exit p50 {res['graceful_exit_p50_s']} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
