"""Rolling deploy under load: failed requests (aim 0) and duration beside its floor.

A 6-replica web service (process driver, 3 agents) is redeployed while a load
generator sends requests through the discovery client without retries. The
floor is batches x (drain_delay + start + min_healthy), with ``start`` the
median time a replica of this service takes from placement to healthy,
measured in the same run. Prints figures and one JSON line.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.client import Client  # noqa: E402
from raftctl.devcluster import LocalCluster  # noqa: E402
from raftctl.discovery.client import SyncClient  # noqa: E402

DRAIN_MS, MIN_HEALTHY_MS, REPLICAS = 1000, 1000, 6


def spec(version: str) -> dict:
    return {"name": "web", "image": "web:1", "env": {"VERSION": version},
            "command": [sys.executable, "-m", "http.server", "${PORT_HTTP}"], "replicas": REPLICAS,
            "ports": [{"name": "http"}], "resources": {"cpu": "50m", "memory": "32Mi"},
            "health": {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2},
            "update": {"max_unavailable": 1, "drain_delay": f"{DRAIN_MS}ms", "min_healthy": f"{MIN_HEALTHY_MS}ms",
                       "deadline": "120s"}}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, replicas=3, agents=3, runtime="process", log_level="warning",
                               agent_args=["--heartbeat", "500ms"])
        cluster.start(timeout=60)
        cluster.wait_agents(30)
        try:
            api = Client(cluster.urls, cluster.token())
            api.request("PUT", "/v1/jobs/web", spec("1"))
            while len([p for p in api.request("GET", "/v1/jobs/web/placements")["placements"]
                       if p["health"] == "healthy"]) < REPLICAS:
                time.sleep(0.2)
            dc = SyncClient(cluster.urls, cluster.token())
            ok = failed = 0
            stop = threading.Event()

            def load() -> None:
                nonlocal ok, failed
                while not stop.is_set():
                    try:
                        e = dc.pick("web")
                        with urllib.request.urlopen(f"http://{e['address']}:{e['port']}/", timeout=2) as r:
                            r.read()
                        ok += 1
                    except Exception:
                        failed += 1
                    time.sleep(0.005)
            t = threading.Thread(target=load, daemon=True)
            t.start()
            time.sleep(1)
            t0 = time.monotonic()
            api.request("PUT", "/v1/jobs/web", spec("2"))
            while (api.request("GET", "/v1/jobs/web").get("deployment") or {}).get("status") != "successful":
                time.sleep(0.1)
            took = time.monotonic() - t0
            stop.set()
            t.join(10)
            dc.close()
            pl = api.request("GET", "/v1/jobs/web/placements")["placements"]
            starts = [(p["healthy_at"] - p["created_at"]) / 1000 for p in pl
                      if p["version"] == 2 and p.get("healthy_at")]
        finally:
            cluster.stop()
    start_s = statistics.median(starts)
    floor = REPLICAS * (DRAIN_MS / 1000 + start_s + MIN_HEALTHY_MS / 1000)
    res = {"bench": "rolling_deploy", "requests_ok": ok, "requests_failed": failed, "deploy_s": round(took, 2),
           "floor_s": round(floor, 2), "ratio": round(took / floor, 3), "replica_start_s": round(start_s, 3)}
    print(f"rolling deploy of {REPLICAS} replicas under load: {ok} requests ok, {failed} failed (aim 0)")
    print(f"deploy took {took:.1f} s; floor {REPLICAS} x ({DRAIN_MS / 1000:g} s drain + {start_s:.2f} s start + "
          f"{MIN_HEALTHY_MS / 1000:g} s min_healthy) = {floor:.1f} s; ratio {res['ratio']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
