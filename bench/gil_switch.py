#!/usr/bin/env python3
"""The GIL switch interval (raftctl/gil.py): an aiohttp handler beside one thread that computes, in one process.

For each interval (CPython's 5 ms first, the baseline; then raftctl's 1 ms and 0.5 ms), a server process answers a
small JSON POST (the shape of an agent's heartbeat) while a second thread runs pure-Python work, as a replica's
event loop runs beside a scheduler pass; wrk (32 connections, C) loads the handler. Printed per interval: requests/s,
p50 and p99 latency, the computing thread's progress, each as a ratio to the 5 ms baseline; then one JSON line.
Also with no computing thread, the handler's own ceiling. Then the same at raftctl's 1 ms on each event loop
(``--loops``; asyncio's selector loop first, the baseline): a replica runs on uvloop (raftctl/aio.py), whose reads
and writes keep the GIL. Needs wrk (`make bench-deps`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

LUA = ('wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"; '
       'wrk.body = \'{"machine":"m1","placements":[{"id":"p1","state":"running","health":"healthy"}]}\'\n')


def serve(interval: float, port: int, compute: bool, report: str, loop: str = "asyncio") -> None:
    from aiohttp import web

    from raftctl import aio

    sys.setswitchinterval(interval)
    count = [0]

    def burn() -> None:
        x: dict[int, int] = {}
        while True:
            for i in range(1000):
                x[i % 97] = (i * 7) % 13
            count[0] += 1

    def measure() -> None:
        time.sleep(1.0)
        c0, t0 = count[0], time.monotonic()
        time.sleep(float(os.environ.get("GIL_BENCH_SECONDS", "8")))
        with open(report, "w") as f:
            f.write(str((count[0] - c0) / (time.monotonic() - t0)))

    async def hb(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"ok": True, "interval_s": 10, "n": len(body)})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hb", hb)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.sleep(3600)

    if compute:
        threading.Thread(target=burn, daemon=True).start()
    threading.Thread(target=measure, daemon=True).start()
    aio.run(main(), loop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def one(interval: float, compute: bool, seconds: int, work: str, loop: str = "asyncio") -> dict[str, float]:
    port = free_port()
    report = os.path.join(work, f"report-{port}")
    script = os.path.join(work, "hb.lua")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(interval), str(port),
                             "1" if compute else "0", report, loop], env={**os.environ, "GIL_BENCH_SECONDS": str(seconds - 1)})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds + 1}s", "--latency", "-s", script,
                              f"http://127.0.0.1:{port}/hb"], capture_output=True, text=True, check=True).stdout
        while not os.path.exists(report) and proc.poll() is None:
            time.sleep(0.1)
        with open(report) as f:
            progress = float(f.read())
    finally:
        proc.kill()
        proc.wait()
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "compute_per_s": progress}


def beside(rows: list[tuple[str, dict[str, float]]]) -> None:
    """Print each (label, result) beside a computing thread, as ratios to the first row's."""
    base = rows[0][1]
    for label, r in rows:
        print(f"beside a computing thread, {label}: {r['requests_per_s']:,.0f} requests/s "
              f"({r['requests_per_s'] / base['requests_per_s']:.2f} x), p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms; the thread's work {r['compute_per_s']:,.0f}/s "
              f"({r['compute_per_s'] / base['compute_per_s']:.2f} x)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5], sys.argv[6])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--intervals-ms", default="5,1,0.5", help="the first is the baseline")
    ap.add_argument("--loops", default="asyncio,uvloop", help="event loops compared at 1 ms; the first is the baseline")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("gil_switch: wrk is missing (make bench-deps); skipped")
        return 0
    intervals = [float(x) / 1000 for x in args.intervals_ms.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-gil-") as work:
        with open(os.path.join(work, "hb.lua"), "w") as f:
            f.write(LUA)
        alone = one(intervals[0], False, args.seconds, work)
        rows = [(i, one(i, True, args.seconds, work)) for i in intervals]
        loops = [(name, one(0.001, True, args.seconds, work, name)) for name in args.loops.split(",")]
    print(f"handler alone ({intervals[0] * 1000:g} ms): {alone['requests_per_s']:,.0f} requests/s, "
          f"p50 {alone['p50_ms']:.2f} ms, p99 {alone['p99_ms']:.2f} ms")
    beside([(f"switch interval {i * 1000:g} ms", r) for i, r in rows])
    beside([(f"1 ms, {name}", r) for name, r in loops])
    print(json.dumps({"bench": "gil_switch", "alone": alone,
                      "rows": [{"interval_ms": i * 1000, **r} for i, r in rows],
                      "loops": [{"loop": name, **r} for name, r in loops]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
