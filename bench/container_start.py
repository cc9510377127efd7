#!/usr/bin/env python3
"""Container start latency: raftctl's runc driver beside bare `runc run -d` of the same bundle, and
end to end through the control plane (job submitted -> replica healthy).

For each of N containers (a busybox httpd on loopback, host network; with ``--network bridge|both`` a
busybox httpd in its own network namespace on the driver's bridge, alternated with host starts in the same run):
  driver: create (overlay root, config.json, shim, runc create) + start -> status running,
          then -> first successful tcp connect and first HTTP 200;
  bare:   `runc run -d` of a bundle holding the same config.json on a root prepared
          beforehand (so only runc's own work is timed) -> first tcp / HTTP success. The CPU quota is in
          bare's config.json, as plain runc applies it; the driver's shim writes it once runc has handed
          over to the command (since session 27: runc's init is not charged to it).
  end to end: a 3-replica cluster on loopback with one runc agent; the busybox image is built and
          pushed with `raftctl image build`; each of N one-replica jobs is timed from its PUT to its
          placement healthy in the API (scheduler, agent watch, pull once per digest, create, start, a
          100 ms tcp health check; seen through blocking queries, or --observe poll), the first (which pulls the
          image) reported apart.
  breakdown: where an end-to-end start's time goes, from the agent's start trace (raftctl/agent/trace.py,
          RAFTCTL_START_TRACE) and the placement's created_at (Plan proposed) and healthy_at (healthy report
          proposed): the median ms from the PUT to each step, and the median of each step's own share.
  bridge (--network bridge|both): the driver's start of a `network: bridge` container (namespace, veth,
          address, nftables table rewritten) -> running, first tcp / HTTP success at the container's address:
          what the namespace costs per start, beside the host starts of the same run. The whole bench then
          runs in a private `unshare --net --mount` (bridges, routes and rules stay there).
Prints human figures and one JSON line. Needs root, runc and busybox-static.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftctl.agent import rootfs  # noqa: E402
from raftctl.aio import event_loop_from_env  # noqa: E402
from raftctl.agent.health import probe_http, probe_tcp  # noqa: E402
from raftctl.agent.images import ImageStore  # noqa: E402
from raftctl.agent.runtime import bundle as oci_bundle  # noqa: E402
from raftctl.agent.runtime.base import ContainerSpec, Resources  # noqa: E402
from raftctl.agent.runtime.runc import RuncDriver, runc_available  # noqa: E402
from raftctl.agent.testimage import busybox_available, make_busybox_dir  # noqa: E402

N = int(os.environ.get("N", "20"))
TRACE_ENV = "RAFTCTL_START_TRACE"   # raftctl/agent/trace.py's (spelled here so the bench runs on older revisions)
DUMP = os.environ.get("DUMP")       # a file for each end-to-end start's steps (JSON), if set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_probe(port: int, http: bool, timeout: float = 10.0, host: str = "127.0.0.1") -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = asyncio.run(probe_http(host, port, "/index.html", 0.5) if http else probe_tcp(host, port, 0.5))
        if ok:
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"port {port} never answered")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


STEPS = [  # (label, the step's key in a start's record): in the order a start passes them
    ("PUT answered", "put"), ("Plan proposed (created_at)", "plan"), ("assignment answer at the agent", "assigned"),
    ("converge pass began", "converge"), ("image root ready", "prepared"), ("driver create done", "created"),
    ("driver start done (runc)", "started"), ("first probe failed", "probe_failed"), ("first probe ok", "probe_ok"),
    ("healthy report sent", "report_sent:running/healthy"), ("healthy report proposed (healthy_at)", "healthy_at"),
    ("healthy report answered", "report_done:running/healthy"), ("API shows healthy", "api")]


def breakdown(starts: list[dict[str, float]]) -> list[tuple[str, float, float, int]]:
    """Per step: (label, median ms from the PUT, median ms since the step before it that the start recorded,
    how many starts recorded it)."""
    out = []
    for i, (label, key) in enumerate(STEPS):
        have = [s for s in starts if key in s]
        if not have:
            continue
        shares = []
        for s in have:
            before = [s[k] for _, k in STEPS[:i] if k in s] or [s["t0"]]
            shares.append(s[key] - before[-1])
        out.append((label, statistics.median(s[key] - s["t0"] for s in have), statistics.median(shares), len(have)))
    return out


def read_trace(path: str) -> dict[str, dict[str, float]]:
    """placement -> step -> wall ms of the step's first record."""
    steps: dict[str, dict[str, float]] = {}
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            steps.setdefault(r["p"], {}).setdefault(r["step"], float(r["ms"]))
    return steps


