"""The scale test bed: N simulated machines, 10 replicas each, on one 3-replica control plane.

Per size (``--sizes 1000,3000,10000``; the default is small so `make bench` finishes in a few minutes):
machines are played by several ``raftctl agent --runtime sim --count K`` processes (K <= ``--per-process``),
each machine heartbeating at the real rate (1 s, TTL 3 s), posting stats every 2 s and reporting its
placements healthy, exactly as one real agent would. One extra agent process holds 1 % of the machines:
freezing it (SIGSTOP) is the failover trial.

Phases and figures (leader CPU and RSS from psutil; counts from the replicas' /metrics), in this order:
1. register: all N machines up; the interval and TTL the leader tells (its heartbeat budget); leader CPU per agent
   request (heartbeats, stats, watches) in a steady window, net of the idle leader measured before any agent
   started; the agent processes' cores and RSS;
2. place: jobs of 500 replicas until 10 x N placements are healthy: time from the first PUT, placements/s,
   leader CPU, RSS per placement (leader RSS growth / placements);
3. snapshot: GET /v1/snapshot (a barrier, then the whole state) time and size; the Raft snapshot file's size;
4. failover (after ``--settle`` s): SIGSTOP the 1 % process; time until each of its machines is down (p50/p99,
   against the TTL in force), until every placement is healthy again, and machines declared down that were
   never frozen; the poll asks a follower for the down machines only (``GET /v1/machines?state=down``) every
   0.25 s and scrapes its /metrics at most once a second after the last is down, and the follower's cores
   during the trial are printed (``polled_follower_cores``): the bench shares the leader's machine;
5. API p99 under that load: 8 Python clients writing (scale) and 8 reading (GET a job) for a few seconds (after
   the failover trial: it is the most disruptive phase);
6. a follower stopped, writes pushed past ``--compact-entries`` (so the leader compacts and must send a
   snapshot), restarted: time to catch up (install); restarted again: time to ready (replay from disk);
7. the leader killed (SIGKILL): time until another replica leads and until a write commits, and the machines
   declared down in the TTL + 30 s after (every agent must find the new leader within the TTL it re-arms).

Every row goes to bench/out/scale.jsonl (gitignored); bench/out/scale.svg is the cost curve drawn by hand
from the newest row per size. Prints a table and one JSON line per size.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import aiohttp
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from raft_commit import http_load, wrk_load  # noqa: E402

from raftctl.aio import event_loop_from_env  # noqa: E402
from raftctl.devcluster import LocalCluster, Proc  # noqa: E402

OUT = os.path.join(HERE, "out")
JOB_REPLICAS = 500
# name{labels} value; a label value may hold braces (route="GET /v1/agent/assignments/{machine}")
METRIC_RE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+([-+\deE.naNIf]+)$', re.M)


class Stalled(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def raise_fd_limit() -> None:
    """The leader holds a few connections per simulated machine: 10,000 machines need more than 20,000 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 262144
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def again(what: str, send: Callable[[], bytes], *, attempts: int, pause: Callable[[int], float],
          unreachable_too: bool = True) -> bytes:
    """``send()``'s answer; a 503 (and, with ``unreachable_too``, no connection or no answer in time) is logged and
    asked again after ``pause(attempt)`` s, at most ``attempts`` times in all: the last failure is raised."""
    for attempt in range(attempts):
        try:
            return send()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == attempts - 1:
                raise
            log(f"{what}: 503 {exc.read()[:200]!r}; again")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:   # not accepted / no answer
            if not unreachable_too or attempt == attempts - 1:
                raise
            log(f"{what}: {exc}; again")
        time.sleep(pause(attempt))
    raise AssertionError("unreachable")


