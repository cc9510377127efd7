"""Committed writes/s and latency through the HTTP API, beside bare pysyncobj.

Baseline: three bare pysyncobj processes holding a replicated counter (pysyncobj
defaults, in-memory journal), the leader submitting pipelined increments.
raftctl: three `raftctl server` processes (durable journal, msync per entry),
32 concurrent keep-alive HTTP clients each scaling its own job through a
randomly chosen replica (so two thirds of writes are forwarded by a follower).
Prints human figures and one JSON line; the ratio is raftctl / bare.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.devcluster import LocalCluster, free_port  # noqa: E402

BARE = textwrap.dedent("""
    import sys, time, threading
    from pysyncobj import SyncObj, SyncObjConf, replicated
    class Counter(SyncObj):
        def __init__(self, me, peers):
            super().__init__(me, peers, SyncObjConf())
            self.n = 0
        @replicated
        def inc(self):
            self.n += 1
            return self.n
    me, peers, role, seconds = sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])
    c = Counter(me, peers)
    while c._getLeader() is None:
        time.sleep(0.05)
    if not c._isLeader():
        time.sleep(seconds + 30); sys.exit(0)
    done = [0]; lock = threading.Semaphore(20000)
    def cb(res, err):
        if err == 0: done[0] += 1
        lock.release()
    t0 = time.time()
    while time.time() - t0 < 1.0:
        lock.acquire(); c.inc(callback=cb)
    start, d0 = time.time(), done[0]
    while time.time() - start < seconds:
        lock.acquire(); c.inc(callback=cb)
    el = time.time() - start
    print("RATE", (done[0] - d0) / el, flush=True)
""")


BARE_HTTP = textwrap.dedent("""
    import sys
    from aiohttp import web
    async def scale(request):
        await request.read()
        return web.json_response({"index": 1, "name": "b", "replicas": 1, "previous": 0})
    app = web.Application()
    app.router.add_post("/v1/jobs/{name}/scale", scale)
    app.router.add_put("/v1/jobs/{name}", scale)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""")


def bare_http(seconds: float, clients: int) -> dict:
    """The same client against a bare aiohttp handler: the HTTP ceiling of this machine."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(BARE_HTTP)
        script = f.name
    proc = subprocess.Popen([sys.executable, script, str(port)])
    try:
        time.sleep(1.0)
        return asyncio.run(raftctl_http([f"http://127.0.0.1:{port}"], "x", seconds, clients))
    finally:
        proc.kill()
        proc.wait()
        os.unlink(script)


def bare_pysyncobj(seconds: float) -> float:
    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(BARE)
        script = f.name
    # every process runs the same script; whichever wins the election drives and prints RATE
    procs = []
    for i in range(3):
        others = [a for j, a in enumerate(addrs) if j != i]
        procs.append(subprocess.Popen([sys.executable, script, addrs[i], ",".join(others), "any", str(seconds)],
                                      stdout=subprocess.PIPE, text=True))
    rate = 0.0
    try:
        import selectors
        sel = selectors.DefaultSelector()
        for p in procs:
            sel.register(p.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + seconds + 30
        while not rate and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line.startswith("RATE"):
                    rate = float(line.split()[1])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.unlink(script)
    return rate


async def raftctl_http(urls: list[str], token: str, seconds: float, clients: int) -> dict:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    spec = {"image": "bench:1", "command": ["sleep", "1"], "replicas": 0}
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=clients * 2)) as s:
        for i in range(clients):
            async with s.put(f"{urls[0]}/v1/jobs/b{i}", json={**spec, "name": f"b{i}"}) as r:
                assert r.status == 200, await r.text()
        stop_at = time.monotonic() + seconds
        warm_until = time.monotonic() + 1.0

        async def worker(i: int) -> None:
            nonlocal errors
            n = 0
            url = urls[i % len(urls)] if not LEADER_ONLY else urls[0]
            while time.monotonic() < stop_at:
                n += 1
                t0 = time.monotonic()
                async with s.post(f"{url}/v1/jobs/b{i}/scale", json={"replicas": n % 3}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                if t0 > warm_until:
                    lat.append(time.monotonic() - t0)

        await asyncio.gather(*(worker(i) for i in range(clients)))
    measured = seconds - 1.0
    lat.sort()
    return {"writes_per_s": len(lat) / measured, "p50_ms": statistics.median(lat) * 1000 if lat else None,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000 if lat else None, "errors": errors, "samples": len(lat)}


LEADER_ONLY = os.environ.get("LEADER_ONLY") == "1"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    bare = bare_pysyncobj(args.seconds)
    print(f"bare pysyncobj counter, pipelined on the leader: {bare:,.0f} commits/s")
    http = bare_http(args.seconds + 1.0, args.clients)
    print(f"bare aiohttp handler, same client: {http['writes_per_s']:,.0f} requests/s, p50 {http['p50_ms']:.2f} ms")
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, replicas=3, log_level="warning")
        cluster.start(timeout=30)
        try:
            leader = cluster.leader()
            urls = [leader.url] + [u for u in cluster.urls if u != leader.url] if leader else cluster.urls
            res = asyncio.run(raftctl_http(urls, cluster.token() or "", args.seconds + 1.0, args.clients))
            with open(os.path.join(cluster.servers[0].data_dir, "raft.journal.meta"), "rb"):
                pass
        finally:
            cluster.stop()
    ratio = res["writes_per_s"] / bare if bare else None
    print(f"raftctl HTTP API, {args.clients} clients over 3 replicas: {res['writes_per_s']:,.0f} writes/s, "
          f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, errors {res['errors']}")
    print(f"ratio raftctl / bare pysyncobj: {ratio:.3f}" if ratio else "ratio: n/a (baseline failed)")
    http_ratio = res["writes_per_s"] / http["writes_per_s"] if http["writes_per_s"] else None
    print(f"ratio raftctl / bare aiohttp (the HTTP ceiling here): {http_ratio:.3f}" if http_ratio else "")
    print(json.dumps({"bench": "raft_commit", "bare_commits_per_s": round(bare, 1), **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()},
                      "ratio": round(ratio, 4) if ratio else None, "bare_http_per_s": round(http["writes_per_s"], 1),
                      "ratio_vs_bare_http": round(http_ratio, 4) if http_ratio else None, "clients": args.clients}))


if __name__ == "__main__":
    main()
