"""Rolling deploy under load: failed requests (aim 0) and duration beside its floor.

A 6-replica web service (3 agents) is redeployed while a load generator sends
requests through the discovery client without retries. The floor is batches x
(drain_delay + start + min_healthy), with ``start`` the median time a replica of
this service takes from placement to healthy, measured in the same run. Prints
figures and one JSON line.

    python bench/rolling_deploy.py                    # network: host, process driver (as before)
    python bench/rolling_deploy.py --network bridge   # network: bridge, runc (root): requests go to container
                                                      # addresses; run inside a private `unshare --net --mount`
    python bench/rolling_deploy.py --runtime runc     # network: host under runc, the same way (its baseline)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from raftctl.client import ApiError, Client  # noqa: E402
from raftctl.devcluster import LocalCluster  # noqa: E402
from raftctl.discovery.client import SyncClient  # noqa: E402

DRAIN_MS, MIN_HEALTHY_MS, REPLICAS = 1000, 1000, 6


HERE = os.path.dirname(os.path.abspath(__file__))
PRIVATE = "RAFTCTL_BENCH_PRIVATE_NETNS"


def spec(version: str, network: str = "host", runtime: str = "process") -> dict:
    extra: dict = {"network": network}
    if runtime == "runc":     # runs in the image's root: python3 of the host (base: host)
        extra.update(base="host", command=["python3", "-m", "http.server", "${PORT_HTTP}"],
                     resources={"cpu": "100m", "memory": "64Mi", "pids": 64})
        # python3 starting in a container takes seconds on a loaded machine: failures count after the grace
        extra["health"] = {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2,
                           "grace": "10s"}
    out = {"name": "web", "image": "web:1", "env": {"VERSION": version},
            "command": [sys.executable, "-m", "http.server", "${PORT_HTTP}"], "replicas": REPLICAS,
            "ports": [{"name": "http"}], "resources": {"cpu": "50m", "memory": "32Mi"},
            "health": {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2},
            "update": {"max_unavailable": 1, "drain_delay": f"{DRAIN_MS}ms", "min_healthy": f"{MIN_HEALTHY_MS}ms",
                       "deadline": "120s"}}
    out.update(extra)
    return out


def healthy(api: Client) -> int:
    """Healthy replicas of web (0 while a replica behind the PUT does not know the job yet)."""
    try:
        return len([p for p in api.request("GET", "/v1/jobs/web/placements")["placements"] if p["health"] == "healthy"])
    except ApiError as exc:
        if exc.code != "not_found":
            raise
        return 0


def private_netns() -> None:
    """Re-run this bench in a fresh network + mount namespace (bridges, routes and nftables of bridge mode stay
    there: traffic goes only to its loopback and to the namespaces it creates), or set that namespace up."""
    if os.environ.get(PRIVATE) != "1":
        os.environ[PRIVATE] = "1"
        r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", sys.executable, *sys.argv])
        sys.exit(r.returncode)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for d in ("/run/netns", "/run/raftctl"):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)


def push_image(cluster: LocalCluster) -> None:
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(cluster.urls), "RAFTCTL_TOKEN": cluster.token() or "",
           "PYTHONPATH": os.path.join(HERE, "..")}
    subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'raftctl'; from raftctl.cli.main import main; "
                    "sys.exit(main())", "image", "build", os.path.join(HERE, "..", "examples", "web"),
                    "--name", "web:1", "--base", "host"], env=env, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--network", choices=["host", "bridge"], default="host")
    ap.add_argument("--runtime", choices=["process", "runc"], default=None,
                    help="default: runc for bridge (it needs namespaces), process for host")
    args = ap.parse_args()
    runtime = args.runtime or ("runc" if args.network == "bridge" else "process")
    if args.network == "bridge" and runtime != "runc":
        ap.error("--network bridge needs --runtime runc")
    if runtime == "runc":      # host and bridge alike in a namespace of their own: the same conditions
        private_netns()
    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, replicas=3, agents=3, runtime=runtime, log_level="warning",
                               agent_args=["--heartbeat", "500ms"])
        cluster.start(timeout=60)
        cluster.wait_agents(30)
        try:
            api = Client(cluster.urls, cluster.token())
            if runtime == "runc":
                push_image(cluster)
            api.request("PUT", "/v1/jobs/web", spec("1", args.network, runtime))
            up_by = time.monotonic() + 300
            while time.monotonic() < up_by and healthy(api) < REPLICAS:
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
            api.request("PUT", "/v1/jobs/web", spec("2", args.network, runtime))
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
    res = {"bench": "rolling_deploy", "network": args.network, "runtime": runtime, "requests_ok": ok, "requests_failed": failed, "deploy_s": round(took, 2),
           "floor_s": round(floor, 2), "ratio": round(took / floor, 3), "replica_start_s": round(start_s, 3)}
    print(f"rolling deploy of {REPLICAS} replicas (network {args.network}, {runtime}) under load: {ok} requests ok, "
          f"{failed} failed (aim 0)")
    print(f"deploy took {took:.1f} s; floor {REPLICAS} x ({DRAIN_MS / 1000:g} s drain + {start_s:.2f} s start + "
          f"{MIN_HEALTHY_MS / 1000:g} s min_healthy) = {floor:.1f} s; ratio {res['ratio']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