def cpu_throttled(placement: str) -> tuple[int, float] | None:
    """(periods throttled, ms throttled) of the container of ``placement`` (its cgroup is
    /raftctl-<cluster>/<machine>/<placement>, cgroup v1 or v2), or None if it is not found."""
    for path in glob.glob(f"/sys/fs/cgroup/cpu/raftctl-*/*/{placement}/cpu.stat") + \
            glob.glob(f"/sys/fs/cgroup/raftctl-*/*/{placement}/cpu.stat"):
        stat = dict(line.split() for line in open(path) if line.strip())
        if "throttled_usec" in stat:
            return int(stat["nr_throttled"]), int(stat["throttled_usec"]) / 1000
        return int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e6
    return None


def end_to_end(work: str, n: int, cpu: int, watch: bool = True,
               agent_loop: str | None = None) -> tuple[float, list[float], list[dict[str, float]]]:
    """Seconds from PUT /v1/jobs to the placement healthy: the first job (image pull) and the next n; and each of
    the n starts' steps (wall ms), with the container's CPU throttling so far (``throttled``: periods,
    ``throttled_ms``). ``watch``: the job's placements are read with blocking queries (``?index=N``: answered at
    their next change), else polled every 10 ms (~100 requests a second on the replicas during every start).
    ``agent_loop``: the agent's RAFTCTL_EVENT_LOOP (None: this process's; the replicas always take this process's)."""
    from raftctl.client import ApiError, Client
    from raftctl.devcluster import LocalCluster

    cl = LocalCluster(os.path.join(work, "cluster"), replicas=3, agents=1, runtime="runc", log_level="warning",
                      agent_args=["--heartbeat", "300ms"],
                      agent_env={"RAFTCTL_EVENT_LOOP": agent_loop} if agent_loop else None)
    trace_path = os.path.join(work, "start-trace.jsonl")
    os.environ[TRACE_ENV] = trace_path   # the agent (a child process) inherits it
    try:
        cl.start(timeout=60)
    finally:
        del os.environ[TRACE_ENV]
    try:
        cl.wait_agents(30)
        env = {**os.environ, "RAFTCTL_SERVER": " ".join(cl.urls), "RAFTCTL_TOKEN": cl.token() or ""}
        subprocess.run([sys.executable, "-m", "raftctl.cli.main", "image", "build",
                        make_busybox_dir(os.path.join(work, "e2e-src")), "--name", "bb:1", "--base", "scratch"],
                       env=env, check=True, capture_output=True)
        api = Client(cl.urls, cl.token(), retry_for=20.0)
        times: list[float] = []
        starts: list[dict[str, float]] = []
        for i in range(n + 1):
            job = {"name": f"s{i}", "image": "bb:1", "base": "scratch", "replicas": 1, "network": "host",
                   "command": ["httpd", "-f", "-p", "${PORT_HTTP}", "-h", "/www"],
                   "resources": {"cpu": f"{cpu}m", "memory": "32Mi", "pids": 32}, "ports": [{"name": "http"}],
                   "health": {"type": "tcp", "port": "http", "interval": "100ms", "timeout": "500ms", "failures": 3}}
            t0, w0 = time.monotonic(), time.time() * 1000
            api.request("PUT", f"/v1/jobs/s{i}", job)
            rec = {"t0": w0, "put": time.time() * 1000}
            deadline, index = t0 + 60, 0
            while True:
                try:
                    got = api.request("GET", f"/v1/jobs/s{i}/placements",
                                      query={"index": index, "wait": "2s"} if watch and index else None)
                    pl, index = got["placements"], int(got.get("index") or 0)
                except ApiError:  # a follower that has not applied the PUT yet
                    pl, index = [], 0
                ok = [p for p in pl if p["state"] == "running" and p["health"] == "healthy"]
                if ok:
                    rec.update(api=time.time() * 1000, plan=float(ok[0]["created_at"]),
                               healthy_at=float(ok[0].get("healthy_at") or "nan"), id=ok[0]["id"])  # type: ignore
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job s{i} never became healthy: {pl}")
                if not (watch and index):
                    time.sleep(0.01)
            times.append(time.monotonic() - t0)
            starts.append(rec)
        last = starts[-1]["id"] if starts else None
        trace = read_trace(trace_path)
        for _ in range(200 if last else 0):   # the last start's healthy report may be answered just after the API showed it
            trace = read_trace(trace_path)
            if "report_done:running/healthy" in trace.get(last, {}):  # type: ignore[call-overload]
                break
            time.sleep(0.01)
        for rec in starts:
            pid = rec.pop("id")
            rec.update(trace.get(pid, {}))  # type: ignore[call-overload]
            throttled = cpu_throttled(pid)  # type: ignore[arg-type]
            if throttled is not None:
                rec["throttled"], rec["throttled_ms"] = throttled
        return times[0], times[1:], starts[1:]
    finally:
        cl.stop()


