"""What TLS costs on the HTTP API: the same requests against a plain and a TLS 3-replica cluster in one run.

(1) Reads: sequential `GET /v1/status` from the CLI's client (urllib: one new
    connection, hence one TLS handshake, per request) against a follower.
(2) Writes to a follower: sequential `POST /v1/jobs/{name}/scale`, which the
    follower forwards to the leader over its keep-alive session (verified HTTPS
    with TLS on), then waits until it has applied the entry itself.
(3) Reads over keep-alive: 32 concurrent aiohttp connections, `GET /v1/status`.
Runs alternate plain/TLS (--rounds) and keep the best of each, since the CPU may be shared.
Prints figures, the TLS/plain ratios and one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.client import Client  # noqa: E402
from raftctl.devcluster import LocalCluster  # noqa: E402
from raftctl.tls import client_context  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def timed(fn, n: int) -> dict:  # type: ignore[no-untyped-def]
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return {"per_s": round(n / total, 1), "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2)}


async def keepalive(url: str, token: str, ca: str | None, seconds: float, conns: int = 32) -> dict:
    ssl = client_context(ca) if ca else None
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns, ssl=ssl if ssl else True),
                                     headers={"Authorization": f"Bearer {token}"}) as s:
        async def worker() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with s.get(url + "/v1/status") as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        total = time.perf_counter() - started
    return {"per_s": round(len(lat) / total, 1), "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2)}


def run(tls: bool, reads: int, writes: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(os.path.join(d, "c"), replicas=3, log_level="warning",
                               tls_dir=os.path.join(d, "pki") if tls else None)
        cluster.start(timeout=90)
        try:
            leader = cluster.leader()
            follower = next(p for p in cluster.servers if p is not leader)
            c = Client([follower.url], cluster.token(), ca=cluster.ca)
            c.request("PUT", "/v1/jobs/bench", {"name": "bench", "image": "w:1", "command": ["true"], "replicas": 0})
            out = {"reads_new_conn": timed(lambda i: c.request("GET", "/v1/status"), reads),
                   "writes_via_follower": timed(
                       lambda i: c.request("POST", "/v1/jobs/bench/scale", {"replicas": i % 7}), writes),
                   "reads_keepalive": asyncio.run(keepalive(follower.url, cluster.token() or "", cluster.ca,
                                                            seconds))}
        finally:
            cluster.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2, help="plain/TLS runs, alternating; the best of each is kept")
    args = ap.parse_args()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.rounds):  # alternate the order, so a busy moment on a shared machine hits both sides
        for tls_on in ((False, True) if i % 2 == 0 else (True, False)):
            runs[tls_on].append(run(tls_on, args.reads, args.writes, args.seconds))
    plain, tls = ({k: max((r[k] for r in runs[side]), key=lambda x: x["per_s"]) for k in runs[side][0]}
                  for side in (False, True))
    ratios = {k: round(tls[k]["per_s"] / plain[k]["per_s"], 2) for k in plain}
    for k in plain:
        print(f"{k:22s} plain {plain[k]['per_s']:8.1f}/s p50 {plain[k]['p50_ms']:6.2f} ms p99 {plain[k]['p99_ms']:6.2f} ms"
              f" | tls {tls[k]['per_s']:8.1f}/s p50 {tls[k]['p50_ms']:6.2f} ms p99 {tls[k]['p99_ms']:6.2f} ms"
              f" | tls/plain {ratios[k]:.2f}")
    print(json.dumps({"bench": "tls", "plain": plain, "tls": tls, "ratio_tls_over_plain": ratios}))


if __name__ == "__main__":
    main()
