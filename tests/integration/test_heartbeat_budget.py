"""The leader's heartbeat budget end to end (issue 15): a real server with ``--max-heartbeats-per-second 1`` and
a real (sim) agent. As machines register the interval told grows, the agent follows it, and its machine stays
up while silent longer than the base TTL; as machines go down it shrinks and the agent follows it back."""
from __future__ import annotations

import os
import re
import threading

import pytest

from raftctl.devcluster import LocalCluster
from raftctl.errors import RaftctlError

from .conftest import client_for, wait_until

pytestmark = pytest.mark.integration

EXTRAS = ["x1", "x2", "x3", "x4"]        # registered by the test, heartbeated by it while it wants them up


def registration(m: str, i: int) -> dict:
    return {"machine": m, "address": f"127.0.2.{i + 1}", "fault_domain": {"region": "r", "zone": "z1"},
            "labels": {}, "resources": {"cpu": 1000, "memory": 1 << 30, "pids": 100}, "ports": [30000, 30100],
            "runtime": "sim"}


def followed(c: LocalCluster) -> str | None:
    """The interval the agent says it follows now (its last "heartbeat interval A -> B" line), e.g. "5s"."""
    with open(os.path.join(c.agents[0].data_dir, "agent.log")) as f:
        lines = re.findall(r"heartbeat interval \S+ -> (\S+) ", f.read())
    return lines[-1] if lines else None


def test_the_agent_follows_the_interval_the_fleet_asks_for(tmp_path_factory):
    c = LocalCluster(str(tmp_path_factory.mktemp("hbbudget")), replicas=1, agents=1, runtime="sim")
    c.servers[0].extra_args = ["--max-heartbeats-per-second", "1"]   # 1 machine: 1 s; 5 machines: 5 s, TTL 15 s
    c.start(timeout=60)
    stop_beating: dict[str, threading.Event] = {m: threading.Event() for m in EXTRAS}
    answers: list[dict] = []
    try:
        c.wait_agents(30)
        api = client_for(c)
        lead = c.servers[0]

        def beat(m: str) -> None:          # plays x<i>'s agent, every second, until told to stop
            hc = client_for(c)
            hc.retry_for = 1
            while not stop_beating[m].is_set():
                try:
                    answers.append(hc.request("POST", "/v1/agent/heartbeat", {"machine": m}))
                except Exception:
                    pass
                stop_beating[m].wait(1.0)

        for i, m in enumerate(EXTRAS):
            api.request("POST", "/v1/agent/register", registration(m, i))
            threading.Thread(target=beat, args=(m,), daemon=True).start()
        # the registrations may be seen one at a time (2 s, 3 s, ...) or together: the agent ends at 5 s
        wait_until(lambda: followed(c) == "5s", timeout=30,
                   what="the agent to follow the 5 s interval of 5 machines at 1 heartbeat/s")
        wait_until(lambda: any(a.get("interval_s") == 5.0 and a.get("ttl_s") == 15.0 for a in answers[:]),
                   timeout=10, what="the test's own heartbeats to be told 5 s and a 15 s TTL")

        def m1_silent_past_the_base_ttl() -> float | None:
            fo = c.get(lead, "/v1/status")["leadership"]["failover"]
            age = fo["heartbeat_age_s"]["m1"]
            return age if age > 3.5 else None
        wait_until(m1_silent_past_the_base_ttl, timeout=30, interval=0.2,
                   what="m1 silent longer than the 3 s base TTL (beating every 5 s)")
        machines = {m["id"]: m["status"] for m in api.request("GET", "/v1/machines")["machines"]}
        assert machines["m1"] == "up", machines

        # two of the five stop: declared down after the 15 s they were told; 3 up machines want 3 s (past the
        # hysteresis band of 5 s), and the agent follows it back down
        for m in EXTRAS[2:]:
            stop_beating[m].set()
        wait_until(lambda: followed(c) == "3s", timeout=60,
                   what="the agent to follow the 3 s interval of 3 up machines")
        machines = {m["id"]: m["status"] for m in api.request("GET", "/v1/machines")["machines"]}
        assert machines == {"m1": "up", "x1": "up", "x2": "up", "x3": "down", "x4": "down"}, machines
        # the list filtered by derived state (what bench/scale.py polls during its failover at 10,000 machines)
        down = api.request("GET", "/v1/machines?state=down")["machines"]
        assert [(m["id"], m["state"], m["status"]) for m in down] == [("x3", "down", "down"), ("x4", "down", "down")]
        assert [m["id"] for m in api.request("GET", "/v1/machines?state=active,drained")["machines"]] == [
            "m1", "x1", "x2"]
        with pytest.raises(RaftctlError) as bad:
            api.request("GET", "/v1/machines?state=down,gone")
        assert (bad.value.http_status, bad.value.code, bad.value.field) == (400, "invalid", "state")
        assert "'gone'" in bad.value.message
        fo = c.get(lead, "/v1/status")["leadership"]["failover"]
        assert (fo["interval_s"], fo["ttl_s"], fo["max_heartbeats_per_s"]) == (3.0, 9.0, 1)
    finally:
        for e in stop_beating.values():
            e.set()
        c.stop()
