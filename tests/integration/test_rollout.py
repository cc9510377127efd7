"""Rolling deploys and drains with real agents (process driver) and a load generator."""
from __future__ import annotations

import sys
import threading
import time
import urllib.request

import pytest

from raftctl.discovery.client import SyncClient

from .conftest import agents_cluster, client_for, healthy, wait_until

pytestmark = pytest.mark.integration


def web(version: str, **extra) -> dict:
    return {"name": "web", "image": "web:1", "env": {"VERSION": version},
            "command": [sys.executable, "-m", "http.server", "${PORT_HTTP}"], "replicas": 6,
            "ports": [{"name": "http"}], "resources": {"cpu": "50m", "memory": "32Mi"},
            "health": {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2},
            "update": {"max_unavailable": 1, "drain_delay": "500ms", "min_healthy": "300ms", "deadline": "20s"},
            "disruption": {"max_unavailable": 1}, **extra}


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "roll", agents=3, runtime="process") as cl:
        yield cl


class Load:
    """Requests through the discovery client, no retries; samples the healthy endpoint count."""

    def __init__(self, c) -> None:
        self.dc = SyncClient(c.urls, c.token())
        self.ok = self.failed = 0
        self.min_endpoints = 10**9
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ans = self.dc.lookup("web")
                self.min_endpoints = min(self.min_endpoints, len(ans.endpoints))
                e = self.dc.pick("web")
                with urllib.request.urlopen(f"http://{e['address']}:{e['port']}/", timeout=2) as r:
                    r.read()
                self.ok += 1
            except Exception as exc:
                self.failed += 1
                self.errors.append(repr(exc)[:120])
            time.sleep(0.01)

    def __enter__(self) -> "Load":
        self.t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.t.join(10)
        self.dc.close()


def test_rolling_deploy_under_load_drops_nothing(c):
    api = client_for(c)
    api.request("PUT", "/v1/jobs/web", web("1"))
    wait_until(lambda: len(healthy(c)) == 6, timeout=40, what="6 healthy")
    with Load(c) as load:
        time.sleep(0.5)
        api.request("PUT", "/v1/jobs/web", web("2"))
        wait_until(lambda: (api.request("GET", "/v1/jobs/web")["deployment"] or {}).get("status") == "successful",
                   timeout=60, what="deploy successful")
    pl = healthy(c)
    assert len(pl) == 6 and {p["version"] for p in pl} == {2}
    assert load.failed == 0, load.errors[:5]
    assert load.ok > 50 and load.min_endpoints >= 5
    versions = api.request("GET", "/v1/jobs/web/versions")["versions"]
    assert [v["stable"] for v in versions] == [False, True]


def test_broken_deploy_stops_at_first_batch_and_reverts(c):
    api = client_for(c)
    wait_until(lambda: len(healthy(c)) == 6, timeout=40, what="6 healthy")
    broken = web("3", command=[sys.executable, "-c", "import time; time.sleep(600)"])
    with Load(c) as load:
        api.request("PUT", "/v1/jobs/web", broken)
        wait_until(lambda: (api.request("GET", "/v1/jobs/web")["deployment"] or {}).get("status") == "successful"
                   and api.request("GET", "/v1/jobs/web")["version"] == 4, timeout=90, what="reverted and healthy")
    job = api.request("GET", "/v1/jobs/web")
    assert job["spec"]["env"]["VERSION"] == "2"  # version 4 is a rollback to 2
    events = [e["message"] for e in api.request("GET", "/v1/events")["events"]]
    assert any("failed: not healthy by its deadline; rolling back to version 2" in m for m in events)
    assert load.min_endpoints >= 5  # never fewer than replicas - max_unavailable