class Bed:
    """A LocalCluster plus agent processes; every helper reads through urllib with the admin token."""

    def __init__(self, directory: str, compact_entries: int, ttl: str = "3s", log_level: str = "warning",
                 max_heartbeats: int | None = None, fleet_loop: str | None = None) -> None:
        self.cluster = LocalCluster(directory, replicas=3, log_level=log_level)
        # the fleet processes' RAFTCTL_EVENT_LOOP (None: this process's, uvloop when unset); the replicas take this
        # process's
        self.fleet_env = {"RAFTCTL_EVENT_LOOP": fleet_loop} if fleet_loop else {}
        budget = [] if max_heartbeats is None else ["--max-heartbeats-per-second", str(max_heartbeats)]
        for p in self.cluster.servers:
            p.extra_args = ["--compact-entries", str(compact_entries), "--heartbeat-ttl", ttl, *budget]
        self.agents: list[tuple[str, int, subprocess.Popen]] = []   # (id, count, process)
        self.tokens: dict[str, str] = {}                               # agent process id -> its agent token
        self.dir = directory
        self._api_leader: str | None = None   # where call() sends (api_leader)

    def get(self, url: str, path: str, timeout: float = 30.0) -> Any:
        """One GET; a 503 (a replica catching up, or at its connection limit: overloaded) is asked again."""
        def send() -> bytes:
            req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {self.cluster.token()}"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        return again(f"GET {path}", send, attempts=6, pause=lambda i: 0.5 * (i + 1), unreachable_too=False)

    def send(self, method: str, path: str, body: Any, url: str, timeout: float) -> bytes:
        """One API request to ``url`` with the admin token, not tried again; the answer's body."""
        req = urllib.request.Request(url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.cluster.token()}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def call(self, method: str, path: str, body: Any = None, url: str | None = None) -> Any:
        """One API call; a 503 (outcome unknown, or no leader for a moment) or no answer in 30 s is tried again:
        the bench's writes are idempotent (PUT a job, scale to 0, create a token under a fixed name... once).
        Without ``url`` it goes to the leader found by an earlier call, found again (every replica's status) only
        after a call to it failed: until session 36 every call asked all three replicas' `GET /v1/status` first,
        which on a loaded 10,000-machine leader cost more than the call (the 200 job PUTs of the placing phase)."""
        def send() -> bytes:
            target = url or self.api_leader()
            try:
                return self.send(method, path, body, target, 30)
            except Exception:
                if url is None:
                    self._api_leader = None
                raise
        return json.loads(again(f"{method} {path}", send, attempts=6, pause=lambda i: 0.5 * (i + 1)))

    def api_leader(self) -> str:
        """The URL calls without one go to: the leader when it was last found (a write through a replica that has
        since lost leadership still works: it is proposed there or forwarded)."""
        if self._api_leader is None:
            self._api_leader = self.leader.url
        return self._api_leader

    def metrics(self, url: str) -> dict[tuple[str, str], float]:
        text = self.get(url, "/metrics").decode()
        return {(m.group(1), m.group(2) or ""): float(m.group(3)) for m in METRIC_RE.finditer(text)}

    @property
    def leader(self) -> Proc:
        """The leader; a loaded machine may leave status answers late for a while, so ask for up to 60 s."""
        deadline = time.monotonic() + 60
        while True:
            p = self.cluster.leader()
            if p is not None:
                return p
            if time.monotonic() > deadline:
                raise RuntimeError("no leader for 60 s")
            time.sleep(0.5)

    def followers(self) -> list[Proc]:
        lead = self.leader
        return [p for p in self.cluster.servers if p is not lead]

    def start_agents(self, ident: str, count: int, zone: str, nice: int = 0, spread_s: float | None = None) -> None:
        tok = self.call("POST", "/v1/tokens", {"role": "agent", "name": f"agent-{ident}", "machine": f"{ident}-*"})
        self.tokens[ident] = tok["token"]
        data = os.path.join(self.dir, ident)
        os.makedirs(data, exist_ok=True)
        # each agent process its own loopback address, for its machines' endpoints and its connections to the
        # replicas: one address's ephemeral ports (28,232) ran out at 10,000 machines (fleet.LeanHTTP)
        addr = f"127.0.{len(self.agents) + 1}.1"
        argv = (["nice", "-n", str(nice)] if nice else []) + [
                sys.executable, "-m", "raftctl.cli.main", "agent", "--id", ident, "--data-dir", data,
                "--runtime", "sim", "--count", str(count), "--cpu", "1100m", "--memory", "11Gi",
                "--ports", "20000-20099", "--advertise", addr, "--source-address", addr,
                "--fault-domain", f"zone={zone}",
                "--log-level", "warning"] + (["--start-spread", f"{spread_s:g}s"] if spread_s else [])
        for url in self.cluster.urls:
            argv += ["--server", url]
        out = open(os.path.join(data, "agent.log"), "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **self.fleet_env, "RAFTCTL_AGENT_TOKEN": tok["token"]},
                                start_new_session=True)
        out.close()
        if nice:
            lower_autogroup(proc.pid, nice)
        self.agents.append((ident, count, proc))

    def told(self, ident: str) -> dict[str, Any]:
        """What the leader tells agents now (interval_s, ttl_s: its heartbeat budget), from one heartbeat of
        machine ``ident``-0000 (already up: the beat only renews it)."""
        def send() -> bytes:   # the leader asked anew each time: a 503 can be a leader change (not_leader)
            req = urllib.request.Request(self.leader.url + "/v1/agent/heartbeat", method="POST",
                                         data=json.dumps({"machine": f"{ident}-0000"}).encode(),
                                         headers={"Authorization": f"Bearer {self.tokens[ident]}",
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()
        ans = json.loads(again("told", send, attempts=10, pause=lambda i: 2.0))
        return {"interval_s": ans.get("interval_s"), "ttl_s": ans.get("ttl_s")}

    def stop(self) -> None:
        for _, _, p in self.agents:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for _, _, p in self.agents:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.cluster.stop()


def counts(m: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, lab), v in m.items() if n == name and all(w in lab for w in want))


def gc_share(bed: "Bed", res: dict[str, Any]) -> None:
    """Each replica's cyclic-GC time so far (raftctl_gc_seconds_total) against its process CPU time: the collector's
    share of what the replica spent (raftctl/gcstats.py)."""
    lead = bed.leader
    out = {}
    for p in bed.cluster.servers:
        m = bed.metrics(p.url)
        gc_s = counts(m, "raftctl_gc_seconds_total")
        cpu = cpu_s(psutil.Process(p.pid)) if p.pid else 0.0
        out["leader" if p is lead else p.id] = {
            "gc_s": round(gc_s, 2), "cpu_s": round(cpu, 1), "gc_share": round(gc_s / cpu, 3) if cpu else None,
            "gc_cpu_share": round(counts(m, "raftctl_gc_cpu_seconds_total") / cpu, 3) if cpu else None,
            "collections": [int(counts(m, "raftctl_gc_collections_total", generation=str(g))) for g in range(3)],
            "seconds": [round(counts(m, "raftctl_gc_seconds_total", generation=str(g)), 2) for g in range(3)],
            "cpu_seconds": [round(counts(m, "raftctl_gc_cpu_seconds_total", generation=str(g)), 2) for g in range(3)],
            "longest_s": [round(counts(m, "raftctl_gc_longest_seconds", generation=str(g)), 3) for g in range(3)]}
    res["gc"] = {"thresholds": os.environ.get("RAFTCTL_GC_THRESHOLDS") or "raftctl 50000,20,20", **out}
    log(f"gc: {res['gc']}")


LAG_BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")


def loop_lag(m0: dict[tuple[str, str], float], m1: dict[tuple[str, str], float]) -> dict[str, Any]:
    """The replica's event-loop lag between two scrapes (raftctl_event_loop_lag_seconds, a wake-up asked every
    0.1 s): how many wake-ups, the bucket bound 99 % of them stayed within, how many were a second or more late,
    and the longest lag since the replica started."""
    def cum(m: dict[tuple[str, str], float], le: str) -> float:
        return counts(m, "raftctl_event_loop_lag_seconds_bucket", le=le)
    wakes = cum(m1, "+Inf") - cum(m0, "+Inf")
    p99 = next((le for le in LAG_BOUNDS if cum(m1, le) - cum(m0, le) >= 0.99 * wakes), "+Inf") if wakes else None
    return {"wakes": int(wakes), "p99_within_s": p99, "over_1s": int(wakes - (cum(m1, "1.0") - cum(m0, "1.0"))),
            "max_since_start_s": round(counts(m1, "raftctl_event_loop_lag_max_seconds"), 2)}


def lower_autogroup(pid: int, nice: int) -> bool:
    """Give the scheduling autogroup of ``pid`` (a session leader: its own group) the nice value ``nice``; whether
    it was set. With autogroups (``kernel.sched_autogroup_enabled``, on by default on desktop and many server
    kernels) a process in a session of its own is a group of its own, CPU is shared between groups first, and a
    process's own nice only weighs inside its group: ``nice -n 19`` alone gave each agent process the share of a
    replica (measured on this machine, session 23: two CPU hogs on one core, each in its own session, one under
    nice 19, got 24 and 24 ticks; with its group at nice 19, 166 and 2). Every --agent-nice run before session 23
    ran its agents at the replicas' priority."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
        return True
    except OSError:   # no autogroups (the file is absent or the kernel has them off): nice -n is enough
        return False


def roles(bed: "Bed") -> tuple[Proc, psutil.Process, Proc]:
    """The leader now, its process, and a follower: asked again before each measured window, as a leader change
    (elections while 10,000 machines register) leaves the first leader a follower."""
    leader = bed.leader
    return leader, psutil.Process(leader.pid), next(p for p in bed.cluster.servers if p is not leader)


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def kill_to_write(bed: "Bed", survivors: list[Proc], t0: float, limit_s: float = 120.0) -> tuple[float | None, float | None]:
    """(seconds from ``t0`` until a survivor's status says it leads, until a write through it is acknowledged);
    None for one not reached within ``limit_s``."""
    elected: float | None = None
    leader: Proc | None = None
    said: set[str] = set()
    while time.monotonic() - t0 < limit_s:
        if leader is None:
            for p in survivors:
                try:
                    if bed.cluster.get(p, "/v1/status", timeout=5.0).get("leader") == p.raft:
                        leader, elected = p, time.monotonic() - t0
                        break
                except Exception as exc:   # each survivor's kind of failure once (session 28: 26 s unexplained)
                    why = f"{p.id}: {exc.__class__.__name__}: {str(exc)[:120]}"
                    if why not in said:
                        said.add(why)
                        log(f"leader kill: status of {why} ({time.monotonic() - t0:.1f} s after the kill)")
        if leader is not None:
            try:
                bed.send("PUT", "/v1/jobs/w0", {"name": "w0", "image": "scale:1", "command": ["w"], "replicas": 0},
                         leader.url, 10)
                return elected, time.monotonic() - t0
            except Exception:
                leader = None       # not taken (no longer the leader, or too slow): ask who leads again
        time.sleep(0.2)
    return elected, None


def wait_for(what: str, pred: Callable[[], Any], timeout: float, every: float = 0.5) -> float | None:
    """Seconds until pred() is truthy, or None at the timeout."""
    t0 = time.monotonic()
    said: set[str] = set()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except Stalled:
            raise
        except Exception as exc:   # a replica busy past the read timeout, or still starting: poll again
            if str(exc) not in said:
                said.add(str(exc))
                log(f"{what}: poll failed ({exc.__class__.__name__}: {exc})")
        time.sleep(every)
    log(f"{what}: not reached after {timeout:.0f} s")
    return None


async def read_load(urls: list[str], token: str, path: str, seconds: float, clients: int) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        stop_at = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                async with s.get(urls[i % len(urls)] + path) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                lat.append(time.monotonic() - t0)
        await asyncio.gather(*(worker(i) for i in range(clients)))
    lat.sort()
    return {"per_s": len(lat) / seconds, "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None, "errors": errors}


async def api_under_load(bed: Bed, seconds: float, clients: int) -> tuple[dict, dict]:
    urls = [bed.leader.url] + [p.url for p in bed.followers()]
    token = bed.cluster.token() or ""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    writes, reads = await asyncio.gather(
        http_load(urls, headers, lambda i, n: (f"/v1/jobs/w{i}/scale", {"replicas": 0}), seconds, clients),
        read_load(urls, token, "/v1/jobs/s0", seconds, clients))
    return writes, reads


def dir_bytes(path: str, pattern: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if re.search(pattern, f))
    return total


def register_machines(bed: Bed, n: int, zone: Callable[[int], str]) -> str:
    """Register machines h-00000.. h-<n-1> (1,100m, 11 GiB each; machine i in ``zone(i)``) through the leader's
    API with one agent token for them all, 32 at a time, as agents that never heartbeat (give the bed a long TTL);
    the token."""
    leader = bed.leader
    tok = bed.call("POST", "/v1/tokens", {"role": "agent", "name": "agent-h", "machine": "h-*"})["token"]

    async def register() -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tok}"}) as s:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                body = {"machine": f"h-{i:05d}", "address": "127.0.0.1", "fault_domain": {"zone": zone(i)},
                        "labels": {}, "resources": {"cpu": 1100, "memory": 11 << 30, "pids": 4096},
                        "ports": [20000, 20099], "runtime": "sim"}
                for attempt in range(6):   # registering is idempotent: an unknown outcome is tried again
                    async with sem, s.post(leader.url + "/v1/agent/register", json=body) as r:
                        if r.status == 200:
                            return
                        text = await r.text()
                        if r.status != 503 or attempt == 5:
                            raise RuntimeError(f"register h-{i:05d}: {r.status} {text[:200]}")
                    await asyncio.sleep(0.5 * (attempt + 1))
            await asyncio.gather(*(one(i) for i in range(n)))
    asyncio.run(register())
    return tok


def heartbeat_ceiling(n: int, seconds: int) -> dict[str, Any] | None:
    """The leader's heartbeat handling alone, without the simulated agents' own cost: a fresh 3-replica cluster,
    N machines registered through the API (one agent token 'h-*'), then wrk (32 connections, C) posting
    heartbeats round-robin over them to the leader. Heartbeats/s at the ceiling is the number of machines a
    leader could hold at a 1 s interval if it did nothing else; leader CPU / heartbeats is the cost of one."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-hb-") as d:
        bed = Bed(d, 20000, ttl="1h")   # registering N takes longer than a 3 s TTL: nobody may go down meanwhile
        try:
            bed.cluster.start(timeout=60)
            tok = register_machines(bed, n, lambda i: "z")
            headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
            leader = bed.leader   # registering 10,000 machines on a loaded machine may outlast a leadership

            async def probe() -> list[str]:   # what one heartbeat answers before wrk sends thousands
                async with aiohttp.ClientSession(headers=headers) as s:
                    out = []
                    for i in (0, n - 1):
                        async with s.post(leader.url + "/v1/agent/heartbeat", json={"machine": f"h-{i:05d}"}) as r:
                            out.append(f"h-{i:05d}: {r.status} {(await r.text())[:160]}")
                    return out
            probes = asyncio.run(probe())
            log(f"heartbeat probes: {probes}")
            lp = psutil.Process(leader.pid)
            c0, t0 = cpu_s(lp), time.monotonic()
            out = wrk_load([leader.url], headers, lambda i, k: ("/v1/agent/heartbeat", {"machine": f"h-{i:05d}"}),
                           seconds, 32, n)
            cores = (cpu_s(lp) - c0) / (time.monotonic() - t0)
        finally:
            bed.stop()
    if not out:
        return None
    return {"heartbeats_per_s": round(out["writes_per_s"], 1), "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
            "non_2xx": out["non_2xx"], "probes": probes, "leader_cores": round(cores, 3),
            "leader_cpu_us_per_heartbeat": round(cores / out["writes_per_s"] * 1e6, 1) if out["writes_per_s"] else None,
            "load1": round(os.getloadavg()[0], 2)}


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"bench": "scale", "machines": n, "replicas_per_machine": args.per_machine,
                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                           "raft_timing": os.environ.get("RAFTCTL_RAFT_TIMING") or "default",
                           "replica_loop": event_loop_from_env(),
                           "fleet_loop": args.fleet_loop or event_loop_from_env(),
                           "per_process": args.per_process, "agent_nice": args.agent_nice}
    loads: dict[str, float] = {"start": round(os.getloadavg()[0], 2)}
    terms: dict[str, Any] = res.setdefault("raft_term", {})   # elections during the run: the term's growth

    def phase(name: str, fn: Callable[[], None]) -> None:
        """One phase; a failure (a loaded machine can starve the replicas past any timeout) is recorded in the
        row and the next phase still runs."""
        try:
            fn()
        except Exception as exc:
            log(f"phase {name} failed: {exc.__class__.__name__}: {exc}")
            res.setdefault("failed", {})[name] = f"{exc.__class__.__name__}: {exc}"[:300]
    total = n * args.per_machine
    victims = max(1, n // 100)
    if not args.skip_ceiling:
        res["heartbeat_ceiling"] = heartbeat_ceiling(n, args.wrk_seconds)
        log(f"heartbeat ceiling (wrk, {n} machines registered, no agents): {res['heartbeat_ceiling']}")
    if args.ceiling_only:
        return res
    try:   # a size whose control plane stops answering (no leader for 60 s) still leaves its row
        with contextlib.ExitStack() as stack:
            if args.keep_dir:   # kept for its logs (agents' and replicas'), one sub-directory per size
                d = os.path.join(args.keep_dir, f"n{n}-{time.strftime('%H%M%S')}")
                os.makedirs(d)
            else:
                d = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-"))
            bed = Bed(d, args.compact_entries, log_level=args.replica_log_level, max_heartbeats=args.max_heartbeats,
                      fleet_loop=args.fleet_loop)
            try:
                bed.cluster.start(timeout=60)
                leader = bed.leader
                lp = psutil.Process(leader.pid)
                follower = bed.followers()[0]
                c0, t0 = cpu_s(lp), time.monotonic()
                time.sleep(3.0)
                idle_cores = (cpu_s(lp) - c0) / (time.monotonic() - t0)
                rss0 = lp.memory_info().rss

                # 1. register N machines and measure the steady heartbeat cost
                rest = n - victims
                procs = math.ceil(rest / args.per_process)
                spread = n / args.start_rate if args.start_rate > 0 else None   # the whole fleet over this long
                res["start_spread_s"] = spread
                for i in range(procs):
                    k = rest // procs + (i < rest % procs)
                    bed.start_agents(f"g{i}", k, f"z{i % 3}", nice=args.agent_nice, spread_s=spread)
                bed.start_agents("v", victims, "zv", nice=args.agent_nice, spread_s=spread)
                log(f"{n} machines: {procs} agent processes + 1 of {victims} (the 1 %)")

                def up() -> bool:
                    return counts(bed.metrics(follower.url), "raftctl_machines_by_state", state="active") >= n
                res["register_s"] = wait_for("all machines up", up, args.up_timeout or 60 + n / 20)
                loads["registered"] = round(os.getloadavg()[0], 2)
                time.sleep(3.0)
                told = bed.told("g0")
                res["told"] = told
                terms["registered"] = bed.call("GET", "/v1/status").get("term")
                interval = float(told["interval_s"] or 1.0)
                for attempt in range(2):
                    # the leader now (an election while registering left the first one a follower: its window
                    # measured 0 heartbeats/s at 10,000 machines); a leader change during the window: once more
                    leader, lp, follower = roles(bed)
                    m0, c0, t0 = bed.metrics(leader.url), cpu_s(lp), time.monotonic()
                    a0 = sum(cpu_s(psutil.Process(p.pid)) for _, _, p in bed.agents)
                    time.sleep(args.window)
                    m1, c1, t1 = bed.metrics(leader.url), cpu_s(lp), time.monotonic()
                    a1 = sum(cpu_s(psutil.Process(p.pid)) for _, _, p in bed.agents)
                    if bed.leader is leader:
                        break
                    log(f"steady window: the leader changed from {leader.id} during it (attempt {attempt + 1})")
                    res["steady_leader_changed"] = attempt + 1
                dt = t1 - t0
                hb = (counts(m1, "raftctl_api_requests_total", route="POST /v1/agent/heartbeat")
                      - counts(m0, "raftctl_api_requests_total", route="POST /v1/agent/heartbeat")) / dt
                allreq = (counts(m1, "raftctl_api_requests_total") - counts(m0, "raftctl_api_requests_total")) / dt
                steady = (c1 - c0) / dt
                fm = bed.metrics(follower.url)
                res["steady"] = {"leader": leader.id,
                                 "heartbeats_per_s": round(hb, 1), "heartbeats_wanted_per_s": round(n / interval, 1),
                                 "machines_down_unfaulted": int(counts(fm, "raftctl_machines_by_state", state="down")),
                                 "leader_requests_per_s": round(allreq, 1),
                                 "leader_cores": round(steady, 3), "leader_idle_cores": round(idle_cores, 3),
                                 "leader_cpu_us_per_request": round((steady - idle_cores) / allreq * 1e6, 1) if allreq else None,
                                 "leader_cpu_us_per_heartbeat_if_all": round((steady - idle_cores) / hb * 1e6, 1) if hb else None,
                                 "agents_cores": round((a1 - a0) / dt, 3), "agent_processes": len(bed.agents),
                                 "agents_rss_mib": round(sum(psutil.Process(p.pid).memory_info().rss
                                                             for _, _, p in bed.agents) / 2**20),
                                 "leader_loop_lag": loop_lag(m0, m1), "load1": round(os.getloadavg()[0], 2)}
                log(f"steady: {res['steady']}")

                # 2. place 10 x N replicas
                bed.call("PUT", "/v1/jobs/w0", {"name": "w0", "image": "scale:1", "command": ["w"], "replicas": 0})
                jobs = math.ceil(total / JOB_REPLICAS)
                first = leader
                leader, lp, follower = roles(bed)
                if leader is not first:   # the idle RSS was another replica's: count from this one's before placing
                    rss0 = lp.memory_info().rss
                    res["rss_from"] = "placing (leader changed since idle)"
                c0, tp, mp0 = cpu_s(lp), time.monotonic(), bed.metrics(leader.url)
                for j in range(jobs):
                    reps = min(JOB_REPLICAS, total - j * JOB_REPLICAS)
                    bed.call("PUT", f"/v1/jobs/s{j}", {"name": f"s{j}", "image": "scale:1", "command": ["serve"],
                                                       "replicas": reps,
                                                       "resources": {"cpu": "100m", "memory": "64Mi", "pids": 16}})
                res["submit_s"] = round(time.monotonic() - tp, 2)
                seen: dict[str, float] = {"best": -1.0, "best_at": time.monotonic()}

                def placed() -> bool:
                    m = bed.metrics(follower.url)
                    have = counts(m, "raftctl_placements_by_state")
                    healthy = counts(m, "raftctl_placements_by_state", health="healthy")
                    seen.update(have=have, healthy=healthy,
                                down=counts(m, "raftctl_machines_by_state", state="down"))
                    if have >= total and "placed_s" not in res:
                        res["placed_s"] = round(time.monotonic() - tp, 2)
                    if have + healthy > seen["best"]:   # progress: placements committed, then healthy
                        seen.update(best=have + healthy, best_at=time.monotonic())
                    elif time.monotonic() - seen["best_at"] > args.stall:
                        raise Stalled(f"placements stuck at {have:.0f} placed, {healthy:.0f} healthy of {total} for "
                                      f"{args.stall:.0f} s "
                                      f"({seen['down']:.0f} machines down)")
                    return healthy >= total
                try:
                    took = wait_for("all placements healthy", placed, args.place_timeout, every=1.0)
                except Stalled as exc:
                    log(str(exc))
                    took = None
                    try:   # why the scheduler holds them, in its own words
                        job = bed.call("GET", "/v1/jobs/s0")
                        res["pending_reason"] = str(job.get("pending_reason") or job.get("status", {}).get("pending_reason"))[:300]
                        log(f"job s0: pending_reason {res['pending_reason']}")
                    except Exception as exc2:
                        log(f"job s0: {exc2}")
                cpu_place = cpu_s(lp) - c0
                # from the first job PUT (the wait above starts once all are submitted, submit_s later)
                el = time.monotonic() - tp
                took = el if took is not None else None
                res["place"] = {"healthy_s": round(took, 2) if took is not None else None,
                                "submit_s": res.pop("submit_s", None),
                                "healthy_reached": int(seen.get("healthy", 0)), "total": total,
                                "placed_s": res.pop("placed_s", None), "machines_down": int(seen.get("down", 0)),
                                "placements_per_s": round(seen.get("healthy", 0) / el, 1),
                                "leader_cores": round(cpu_place / el, 3), "load1": round(os.getloadavg()[0], 2)}
                with contextlib.suppress(Exception):   # the leader's loop while placing (it may have changed since)
                    res["place"]["leader_loop_lag"] = loop_lag(mp0, bed.metrics(leader.url))
                rss1 = lp.memory_info().rss
                res["rss"] = {"leader_mib_before": round(rss0 / 2**20, 1), "leader_mib_after": round(rss1 / 2**20, 1),
                              "leader_kib_per_placement": round((rss1 - rss0) / max(1, seen.get("have", 0)) / 1024, 2),
                              "follower_mib": round(psutil.Process(follower.pid).memory_info().rss / 2**20, 1)}
                log(f"place: {res['place']} rss {res['rss']}")
                with contextlib.suppress(Exception):
                    terms["placed"] = bed.call("GET", "/v1/status").get("term")
                if args.hold:
                    log(f"holding {args.hold:g} s for probes: leader {bed.leader.url} pid {bed.leader.pid}, "
                        f"token in {bed.dir}")
                    time.sleep(args.hold)

                def api() -> None:
                    # 3. API p99 under the heartbeat + stats load
                    for i in range(args.api_clients):
                        bed.call("PUT", f"/v1/jobs/w{i}", {"name": f"w{i}", "image": "scale:1", "command": ["w"],
                                                           "replicas": 0})
                    writes, reads = asyncio.run(api_under_load(bed, args.api_seconds, args.api_clients))
                    res["api"] = {"write_per_s": round(writes["writes_per_s"], 1), "write_p50_ms": writes["p50_ms"],
                                  "write_p99_ms": writes["p99_ms"], "write_errors": writes["errors"],
                                  "read_per_s": round(reads["per_s"], 1), "read_p50_ms": reads["p50_ms"],
                                  "read_p99_ms": reads["p99_ms"], "read_errors": reads["errors"],
                                  "load1": round(os.getloadavg()[0], 2)}
                    log(f"api: {res['api']}")


                def snapshot() -> None:
                    # 4. snapshot: take (backup through the API) and the Raft snapshot file
                    ts = time.monotonic()
                    snap = bed.get(leader.url, "/v1/snapshot", timeout=120)
                    res["snapshot"] = {"take_s": round(time.monotonic() - ts, 3), "bytes": len(snap),
                                       "raft_dump_bytes_leader": dir_bytes(leader.data_dir, r"dump|snap")}


                def failover() -> None:
                    # 5. failover: freeze the 1 % process
                    victim = next(p for ident, _, p in bed.agents if ident == "v")
                    m = bed.metrics(follower.url)
                    want = counts(m, "raftctl_placements_by_state", health="healthy")   # what was healthy before the fault
                    ms0 = bed.call("GET", "/v1/machines", url=follower.url)["machines"]
                    before_down = {mm["id"] for mm in ms0 if mm.get("status") == "down"}
                    frozen = {mm["id"] for mm in ms0 if mm["id"].startswith("v-")} - before_down
                    down_at: dict[str, float] = {}
                    healthy_again: dict[str, float] = {}
                    ttl = float(bed.told("g0")["ttl_s"] or 3.0)   # the TTL in force at this size (heartbeat budget)
                    lead_f = bed.leader
                    mf0 = bed.metrics(lead_f.url)
                    victim.send_signal(signal.SIGSTOP)
                    tf = time.monotonic()
                    tf_ms = time.time() * 1000   # the leader stamps MachineDown's time (last_transition) in wall ms
                    declared_at: dict[str, float] = {}

                    # the poll asks for the down machines only, and for the healthy count (a /metrics scrape) once
                    # every frozen one is down, at most once a second: polling the whole list (4.6 MB of JSON at
                    # 10,000 machines) and /metrics every 0.25 s took 0.3-0.8 core of the polled follower and
                    # 0.1-0.2 of the bench (session 23, /proc sampled each second) on the two cores the leader shares
                    fp = psutil.Process(follower.pid)
                    fc0, polls = cpu_s(fp), {"n": 0, "scraped": 0.0}

                    def failed_over() -> bool:
                        ms = bed.call("GET", "/v1/machines?state=down", url=follower.url)["machines"]
                        polls["n"] += 1
                        now = time.monotonic() - tf
                        for mm in ms:
                            if mm["id"] in frozen and mm.get("status") == "down":
                                down_at.setdefault(mm["id"], now)
                                if isinstance(mm.get("last_transition"), int):
                                    declared_at.setdefault(mm["id"], (mm["last_transition"] - tf_ms) / 1000)
                        if len(down_at) < len(frozen) or time.monotonic() - polls["scraped"] < 1.0:
                            return False
                        polls["scraped"] = time.monotonic()
                        m = bed.metrics(follower.url)
                        if counts(m, "raftctl_placements_by_state", health="healthy") >= want:
                            healthy_again["t"] = now
                        return "t" in healthy_again
                    wait_for("failover", failed_over, ttl + 90, every=0.25)
                    poll_s = time.monotonic() - tf
                    down_all = bed.call("GET", "/v1/machines", url=follower.url)["machines"]
                    wrongly = [mm["id"] for mm in down_all if mm.get("status") != "up" and not mm["id"].startswith("v-")
                               and mm["id"] not in before_down]
                    times = sorted(down_at.values())
                    # the figure the product owns: when the leader proposed each MachineDown (its record's
                    # last_transition), from the freeze; "seen" adds the bench's poll of a follower (0.25 s apart,
                    # each a GET of every machine from a loaded replica: 1.6 s later than declared at 3,000 machines)
                    decl = sorted(declared_at.values())
                    p99 = (decl[min(len(decl) - 1, int(len(decl) * 0.99))] if decl and len(decl) == len(frozen)
                           else None)
                    res["failover"] = {"victims": victims, "frozen_while_up": len(frozen), "ttl_s": ttl,
                                       "p99_within_ttl_plus_2s": p99 is not None and p99 <= ttl + 2.0,
                                       "declared_down": len(times),
                                       "down_p50_s": round(decl[len(decl) // 2], 2) if decl else None,
                                       "down_p99_s": round(p99, 2) if p99 is not None else None,
                                       "seen_down_p50_s": round(times[len(times) // 2], 2) if times else None,
                                       "seen_down_p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2)
                                       if times and len(times) == len(frozen) else None,
                                       "replaced_healthy_s": round(healthy_again["t"], 2) if "t" in healthy_again else None,
                                       "never_frozen_but_down": len(wrongly), "down_before": len(before_down),
                                       "polled_follower_cores": round((cpu_s(fp) - fc0) / poll_s, 3),
                                       "polls": polls["n"], "load1": round(os.getloadavg()[0], 2)}
                    with contextlib.suppress(Exception):   # the leader's loop from the freeze to replaced
                        res["failover"]["leader_loop_lag"] = loop_lag(mf0, bed.metrics(lead_f.url))
                    with contextlib.suppress(Exception):   # heartbeats counted from their send (session 16)
                        st = bed.call("GET", "/v1/status", url=lead_f.url)
                        fo_st = (st.get("leadership") or {}).get("failover") or {}
                        credit = fo_st.get("heartbeat_credit")
                        if credit is not None:
                            res["failover"]["heartbeat_credit"] = credit
                        # the monitor's own pace since elected (session 20): ticks, the longest gap between two,
                        # and the most a machine was silent past its TTL when proposed down (observed time)
                        res["failover"]["monitor"] = {k: fo_st[k] for k in (
                            "ticks", "tick_gap_max_s", "declared_late_max_s") if k in fo_st}
                        sched = (st.get("leadership") or {}).get("SchedulerLoop") or {}
                        res["failover"]["scheduler_since_elected"] = {k: sched[k] for k in (
                            "passes", "pass_ms", "commit_ms", "views_built", "views_reused") if k in sched}
                    victim.send_signal(signal.SIGCONT)
                    log(f"failover: {res['failover']}")


                def restart() -> None:
                    # 6. a follower restarted after the leader compacted past it: catch up (install), then replay
                    fol = follower
                    stopped_at = bed.call("GET", "/v1/status", url=fol.url)["applied_index"]
                    bed.cluster.kill(fol, signal.SIGTERM)
                    fol_index = None
                    urls = [leader.url]
                    headers = {"Authorization": f"Bearer {bed.cluster.token()}", "Content-Type": "application/json"}
                    pushed, tw = 0, time.monotonic()
                    # writes until the leader's log no longer reaches back to the stopped follower's index (compacted):
                    # the commands are batched into entries, so count entries, not writes
                    while time.monotonic() - tw < 120:
                        st = bed.call("GET", "/v1/status")
                        if st["commit_index"] - st["log_len"] > stopped_at + 1:
                            break
                        r = asyncio.run(http_load(urls, headers, lambda i, k: (f"/v1/jobs/w{i % args.api_clients}/scale",
                                                                                {"replicas": 0}), 3.0, 4))
                        pushed += r["samples"]
                    st = bed.call("GET", "/v1/status")
                    target = st["commit_index"]
                    res["restart"] = {"writes_while_down": pushed, "leader_log_len": st["log_len"], "commit_index": target,
                                      "follower_stopped_at": stopped_at,
                                      "compacted_past_it": st["commit_index"] - st["log_len"] > stopped_at + 1}
                    tc = time.monotonic()
                    bed.cluster.start_proc(fol)

                    def caught_up() -> bool:
                        s = bed.call("GET", "/v1/status", url=fol.url)
                        nonlocal fol_index
                        fol_index = s.get("applied_index")
                        return bool(s.get("ready")) and (s.get("applied_index") or 0) >= target
                    took = wait_for("restarted follower caught up", caught_up, 180, every=0.2)
                    res["restart"]["catch_up_s"] = round(took, 2) if took is not None else None
                    res["restart"]["raft_dump_bytes_follower"] = dir_bytes(fol.data_dir, r"dump|snap")
                    bed.cluster.kill(fol, signal.SIGTERM)
                    tc = time.monotonic()
                    bed.cluster.start_proc(fol)
                    took = wait_for("restarted follower ready (replay)", caught_up, 180, every=0.2)
                    res["restart"]["replay_ready_s"] = round(took, 2) if took is not None else None
                    res["restart"]["load1"] = round(os.getloadavg()[0], 2)
                    del tc
                    log(f"restart: {res['restart']}")
                def leader_kill() -> None:
                    # 7. the leader killed (-9): how soon a new one commits a write, and whether every agent finds it
                    #    within the TTL it re-arms (told TTL + leader grace): machines declared down meanwhile were up
                    def down(url: str) -> set[str]:
                        return {mm["id"] for mm in bed.call("GET", "/v1/machines", url=url)["machines"]
                                if mm.get("status") == "down"}
                    old = bed.leader
                    before = down(follower.url)
                    survivors = [p for p in bed.cluster.servers if p is not old]
                    tk = time.monotonic()
                    bed.cluster.kill(old, signal.SIGKILL)
                    # a survivor's own status says it leads (asked with a 5 s bound: the new leader takes every
                    # agent's heartbeat at once, and a 1 s bound measured that flood, not the election), then one
                    # write through it; the majority check (bed.leader) comes after, for the next phases
                    new, wrote = kill_to_write(bed, survivors, tk)
                    wrote = wrote if wrote is not None else time.monotonic() - tk
                    ttl = float(bed.told("g0")["ttl_s"] or 3.0)
                    watch_s = ttl + 30.0       # past the re-armed TTL (ttl + the 5 s leader grace), with a margin
                    time.sleep(max(0.0, watch_s - (time.monotonic() - tk)))
                    after = down(next(p for p in bed.cluster.servers if p is not old).url)
                    res["leader_kill"] = {"new_leader_s": round(new, 2) if new is not None else None,
                                          "first_write_s": round(wrote, 2), "watched_s": round(watch_s, 1),
                                          "machines_declared_down": len(after - before),
                                          "load1": round(os.getloadavg()[0], 2)}
                    bed.cluster.start_proc(old)
                    log(f"leader kill: {res['leader_kill']}")
                # the failover trial before the API load: 16 clients writing and reading as fast as they can are the
                # most disruptive phase (at 1,000 machines their writes took 5 s each and heartbeats answered late
                # enough for hundreds of machines to be declared down), and failover is judged on a settled cluster
                phase('snapshot', snapshot)
                time.sleep(args.settle)
                phase('failover', failover)
                phase('api', api)
                phase('gc', lambda: gc_share(bed, res))
                phase('restart', restart)
                phase('leader_kill', leader_kill)
                with contextlib.suppress(Exception):
                    terms["end"] = bed.call("GET", "/v1/status").get("term")

            finally:
                bed.stop()
    except Exception as exc:
        log(f"run of {n} machines ended: {exc.__class__.__name__}: {exc}")
        res.setdefault("failed", {})["run"] = f"{exc.__class__.__name__}: {exc}"[:300]
    res["load1"] = loads
    return res


# -- the picture -----------------------------------------------------------------------------------------------
def svg(rows: list[dict[str, Any]], path: str) -> None:
    """The cost curve, drawn by hand: per size, leader cores in the steady state (heartbeats + stats), leader cores
    while placing, and placements/s; x is machines (log scale)."""
    rows = sorted(rows, key=lambda r: r["machines"])
    W, H, L, B = 720, 420, 70, 60
    xs = [r["machines"] for r in rows]
    lo, hi = math.log10(min(xs) / 1.5), math.log10(max(xs) * 1.5)

    def X(v: float) -> float:
        return L + (math.log10(v) - lo) / (hi - lo) * (W - L - 70)
    def get(r: dict[str, Any], phase: str, key: str, scale: float = 1.0) -> float | None:
        v = (r.get(phase) or {}).get(key)
        return v / scale if isinstance(v, (int, float)) else None
    series: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
        ("leader cores, steady (simulated agents: heartbeats + stats)", "#c0392b",
         lambda r: get(r, "steady", "leader_cores")),
        ("leader cores while placing", "#e67e22", lambda r: get(r, "place", "leader_cores")),
        ("simulated agents' cores, steady (all agent processes)", "#7f8c8d", lambda r: get(r, "steady", "agents_cores")),
        ("healthy placements/s (thousands)", "#2471a3", lambda r: get(r, "place", "placements_per_s", 1000)),
        ("leader heartbeat ceiling, wrk (thousands/s)", "#117a65",
         lambda r: get(r, "heartbeat_ceiling", "heartbeats_per_s", 1000)),
        ("leader CPU per heartbeat, wrk (ms)", "#7d3c98",
         lambda r: get(r, "heartbeat_ceiling", "leader_cpu_us_per_heartbeat", 1000))]
    ymax = max(2.0, max((f(r) or 0) for r in rows for _, _, f in series) * 1.15)

    def Y(v: float) -> float:
        return H - B - v / ymax * (H - B - 40)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{L}" y="20" font-size="14">raftctl, one Raft group (3 replicas): cost vs simulated machines '
           f'(10 replicas each)</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - 70}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{H - B}" x2="{L}" y2="30" stroke="black"/>',
           f'<line x1="{L}" y1="{Y(os.cpu_count() or 2):.1f}" x2="{W - 70}" y2="{Y(os.cpu_count() or 2):.1f}" '
           f'stroke="#888" stroke-dasharray="4 4"/>',
           f'<text x="{W - 68}" y="{Y(os.cpu_count() or 2) + 4:.1f}" fill="#888">{os.cpu_count()} cores</text>']
    for k in range(0, int(ymax) + 1):
        out.append(f'<text x="{L - 8}" y="{Y(k) + 4:.1f}" text-anchor="end">{k}</text>')
    for v in xs:
        out.append(f'<text x="{X(v):.1f}" y="{H - B + 18}" text-anchor="middle">{v:,}</text>')
    out.append(f'<text x="{(W - 70 + L) / 2}" y="{H - 15}" text-anchor="middle">machines (log scale)</text>')
    for i, (name, color, f) in enumerate(series):
        vals = [(r["machines"], f(r)) for r in rows]
        pts = [(X(m), Y(v)) for m, v in vals if v is not None]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts]
        out.append(f'<text x="{L + 10}" y="{45 + 16 * i}" fill="{color}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


def newest_rows() -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    try:
        with open(os.path.join(OUT, "scale.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                if r.get("steady") or r.get("heartbeat_ceiling"):
                    rows[r["machines"]] = {**rows.get(r["machines"], {}), **r}
    except FileNotFoundError:
        pass
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100", help="comma-separated machine counts, e.g. 1000,3000,10000")
    ap.add_argument("--per-machine", type=int, default=10, help="replicas per machine")
    ap.add_argument("--per-process", type=int, default=500, help="simulated machines per agent process")
    ap.add_argument("--wrk-seconds", type=int, default=5, help="the heartbeat-ceiling run (wrk)")
    ap.add_argument("--raft-timing", default=None,
                    help="RAFTCTL_RAFT_TIMING for the replicas, 'min,max,heartbeat' seconds (default: the product's "
                         "0.3,0.6,0.075); recorded in each row")
    ap.add_argument("--fleet-loop", choices=["uvloop", "asyncio"], default=None,
                    help="the agent processes' event loop (RAFTCTL_EVENT_LOOP for them alone; default: this "
                         "process's environment, uvloop when unset; the replicas always take this process's)")
    ap.add_argument("--agent-nice", type=int, default=0,
                    help="run the agent processes under nice -n N, their scheduling autogroups too (the replicas "
                         "keep their priority: on a small machine the load generator otherwise takes the CPU the "
                         "control plane is measured on)")
    ap.add_argument("--up-timeout", type=float, default=None, help="wait this long for all machines up (default "
                    "60 s + N / 20)")
    ap.add_argument("--keep-dir", default=None, help="run the cluster and agents under this directory and keep it")
    ap.add_argument("--skip-ceiling", action="store_true", help="no heartbeat-ceiling run (wrk) before the agents")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="only the heartbeat ceiling (machines registered through the API, wrk), no agents")
    ap.add_argument("--stall", type=float, default=60.0, help="give up placing when healthy stops growing this long")
    ap.add_argument("--window", type=float, default=10.0, help="steady-state window (s)")
    ap.add_argument("--place-timeout", type=float, default=300.0)
    ap.add_argument("--api-seconds", type=float, default=6.0)
    ap.add_argument("--start-rate", type=float, default=0.0,
                    help="machines started per second across the whole fleet (each agent process spreads its start "
                         "over N / this); 0: each process's default (at most 100 a second each, 5 s for 500)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="after placing, keep the loaded cluster this long (s) for a profiler or probes")
    ap.add_argument("--settle", type=float, default=10.0, help="pause after placing, before the failover trial (s)")
    ap.add_argument("--api-clients", type=int, default=8)
    ap.add_argument("--replica-log-level", default="warning", choices=["debug", "info", "warning", "error"],
                    help="the replicas' --log-level (info: each election and late failover wake-up in server.log)")
    ap.add_argument("--compact-entries", type=int, default=500,
                    help="the replicas' --compact-entries (so the restart phase needs a snapshot)")
    ap.add_argument("--max-heartbeats-per-second", dest="max_heartbeats", type=int, default=None,
                    help="the replicas' heartbeat budget (default: the server's own)")
    args = ap.parse_args()
    if args.raft_timing:   # the replicas inherit it (raftctl/node/raft RAFT_TIMING: a benchmark override)
        os.environ["RAFTCTL_RAFT_TIMING"] = args.raft_timing
    raise_fd_limit()
    os.makedirs(OUT, exist_ok=True)
    for n in (int(s) for s in args.sizes.split(",")):
        res = run_size(n, args)
        with open(os.path.join(OUT, "scale.jsonl"), "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps(res), flush=True)
    rows = newest_rows()
    if rows:
        svg(rows, os.path.join(OUT, "scale.svg"))
        print(f"cost curve: {os.path.join(OUT, 'scale.svg')} ({len(rows)} sizes)")


if __name__ == "__main__":
    main()
