#!/usr/bin/env python3
"""Container start latency: raftctl's runc driver beside bare `runc run -d` of the same bundle.

For each of N containers (a busybox httpd on loopback, host network):
  driver: create (overlay root, config.json, shim, runc create) + start -> status running,
          then -> first successful tcp connect and first HTTP 200;
  bare:   `runc run -d` of a bundle holding the same config.json on a root prepared
          beforehand (so only runc's own work is timed) -> first tcp / HTTP success.
Prints human figures and one JSON line. Needs root, runc and busybox-static.
"""
from __future__ import annotations

import asyncio
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
from raftctl.agent.health import probe_http, probe_tcp  # noqa: E402
from raftctl.agent.images import ImageStore  # noqa: E402
from raftctl.agent.runtime.base import ContainerSpec, Resources  # noqa: E402
from raftctl.agent.runtime.runc import RuncDriver, runc_available  # noqa: E402
from raftctl.agent.testimage import busybox_available, make_busybox_dir  # noqa: E402

N = int(os.environ.get("N", "20"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_probe(port: int, http: bool, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = asyncio.run(probe_http("127.0.0.1", port, "/index.html", 0.5) if http else probe_tcp("127.0.0.1", port, 0.5))
        if ok:
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"port {port} never answered")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    if not runc_available() or not busybox_available():
        print("container_start: needs root, runc and /usr/bin/busybox; skipped", file=sys.stderr)
        print(json.dumps({"bench": "container_start", "skipped": True}))
        return 0
    work = tempfile.mkdtemp(prefix="raftctl-bench-")
    store = ImageStore(os.path.join(work, "images"))
    digest = store.build(make_busybox_dir(os.path.join(work, "src")), "busybox:bench")
    drv = RuncDriver(os.path.join(work, "agent"), store)
    image_root = drv.prepare_image(digest)
    bare_root = os.path.join(work, "bare-runc")
    res: dict[str, list[float]] = {k: [] for k in ("drv_run", "drv_tcp", "drv_http", "bare_run", "bare_tcp", "bare_http")}
    ids: list[str] = []
    bare: list[tuple[str, str]] = []
    try:
        for i in range(N):
            # -- through the driver ------------------------------------------------------------
            port = free_port()
            spec = ContainerSpec(id=f"bench-{os.getpid()}-{i}", job="bench", replica=i, image=digest, rootfs=image_root,
                                 command=["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
                                 log_dir=os.path.join(work, "logs", str(i)), ports={"http": port},
                                 resources=Resources(cpu=250, memory=32 << 20, pids=32))
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
            # -- bare runc run -d of the same config, root prepared beforehand ----------------
            port = free_port()
            bid = f"bare-{os.getpid()}-{i}"
            b = os.path.join(work, "bare", bid)
            os.makedirs(b)
            rootfs.make_root(image_root, b)
            cfg = json.load(open(os.path.join(drv.bundle(spec.id), "config.json")))
            cfg["process"]["args"] = ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"]
            cfg["linux"]["cgroupsPath"] = f"/raftctl-bench/{bid}"
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

    ms = {k: (statistics.median(v) * 1000, pct(v, 99) * 1000) for k, v in res.items()}
    print(f"container start, {N} busybox httpd containers, runc driver vs bare `runc run -d` (same config.json)")
    for what in ("run", "tcp", "http"):
        d, b = ms[f"drv_{what}"], ms[f"bare_{what}"]
        print(f"  to {what:<5} driver p50 {d[0]:7.1f} ms  p99 {d[1]:7.1f} ms   bare p50 {b[0]:7.1f} ms  p99 {b[1]:7.1f} ms"
              f"   ratio p50 {d[0] / b[0]:.2f}x")
    ratio = ms["drv_tcp"][0] / ms["bare_tcp"][0]
    print(f"  aim: driver p50 <= 2x bare (to first tcp success): {ratio:.2f}x -> {'OK' if ratio <= 2 else 'MISSED'}")
    print(json.dumps({"bench": "container_start", "n": N,
                      **{f"{k}_p50_ms": round(v[0], 2) for k, v in ms.items()},
                      **{f"{k}_p99_ms": round(v[1], 2) for k, v in ms.items()},
                      "ratio_run_p50": round(ms["drv_run"][0] / ms["bare_run"][0], 3),
                      "ratio_tcp_p50": round(ratio, 3),
                      "ratio_http_p50": round(ms["drv_http"][0] / ms["bare_http"][0], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
