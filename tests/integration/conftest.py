from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import pytest

from raftctl.client import Client
from raftctl.devcluster import LocalCluster


def wait_until(fn: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # keep polling through leader changes
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(str(tmp_path_factory.mktemp("cluster")), replicas=3)
    for p in c.servers:
        p.extra_args = ["--compact-entries", "40"]
    c.start(timeout=60)
    yield c
    c.stop()


def raw(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
        ctype: str = "application/json", timeout: float = 10.0) -> tuple[int, dict]:
    """One HTTP request with no client-side retry or request id: (status, JSON body), errors included."""
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def client_for(cluster: LocalCluster, proc: Any = None, token: str | None = None) -> Client:
    urls = [proc.url] if proc is not None else cluster.urls
    return Client(urls, token if token is not None else cluster.token(), retry_for=20.0)


SPEC = {"name": "web", "image": "web:1", "command": ["python3", "-m", "http.server", "8080"], "replicas": 2}


def assert_live(cluster, tag: str) -> None:
    """Every replica's /healthz within 1 s; a write through each replica commits within 2 s."""
    for p in cluster.servers:
        started = time.monotonic()
        status, data = raw(p.url + "/healthz", timeout=1.0)
        assert status == 200 and data["ok"], (p.id, data)
        print(f"{tag}: {p.id} /healthz {1000 * (time.monotonic() - started):.0f} ms")
    for i, p in enumerate(cluster.servers):
        started = time.monotonic()
        status, data = raw(p.url + f"/v1/jobs/live-{tag}-{i}", "PUT",
                           json.dumps({**SPEC, "name": f"live-{tag}-{i}", "replicas": 0}).encode(),
                           cluster.token(), timeout=2.0)
        assert status == 200, (p.id, data)
        print(f"{tag}: write through {p.id} committed in {1000 * (time.monotonic() - started):.0f} ms")


@contextlib.contextmanager
def agents_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, *, agents: int, runtime: str,
                   zones: int = 3) -> Iterator[LocalCluster]:
    """Three replicas and ``agents`` agents heartbeating every 300 ms, started and waited for; stopped after."""
    c = LocalCluster(str(tmp_path_factory.mktemp(name)), replicas=3, agents=agents, runtime=runtime, zones=zones,
                     agent_args=["--heartbeat", "300ms"])
    try:
        c.start(timeout=60)
        c.wait_agents(30)
        yield c
    finally:
        c.stop()


def healthy(c: LocalCluster, job: str = "web") -> list[dict]:
    """The job's placements that should run, run, and pass their health checks."""
    pl = client_for(c).request("GET", f"/v1/jobs/{job}/placements")["placements"]
    return [p for p in pl if p["desired"] == "run" and p["state"] == "running" and p["health"] == "healthy"]
