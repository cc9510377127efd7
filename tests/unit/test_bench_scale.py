"""bench/scale.py's own arithmetic: reading the replicas' /metrics and drawing the cost curve."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import scale  # noqa: E402

METRICS = """# HELP raftctl_machines_by_state Machines by state
# TYPE raftctl_machines_by_state gauge
raftctl_machines_by_state{state="active"} 997.0
raftctl_machines_by_state{state="down"} 3.0
raftctl_placements_by_state{health="healthy",state="running"} 9970.0
raftctl_placements_by_state{health="unknown",state="lost"} 30.0
raftctl_api_requests_total{code="200",route="POST /v1/agent/heartbeat"} 5793.0
raftctl_api_requests_total{code="503",route="POST /v1/agent/heartbeat"} 7.0
raftctl_api_requests_total{code="200",route="GET /v1/agent/assignments/{machine}"} 1.5e+04
raftctl_jobs 21.0
"""


def parsed() -> dict[tuple[str, str], float]:
    return {(m.group(1), m.group(2) or ""): float(m.group(3)) for m in scale.METRIC_RE.finditer(METRICS)}


def test_counts_sum_the_series_whose_labels_match() -> None:
    m = parsed()
    assert scale.counts(m, "raftctl_machines_by_state", state="active") == 997
    assert scale.counts(m, "raftctl_machines_by_state", state="down") == 3
    assert scale.counts(m, "raftctl_placements_by_state") == 10000
    assert scale.counts(m, "raftctl_placements_by_state", health="healthy") == 9970
    # every code of one route (a 503 is a request the leader handled too), and exponent notation
    assert scale.counts(m, "raftctl_api_requests_total", route="POST /v1/agent/heartbeat") == 5800
    assert scale.counts(m, "raftctl_api_requests_total") == 5800 + 15000
    assert scale.counts(m, "raftctl_jobs") == 21
    assert scale.counts(m, "raftctl_machines_by_state", state="draining") == 0


def row(n: int, cores: float, ceiling: float | None) -> dict[str, Any]:
    r: dict[str, Any] = {"machines": n, "steady": {"leader_cores": cores, "agents_cores": cores / 3},
                         "place": {"leader_cores": cores / 2, "placements_per_s": 100.0 * n / 1000}}
    if ceiling is not None:
        r["heartbeat_ceiling"] = {"heartbeats_per_s": ceiling, "leader_cpu_us_per_heartbeat": 150.0}
    return r


def test_the_cost_curve_has_a_point_per_size_and_series(tmp_path: Any) -> None:
    path = str(tmp_path / "c.svg")
    scale.svg([row(3000, 0.9, 1500.0), row(1000, 0.3, None)], path)
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 6
    npoints = [len(pl.get("points", "").split()) for pl in lines]
    assert npoints == [2, 2, 2, 2, 1, 1]   # the 1,000 row has no ceiling: those two series skip it
    xs = [float(p.split(",")[0]) for p in lines[0].get("points", "").split()]
    assert xs == sorted(xs)             # drawn in machine order whatever the row order
    labels = [t.text for t in root.findall(f"{ns}text")]
    assert "1,000" in labels and "3,000" in labels


def lag_text(lags: list[float]) -> dict[tuple[str, str], float]:
    """A replica's loop-lag families as /metrics writes them, after ``lags`` (the replica's own LoopLag)."""
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client import generate_latest

    from raftctl.node.looplag import LoopLag
    lag = LoopLag()
    for x in lags:
        lag.observe(x)

    class One(Collector):
        def collect(self) -> list[Any]:
            h = HistogramMetricFamily("raftctl_event_loop_lag_seconds", "lag")
            h.add_metric([], lag.cumulative(), lag.sum)
            g = GaugeMetricFamily("raftctl_event_loop_lag_max_seconds", "max")
            g.add_metric([], lag.worst)
            return [h, g]
    registry = CollectorRegistry()
    registry.register(One())
    text = generate_latest(registry).decode()
    return {(m.group(1), m.group(2) or ""): float(m.group(3)) for m in scale.METRIC_RE.finditer(text)}


def test_the_loop_lag_between_two_scrapes() -> None:
    before = [0.001] * 50
    during = [0.002] * 90 + [0.3] * 8 + [1.5, 6.0]
    got = scale.loop_lag(lag_text(before), lag_text(before + during))
    assert got == {"wakes": 100, "p99_within_s": "2.5", "over_1s": 2, "max_since_start_s": 6.0}
    quiet = scale.loop_lag(lag_text(before), lag_text(before + [0.002] * 100))
    assert quiet["p99_within_s"] == "0.005" and quiet["over_1s"] == 0
    assert scale.loop_lag(lag_text(before), lag_text(before))["p99_within_s"] is None


def test_an_agent_process_in_a_session_of_its_own_gets_its_autogroup_lowered() -> None:
    """--agent-nice must lower the agents below the replicas: with autogroups a process started in a session of
    its own (as the bed starts its agents) is weighed as a group of its own, which ``nice -n`` alone leaves at 0."""
    if not os.path.exists("/proc/self/autogroup"):
        pytest.skip("this kernel has no scheduling autogroups: nice -n alone weighs across processes")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        before = open(f"/proc/{proc.pid}/autogroup").read()
        assert scale.lower_autogroup(proc.pid, 19)
        after = open(f"/proc/{proc.pid}/autogroup").read()
    finally:
        proc.kill()
        proc.wait()
    assert before.split("nice")[0] == after.split("nice")[0]         # the same group, its own
    assert after.split()[-1] == "19", after
    assert not scale.lower_autogroup(proc.pid, 19)                    # gone: said so, no exception