PRIVATE = "RAFTCTL_BENCH_PRIVATE_NETNS"


def private_netns() -> None:
    """Re-run in a fresh network + mount namespace, or set that namespace up (lo, private /run/netns)."""
    if os.environ.get(PRIVATE) != "1":
        os.environ[PRIVATE] = "1"
        sys.exit(subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", sys.executable,
                                 *sys.argv]).returncode)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for d in ("/run/netns", "/run/raftctl"):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="container start latency")
    ap.add_argument("--network", choices=["host", "bridge", "both"], default="host",
                    help="bridge|both: also time bridge-mode starts (alternated with host ones)")
    ap.add_argument("--observe", choices=["watch", "poll"], default="watch",
                    help="how the end-to-end phase sees a placement healthy: blocking queries on the job's placements "
                         "(default) or a GET every 10 ms (until 2026-12-03)")
    ap.add_argument("--cpu", type=int, default=50, metavar="MILLICORES",
                    help="every container's CPU quota, the same for the driver's, bare runc's and the end-to-end "
                         "jobs' (until 2026-12-03 the end-to-end jobs had 50m and the others 250m); the N+1 "
                         "end-to-end jobs must fit on the one agent machine (2 cores: N=20 at most ~90m)")
    ap.add_argument("--agent-loop", choices=["uvloop", "asyncio"], default=None,
                    help="the end-to-end agent's event loop (RAFTCTL_EVENT_LOOP for the agent alone; default: what "
                         "this process's environment says, uvloop when unset); alternate runs to compare")
    args = ap.parse_args()
    bridge = args.network in ("bridge", "both")
    if not runc_available() or not busybox_available():
        print("container_start: needs root, runc and /usr/bin/busybox; skipped", file=sys.stderr)
        print(json.dumps({"bench": "container_start", "skipped": True}))
        return 0
    if bridge:
        private_netns()
    work = tempfile.mkdtemp(prefix="raftctl-bench-")
    store = ImageStore(os.path.join(work, "images"))
    digest = store.build(make_busybox_dir(os.path.join(work, "src")), "busybox:bench")
    drv = RuncDriver(os.path.join(work, "agent"), store)
    image_root = drv.prepare_image(digest)
    bare_root = os.path.join(work, "bare-runc")
    res: dict[str, list[float]] = {k: [] for k in ("drv_run", "drv_tcp", "drv_http", "bare_run", "bare_tcp", "bare_http")
                                   + (("br_run", "br_tcp", "br_http") if bridge else ())}
    ids: list[str] = []
    bare: list[tuple[str, str]] = []
    try:
        for i in range(N):
            # -- through the driver ------------------------------------------------------------
            port = free_port()
            spec = ContainerSpec(id=f"bench-{os.getpid()}-{i}", job="bench", replica=i, image=digest, rootfs=image_root,
                                 command=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
                                 log_dir=os.path.join(work, "logs", str(i)), ports={"http": port},
                                 resources=Resources(cpu=args.cpu, memory=32 << 20, pids=32))
            t0 = time.monotonic()
            drv.create(spec)
            drv.start(spec.id)
            assert drv.status(spec.id).state == "running"
            t_run = time.monotonic()
            t_tcp = wait_probe(port, http=False)
            t_http = wait_probe(port, http=True)
            ids.append(spec.id)
            res["drv_run"].append(t_run - t0)
            res["drv_tcp"].append(t_tcp - t0)
            res["drv_http"].append(t_http - t0)
            if bridge:   # -- the same through the driver in bridge mode: its own namespace and address ----------
                port = free_port()
                addr = f"10.88.0.{2 + i % 250}"
                bspec = ContainerSpec(id=f"bench-{os.getpid()}-b{i}", job="bench", replica=i, image=digest,
                                     rootfs=image_root, command=["httpd", "-f", "-p", str(port), "-h", "/www"],
                                     log_dir=os.path.join(work, "logs", f"b{i}"), ports={"http": port},
                                     resources=Resources(cpu=args.cpu, memory=32 << 20, pids=32), network="bridge",
                                     address=addr)
                t0 = time.monotonic()
                drv.create(bspec)
                drv.start(bspec.id)
                assert drv.status(bspec.id).state == "running"
                t_run = time.monotonic()
                t_tcp = wait_probe(port, http=False, host=addr)
                t_http = wait_probe(port, http=True, host=addr)
                ids.append(bspec.id)
                res["br_run"].append(t_run - t0)
                res["br_tcp"].append(t_tcp - t0)
                res["br_http"].append(t_http - t0)
            # -- bare runc run -d of the same config, root prepared beforehand ----------------
            port = free_port()
            bid = f"bare-{os.getpid()}-{i}"
            b = os.path.join(work, "bare", bid)
            os.makedirs(b)
            rootfs.make_root(image_root, b)
            cfg = json.load(open(os.path.join(drv.bundle(spec.id), "config.json")))
            cfg["process"]["args"] = ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"]
            cfg["linux"]["cgroupsPath"] = f"/raftctl-bench/{bid}"
            # bare runc applies the CPU quota from config.json, before its init runs (raftctl's shim writes it
            # once runc has handed over to the command, so the driver's config.json has none)
            cfg["linux"]["resources"]["cpu"] = oci_bundle.resources(spec, memsw=False)["cpu"]
            cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] != "/data"]
            json.dump(cfg, open(os.path.join(b, "config.json"), "w"))
            with open(os.path.join(b, "out.log"), "ab") as out:
                t0 = time.monotonic()
                subprocess.run(["runc", "--root", bare_root, "run", "-d", "--bundle", b, bid],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True)
            t_run = time.monotonic()
            bare.append((bid, b))
            t_tcp = wait_probe(port, http=False)
            t_http = wait_probe(port, http=True)
            res["bare_run"].append(t_run - t0)
            res["bare_tcp"].append(t_tcp - t0)
            res["bare_http"].append(t_http - t0)
    finally:
        for id in ids:
            drv.remove(id)
        for bid, b in bare:
            subprocess.run(["runc", "--root", bare_root, "delete", "--force", bid], capture_output=True)
            rootfs.release_root(b)
        shutil.rmtree(work, ignore_errors=True)

    e2e_work = tempfile.mkdtemp(prefix="raftctl-bench-e2e-")
    try:
        first, e2e, starts = end_to_end(e2e_work, N, args.cpu, watch=args.observe == "watch",
                                           agent_loop=args.agent_loop)
    finally:
        shutil.rmtree(e2e_work, ignore_errors=True)
    res["e2e_healthy"] = e2e
    ms = {k: (statistics.median(v) * 1000, pct(v, 99) * 1000) for k, v in res.items()}
    print(f"container start, {N} busybox httpd containers ({args.cpu}m CPU each), runc driver vs bare `runc run -d` "
          "(same config.json; bare's with the CPU quota in it)")
    for what in ("run", "tcp", "http"):
        d, b = ms[f"drv_{what}"], ms[f"bare_{what}"]
        print(f"  to {what:<5} driver p50 {d[0]:7.1f} ms  p99 {d[1]:7.1f} ms   bare p50 {b[0]:7.1f} ms  p99 {b[1]:7.1f} ms"
              f"   ratio p50 {d[0] / b[0]:.2f}x")
    ratio = ms["drv_tcp"][0] / ms["bare_tcp"][0]
    print(f"  aim: driver p50 <= 2x bare (to first tcp success): {ratio:.2f}x -> {'OK' if ratio <= 2 else 'MISSED'}")
    bridge_ratios = {}
    if bridge:
        print("bridge mode through the driver (own namespace, veth, address, nft table), alternated with host:")
        for what in ("run", "tcp", "http"):
            br, d = ms[f"br_{what}"], ms[f"drv_{what}"]
            bridge_ratios[f"ratio_bridge_{what}_p50"] = round(br[0] / d[0], 3)
            print(f"  to {what:<5} bridge p50 {br[0]:7.1f} ms  p99 {br[1]:7.1f} ms   host p50 {d[0]:7.1f} ms"
                  f"   bridge/host p50 {br[0] / d[0]:.2f}x (+{br[0] - d[0]:.1f} ms)")
    e, b = ms["e2e_healthy"], ms["bare_tcp"]
    e2e_ratio = e[0] / b[0]
    print(f"end to end, job PUT -> placement healthy in the API ({N} jobs, 1 runc agent, 3 replicas): "
          f"p50 {e[0]:.1f} ms  p99 {e[1]:.1f} ms (first job, pulling the image: {first * 1000:.0f} ms); "
          f"beside bare runc to tcp p50 {b[0]:.1f} ms: {e2e_ratio:.1f}x -> "
          f"{'OK' if e2e_ratio <= 2 else 'MISSED'} (aim 2x)")
    if DUMP:
        with open(DUMP, "w") as f:
            json.dump(starts, f)
    steps = breakdown(starts)
    throttled = [s for s in starts if "throttled" in s]
    if throttled:
        print(f"CPU quota ({args.cpu}m) throttled {sum(1 for s in throttled if s['throttled'])} of {len(throttled)} "
              f"end-to-end containers by the end of the run (median "
              f"{statistics.median(s['throttled_ms'] for s in throttled):.1f} ms each)")
    print(f"where an end-to-end start's time goes (median of {N} starts, ms; load {os.getloadavg()[0]:.1f}):")
    print(f"  {'step':<38} {'from PUT':>9} {'this step':>10}")
    for label, since, share, count in steps:
        print(f"  {label:<38} {since:9.1f} {share:10.1f}" + (f"   ({count} of {N} starts)" if count != N else ""))
    print(json.dumps({"bench": "container_start", "n": N,
                      **{f"{k}_p50_ms": round(v[0], 2) for k, v in ms.items()},
                      **{f"{k}_p99_ms": round(v[1], 2) for k, v in ms.items()},
                      "ratio_run_p50": round(ms["drv_run"][0] / ms["bare_run"][0], 3),
                      "ratio_tcp_p50": round(ratio, 3),
                      "ratio_http_p50": round(ms["drv_http"][0] / ms["bare_http"][0], 3), **bridge_ratios,
                      "network": args.network, "cpu_m": args.cpu, "observe": args.observe,
                      "agent_loop": args.agent_loop or event_loop_from_env(),
                      "e2e_first_ms": round(first * 1000, 1), "ratio_e2e_p50": round(e2e_ratio, 2),
                      "breakdown_ms": {label: round(since, 1) for label, since, _, _ in steps},
                      "load1": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
