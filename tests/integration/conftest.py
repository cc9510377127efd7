from __future__ import annotations

import time
from typing import Any, Callable

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


def client_for(cluster: LocalCluster, proc: Any = None, token: str | None = None) -> Client:
    urls = [proc.url] if proc is not None else cluster.urls
    return Client(urls, token if token is not None else cluster.token(), retry_for=20.0)


SPEC = {"name": "web", "image": "web:1", "command": ["python3", "-m", "http.server", "8080"], "replicas": 2}