def test_drain_moves_replicas_within_budget_and_reports_blocks(c):
    api = client_for(c)
    for name in ("batch", "cache"):  # three jobs on the machine: web plus two without health checks
        api.request("PUT", f"/v1/jobs/{name}", {
            "name": name, "image": "x:1", "command": [sys.executable, "-c", "import time; time.sleep(3600)"],
            "replicas": 3, "resources": {"cpu": "20m", "memory": "16Mi"},
            "update": {"drain_delay": "200ms"}, "disruption": {"max_unavailable": 1}})
    wait_until(lambda: len(healthy(c)) == 6 and len(healthy(c, "batch")) == 3 and len(healthy(c, "cache")) == 3,
               timeout=60, what="all healthy")
    on: dict = {}
    for job in ("web", "batch", "cache"):
        for p in healthy(c, job):
            on.setdefault(p["machine"], set()).add(job)
    victim = max(on, key=lambda m: len(on[m]))
    assert len(on[victim]) >= 2
    lowest = {"web": 6, "batch": 3, "cache": 3}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for job in lowest:
                try:
                    lowest[job] = min(lowest[job], len(healthy(c, job)))
                except Exception:
                    pass
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Load(c) as load:
        api.request("POST", f"/v1/machines/{victim}/drain", {"deadline": "60s"})
        wait_until(lambda: {m["id"]: m for m in api.request("GET", "/v1/machines")["machines"]}[victim]["state"]
                   == "drained", timeout=60, what="machine drained")
    sampling.set()
    sampler.join(5)
    assert load.failed == 0, load.errors[:5]
    assert load.min_endpoints >= 5  # the budget: never more than one replica away at a time
    assert lowest["web"] >= 5 and lowest["batch"] >= 2 and lowest["cache"] >= 2, lowest
    wait_until(lambda: len(healthy(c)) == 6, timeout=30, what="6 healthy elsewhere")
    assert all(p["machine"] != victim for job in lowest for p in healthy(c, job))
    api.request("POST", f"/v1/machines/{victim}/undrain")
    # a budget of 0 holds the drain back and says which job
    api.request("PUT", "/v1/jobs/web", web("2", disruption={"max_unavailable": 0}))
    wait_until(lambda: len(healthy(c)) == 6, timeout=60, what="6 healthy")
    target = healthy(c)[0]["machine"]
    api.request("POST", f"/v1/machines/{target}/drain")
    wait_until(lambda: any("drain held back: job web" in e["message"]
                           for e in api.request("GET", "/v1/events")["events"]), timeout=20, what="held-back event")
    api.request("POST", f"/v1/machines/{target}/undrain")


def test_job_run_wait_follows_the_rollout(c, tmp_path):
    import json
    import os
    import subprocess

    f = tmp_path / "web.json"
    f.write_text(json.dumps(web("5")))
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token()}
    p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", "-o", "json", "job", "run", "--wait", str(f)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    lines, text, dec = [], p.stdout.strip(), json.JSONDecoder()
    while text:
        obj, end = dec.raw_decode(text)
        lines.append(obj)
        text = text[end:].strip()
    assert lines[0]["version"] >= 5
    kinds = {e.get("kind") for e in lines[1:]}
    assert "deploy" in kinds and "placement.retire" in kinds


def test_canary_waits_for_promotion_then_rolls(c):
    api = client_for(c)
    wait_until(lambda: len(healthy(c)) == 6, timeout=60, what="6 healthy")
    v = api.request("GET", "/v1/jobs/web")["version"]
    api.request("PUT", "/v1/jobs/web", web("canary", update={"max_unavailable": 1, "drain_delay": "300ms",
                                                             "min_healthy": "300ms", "deadline": "60s", "canary": 1}))
    wait_until(lambda: len(healthy(c)) == 7, timeout=30, what="a canary beside the 6")
    time.sleep(1.5)
    pl = healthy(c)
    assert sorted(p["version"] for p in pl) == [v] * 6 + [v + 1]  # nothing else moves before promotion
    assert len(client_for(c).request("GET", "/v1/discovery/web")["endpoints"]) == 7
    api.request("POST", "/v1/jobs/web/promote")
    wait_until(lambda: (api.request("GET", "/v1/jobs/web")["deployment"] or {}).get("status") == "successful",
               timeout=90, what="deploy successful after promotion")
    pl = healthy(c)
    assert len(pl) == 6 and {p["version"] for p in pl} == {v + 1}


def test_max_surge_starts_new_replicas_before_old_ones_stop(c):
    api = client_for(c)
    wait_until(lambda: len(healthy(c)) == 6, timeout=60, what="6 healthy")
    with Load(c) as load:
        api.request("PUT", "/v1/jobs/web", web("surge", update={"max_unavailable": 1, "max_surge": 2,
                                                                "drain_delay": "300ms", "min_healthy": "300ms",
                                                                "deadline": "60s"}))
        wait_until(lambda: (api.request("GET", "/v1/jobs/web")["deployment"] or {}).get("status") == "successful",
                   timeout=90, what="deploy successful")
    assert load.failed == 0, load.errors[:5]
    assert load.min_endpoints >= 6  # the surge kept full capacity throughout
    assert len(healthy(c)) == 6
