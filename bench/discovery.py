"""Discovery benchmarks.

(1) Lookups/s and p50/p99 latency of GET /v1/discovery/web on one follower with
    64 concurrent keep-alive connections (wrk, 2 threads), beside a bare aiohttp
    handler returning the same bytes on the same machine in the same run (the same
    request, Authorization header included, and the same answer: body, content type
    and X-Raftctl headers; before session 13 the bare handler got no token and sent
    only the body, a few hundred bytes less to parse and write per lookup). The
    bare handler runs twice: on asyncio's loop (a plain aiohttp service, the aim's
    baseline) and on uvloop's (the loop a replica runs since session 24,
    raftctl/aio.py; the ratio to it is raftctl's own cost on the same loop). All
    three servers run at once and are measured in rounds whose order turns
    (--rounds), so a change in the machine's load hits each; the ratios are of the
    medians, and the server CPU per request (from /proc) is printed beside them, a
    figure the load of other processes moves less than requests/s. Aim: >= 0.8 x
    bare (asyncio). RAFTCTL_EVENT_LOOP=asyncio runs the replicas on asyncio.
    (Skipped when wrk is missing: `make bench-deps`.)
(2) Staleness: a health transition committed (the agent report answered by the
    leader) -> visible in a follower's lookup, p50/p99 over N transitions,
    observed with blocking queries. Aim: p99 <= 250 ms.
Prints figures and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.aio import event_loop_from_env  # noqa: E402
from raftctl.client import ApiError, Client  # noqa: E402
from raftctl.devcluster import LocalCluster, free_port  # noqa: E402

BARE = textwrap.dedent("""
    import json, sys
    from aiohttp import web
    body = open(sys.argv[2], "rb").read()
    headers = json.loads(sys.argv[3])
    async def h(request):
        return web.Response(body=body, headers=headers)
    app = web.Application()
    app.router.add_get("/v1/discovery/{service}", h)
    loop = None
    if sys.argv[4] == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
""")
BARES = ("asyncio", "uvloop")
"""The bare handler's event loops: asyncio's, the aim's baseline (a plain aiohttp service), and uvloop's, the loop a
replica runs (raftctl/aio.py), so the ratio to it is raftctl's own cost on the same loop."""
KEY_SUFFIX = {loop: "" if loop == "asyncio" else f"_{loop}" for loop in BARES}
"""Each bare loop's suffix on the JSON keys: none for the aim's baseline (asyncio), as before uvloop came in."""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, token: str | None, seconds: int, pid: int | None = None) -> dict:
    cpu0 = cpu_s(pid) if pid else 0.0
    argv = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res = {"per_s": rate, "p50_ms": ms("50"), "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0}
    if pid and total:
        res["cpu_us_per_req"] = round((cpu_s(pid) - cpu0) / total * 1e6, 1)
    return res


def start_bare(body: bytes, headers: dict[str, str], loop: str = "asyncio") -> tuple[subprocess.Popen, str, list[str]]:
    """A bare aiohttp server on ``loop`` (BARES) answering every GET /v1/discovery/{service} with ``body`` and
    ``headers``; (process, url, files)."""
    with tempfile.NamedTemporaryFile("wb", delete=False) as bf, \
            tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as sf:
        bf.write(body)
        sf.write(BARE)
    port = free_port()
    proc = subprocess.Popen([sys.executable, sf.name, str(port), bf.name, json.dumps(headers), loop])
    url = f"http://127.0.0.1:{port}/v1/discovery/web"
    deadline = time.monotonic() + 30
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).read() == body:
                return proc, url, [sf.name, bf.name]
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def lookups(url: str, token: str | None, pid: int | None, body: bytes, headers: dict[str, str], seconds: int,
            rounds: int) -> dict:
    """Alternated wrk rounds against the follower and a bare handler on each of BARES serving ``body`` with
    ``headers``, all running, each sent the same requests (the token too). The order turns every round, so none
    always follows another."""
    bares = {loop: start_bare(body, headers, loop) for loop in BARES}
    runs: dict[str, list[dict]] = {"real": [], **{loop: [] for loop in BARES}}
    targets = [("real", url, pid)] + [(loop, b_url, proc.pid) for loop, (proc, b_url, _) in bares.items()]
    try:
        for i in range(rounds):
            k = i % len(targets)
            for name, u, p in targets[k:] + targets[:k]:
                runs[name].append(wrk(u, token, seconds, p))
    finally:
        for proc, _, files in bares.values():
            proc.kill()
            proc.wait()
            for f in files:
                os.unlink(f)
    real = runs["real"]
    return {"lookup": median_of(real), **{f"bare_{loop}": median_of(runs[loop]) for loop in BARES},
            **{f"ratios_{loop}": [round(r["per_s"] / b["per_s"], 3) for r, b in zip(real, runs[loop])]
               for loop in BARES}}


