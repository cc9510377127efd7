"""A dry-run plan never stalls its replica (issue 12, item 3): a reader's worst-case plan (the most replicas a
spec allows, hundreds of machines, 32 regex constraints on 4 KB labels) is computed off the event loop and
answers within its bound (PLAN_TIMEOUT_S, else a 503 plan_timeout), while /healthz keeps answering."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from raftctl.node.scheduling import PLAN_TIMEOUT_S
from raftctl.statemachine.spec import INTEGERS, MAX_ITEMS

from .conftest import raw

pytestmark = pytest.mark.integration

MACHINES = 600
LABEL = 4000


def test_a_worst_case_plan_leaves_healthz_answering(cluster):
    url, token = cluster.urls[0], cluster.token()

    def register(i: int) -> int:
        body = {"machine": f"m{i:04d}", "address": "127.0.0.1", "runtime": "sim", "ports": [20000, 30000],
                "fault_domain": {"region": "r", "zone": f"z{i % 3}", "rack": f"k{i % 50}"},
                "labels": {"blob": "a" * LABEL + str(i)},
                "resources": {"cpu": 64000, "memory": 1 << 40, "pids": 1 << 20}}
        return raw(url + "/v1/agent/register", "POST", json.dumps(body).encode(), token, timeout=30)[0]
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(register, range(MACHINES))) == {200}

    spec = {"name": "huge", "image": "sha256:" + "a" * 64, "command": ["x"],
            "replicas": INTEGERS["replicas"][1], "resources": {"cpu": "1m", "memory": "4Mi", "pids": 1},
            "ports": [{"name": "p"}], "spread": [{"level": "zone", "mode": "soft"}, {"level": "rack", "mode": "soft"}],
            "constraints": [{"attr": "labels.blob", "op": "regex", "value": "(.|.|.|.|.|.|.|.|.)*" + "a" * (k % 5)}
                            for k in range(MAX_ITEMS["constraints"])]}
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            status, _ = raw(url + "/healthz", timeout=30)
            latencies.append(time.perf_counter() - t)
            assert status == 200
            time.sleep(0.02)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        t = time.perf_counter()
        status, body = raw(url + "/v1/jobs/huge/plan", "POST", json.dumps(spec).encode(), token, timeout=120)
        took = time.perf_counter() - t
    finally:
        done.set()
        prober.join()
    latencies.sort()
    print(f"plan: HTTP {status} in {took:.2f}s; /healthz during it: n={len(latencies)} "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert status == 200 and len(body["place"]) == spec["replicas"] or \
        status == 503 and body["error"]["code"] == "plan_timeout", (status, str(body)[:300])
    assert took < PLAN_TIMEOUT_S + 3
    assert len(latencies) >= 5
    assert latencies[-1] < 1.0          # the liveness bound; on the loop the plan held it for seconds
