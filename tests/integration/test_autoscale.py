"""Autoscaling end to end: CPU load inside replicas and a pushed custom metric move the replica count."""
from __future__ import annotations

import sys
import time

import pytest

from .conftest import agents_cluster, client_for, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "as", agents=2, runtime="process") as cl:
        yield cl


def replicas(c, job: str) -> int:
    return client_for(c).request("GET", f"/v1/jobs/{job}")["replicas"]


def test_cpu_load_scales_up_and_idle_scales_back_down(c, tmp_path):
    flag = tmp_path / "burn"
    flag.write_text("1")
    burner = tmp_path / "burn.py"
    burner.write_text(
        "import os, time\n"
        f"while True:\n    if os.path.exists({str(flag)!r}):\n        x = sum(range(10000))\n"
        "    else:\n        time.sleep(0.2)\n")
    api = client_for(c)
    api.request("PUT", "/v1/jobs/burn", {
        "name": "burn", "image": "b:1", "command": [sys.executable, str(burner)], "replicas": 1,
        "resources": {"cpu": "200m", "memory": "32Mi"},
        "autoscale": {"min": 1, "max": 3, "metric": "cpu", "target": 0.5, "cooldown": "2s", "stabilization": "4s"}})
    t0 = time.monotonic()
    wait_until(lambda: replicas(c, "burn") == 3, timeout=30, what="scaled up to max")
    assert time.monotonic() - t0 < 30
    events = [e["message"] for e in api.request("GET", "/v1/events")["events"] if e["kind"] == "job.scale"]
    assert any("cpu" in m and "> target 0.5" in m for m in events), events
    flag.unlink()
    wait_until(lambda: replicas(c, "burn") == 1, timeout=40, what="scaled back down to min")
    events = [e["message"] for e in api.request("GET", "/v1/events")["events"] if e["kind"] == "job.scale"]
    assert any("< target 0.5" in m for m in events), events


def test_pushed_custom_metric_scales(c):
    api = client_for(c)
    api.request("PUT", "/v1/jobs/rps", {
        "name": "rps", "image": "r:1", "command": [sys.executable, "-c", "import time; time.sleep(3600)"],
        "replicas": 2, "resources": {"cpu": "10m", "memory": "16Mi"},
        "autoscale": {"min": 2, "max": 6, "metric": "requests_per_second", "target": 100, "cooldown": "1s",
                      "stabilization": "3s"}})

    def push(v: float) -> bool:
        api.request("POST", "/v1/metrics/rps", {"metric": "requests_per_second", "value": v})
        return True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and replicas(c, "rps") < 4:
        push(200)  # twice the target per replica: 2 -> 4
        time.sleep(0.3)
    assert replicas(c, "rps") == 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and replicas(c, "rps") > 2:
        push(10)
        time.sleep(0.3)
    assert replicas(c, "rps") == 2
    with pytest.raises(Exception) as exc:
        api.request("POST", "/v1/metrics/rps", {"metric": "cpu", "value": 1})
    assert "custom metric" in str(exc.value)