def setup(cluster: LocalCluster) -> Client:
    c = Client(cluster.urls, cluster.token())
    for i in range(3):
        c.request("POST", "/v1/agent/register", {"machine": f"m{i}", "address": f"127.0.0.{i + 2}",
                                                 "fault_domain": {"zone": f"z{i}"}, "labels": {},
                                                 "resources": {"cpu": 4000, "memory": 4 << 30, "pids": 1000},
                                                 "ports": [20000, 20100], "runtime": "sim"})
    c.request("PUT", "/v1/jobs/web", {"name": "web", "image": "web:1", "command": ["serve"], "replicas": 3,
                                      "ports": [{"name": "http"}], "spread": [{"level": "zone", "mode": "hard"}]})
    deadline = time.monotonic() + 30
    pl: list = []
    while time.monotonic() < deadline:
        try:   # a follower may not have applied the job yet (reads are local)
            pl = c.request("GET", "/v1/jobs/web/placements")["placements"]
        except ApiError:
            pl = []
        if len(pl) == 3:
            break
        time.sleep(0.1)
    for p in pl:
        c.request("POST", "/v1/agent/report", {"machine": p["machine"], "updates": [
            {"placement": p["id"], "state": "running", "health": "healthy"}]})
    return c


def staleness(cluster: LocalCluster, c: Client, follower_url: str, n: int) -> list[float]:
    pl = c.request("GET", "/v1/jobs/web/placements")["placements"][0]
    leader = cluster.leader()
    lc = Client([leader.url], cluster.token())
    fc = Client([follower_url], cluster.token())
    out = []
    healthy = True
    for _ in range(n):
        start = fc.request("GET", "/v1/discovery/web")
        seen: dict = {}

        def watch() -> None:
            ans = fc.request("GET", "/v1/discovery/web", query={"index": start["index"], "wait": "10s"}, timeout=15)
            seen["t"] = time.monotonic()
            seen["n"] = len(ans["endpoints"])
        t = threading.Thread(target=watch)
        t.start()
        time.sleep(0.02)
        healthy = not healthy
        lc.request("POST", "/v1/agent/report", {"machine": pl["machine"], "updates": [
            {"placement": pl["id"], "state": "running", "health": "healthy" if healthy else "unhealthy"}]})
        committed = time.monotonic()
        t.join()
        out.append(max(0.0, seen["t"] - committed))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--transitions", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5, help="alternated wrk rounds per server")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    if not shutil.which("wrk"):
        print("wrk not found (apt-get install wrk, or `make bench-deps` as root); skipping the throughput part")
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, replicas=3, log_level="warning")
        for p in cluster.servers:
            p.extra_args = ["--heartbeat-ttl", "1h"]
        cluster.start(timeout=60)
        try:
            c = setup(cluster)
            leader = cluster.leader()
            follower = next(p for p in cluster.servers if p is not leader)
            url = f"{follower.url}/v1/discovery/web"
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token()}"})
            answer = urllib.request.urlopen(req)
            body = answer.read()
            assert len(json.loads(body)["endpoints"]) == 3
            headers = {h: answer.headers[h] for h in ("Content-Type", "X-Raftctl-Index", "X-Raftctl-Leader")}
            runs = lookups(url, cluster.token(), follower.pid, body, headers, args.seconds, args.rounds) \
                if shutil.which("wrk") else None
            stale = staleness(cluster, c, follower.url, args.transitions)
        finally:
            cluster.stop()
    real = runs["lookup"] if runs else None
    stale.sort()
    res: dict = {"bench": "discovery", "replica_loop": event_loop_from_env(), "lookup": real}
    for loop, sfx in KEY_SUFFIX.items():
        bare = runs[f"bare_{loop}"] if runs else None
        res[f"bare{sfx}"] = bare
        res[f"ratio{sfx}"] = round(real["per_s"] / bare["per_s"], 3) if real and bare else None
        res[f"ratios{sfx}"] = runs[f"ratios_{loop}"] if runs else None
        # bare CPU per request / the follower's: less moved by the other processes on the machine than req/s
        res[f"cpu_ratio{sfx}"] = round(bare["cpu_us_per_req"] / real["cpu_us_per_req"], 3) \
            if real and bare and "cpu_us_per_req" in real and "cpu_us_per_req" in bare else None
    res.update({"staleness_p50_ms": round(statistics.median(stale) * 1000, 1),
                "staleness_p99_ms": round(stale[min(len(stale) - 1, int(0.99 * len(stale)))] * 1000, 1),
                "load1_before": round(load0, 2), "load1_after": round(os.getloadavg()[0], 2)})
    if real:
        print(f"lookups on a follower ({res['replica_loop']}): {real['per_s']:,.0f}/s, p50 {real['p50_ms']:.2f} ms, "
              f"p99 {real['p99_ms']:.2f} ms (non-2xx {real['non_2xx']:.0f}), "
              f"{real.get('cpu_us_per_req', float('nan')):.0f} us CPU/request")
        for loop, sfx in KEY_SUFFIX.items():
            bare = res[f"bare{sfx}"]
            print(f"bare aiohttp on {loop}, same bytes: {bare['per_s']:,.0f}/s, p50 {bare['p50_ms']:.2f} ms, "
                  f"p99 {bare['p99_ms']:.2f} ms, {bare.get('cpu_us_per_req', float('nan')):.0f} us CPU/request; "
                  f"ratio {res[f'ratio{sfx}']} (medians of {args.rounds} alternated rounds; per round "
                  f"{res[f'ratios{sfx}']}{'; aim >= 0.8' if not sfx else ''}); CPU per request, bare / follower: "
                  f"{res[f'cpu_ratio{sfx}']}")
    print(f"health transition committed -> visible on a follower: p50 {res['staleness_p50_ms']} ms, "
          f"p99 {res['staleness_p99_ms']} ms (aim p99 <= 250 ms)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
