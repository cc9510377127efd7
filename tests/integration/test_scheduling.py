"""Scheduler and failover end to end: 3 replicas + 4 sim agents as real processes."""
from __future__ import annotations

import signal
from collections import Counter

import pytest

from .conftest import agents_cluster, client_for, healthy, wait_until

pytestmark = pytest.mark.integration


def sim_job(name: str, replicas: int, **extra) -> dict:
    return {"name": name, "image": "sim:1", "command": ["serve"], "replicas": replicas,
            "resources": {"cpu": "100m", "memory": "64Mi"}, "ports": [{"name": "http"}], **extra}


@pytest.fixture(scope="module")
def sim_cluster(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "sim", agents=4, runtime="sim", zones=2) as c:
        yield c


def test_hard_spread_over_two_zones_lands_three_and_three(sim_cluster):
    c = sim_cluster
    client_for(c).request("PUT", "/v1/jobs/spread", sim_job("spread", 6, spread=[{"level": "zone", "mode": "hard"}]))
    placed = wait_until(lambda: (lambda r: r if len(r) == 6 else None)(healthy(c, "spread")), timeout=30,
                        what="6 healthy replicas")
    machines = {m["id"]: m for m in client_for(c).request("GET", "/v1/machines")["machines"]}
    zones = Counter(machines[p["machine"]]["fault_domain"]["zone"] for p in placed)
    assert zones == {"z1": 3, "z2": 3}
    eps = client_for(c).request("GET", "/v1/discovery/spread")["endpoints"]
    assert len(eps) == 6


def test_machine_loss_moves_replicas_and_unpublishes_them(sim_cluster):
    c = sim_cluster
    client_for(c).request("PUT", "/v1/jobs/lossy", sim_job("lossy", 4))
    before = wait_until(lambda: (lambda r: r if len(r) == 4 else None)(healthy(c, "lossy")), timeout=30,
                        what="4 healthy replicas")
    victim_id = Counter(p["machine"] for p in before).most_common(1)[0][0]
    victim = next(p for p in c.agents if p.id == victim_id)
    c.kill(victim, signal.SIGKILL)

    def moved():
        r = healthy(c, "lossy")
        eps = client_for(c).request("GET", "/v1/discovery/lossy")["endpoints"]
        ok = (len(r) == 4 and all(p["machine"] != victim_id for p in r)
              and len(eps) == 4 and all(e["machine"] != victim_id for e in eps))
        return r if ok else None
    wait_until(moved, timeout=30, what="replicas healthy elsewhere and out of discovery")
    machines = {m["id"]: m for m in client_for(c).request("GET", "/v1/machines")["machines"]}
    assert machines[victim_id]["state"] == "down"
    c.start_proc(victim)  # it comes back: re-registers and is up again
    wait_until(lambda: {m["id"]: m for m in client_for(c).request("GET", "/v1/machines")["machines"]}[victim_id]["status"] == "up",
               timeout=30, what="machine back up")


def test_leader_killed_while_placing_fifty_ends_with_exactly_fifty(sim_cluster):
    c = sim_cluster
    client_for(c).request("PUT", "/v1/jobs/fifty", sim_job("fifty", 50, resources={"cpu": "10m", "memory": "8Mi"}))
    leader = wait_until(c.leader, what="leader")
    c.kill(leader, signal.SIGKILL)
    wait_until(lambda: len(healthy(c, "fifty")) == 50, timeout=60, what="50 healthy replicas")
    pl = client_for(c).request("GET", "/v1/jobs/fifty/placements")["placements"]
    live = [p for p in pl if p["desired"] == "run" and p["state"] not in ("lost", "stopped")]
    assert len(live) == 50
    assert sorted(p["replica"] for p in live) == list(range(50))
    c.start_proc(leader)


def test_job_plan_shows_placements_and_writes_nothing(sim_cluster, tmp_path):
    import json
    import subprocess
    import sys

    c = sim_cluster
    spec = tmp_path / "planned.json"
    spec.write_text(json.dumps(sim_job("planned", 4)))
    env = {"RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token()}
    out = subprocess.run([sys.executable, "-m", "raftctl.cli.main", "-o", "json", "job", "plan", str(spec)],
                         capture_output=True, text=True, env={**__import__("os").environ, **env}, timeout=30)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["place"]) == 4 and data["pending"] is None and data["new_version"]
    assert all(p["machine"].startswith("m") for p in data["place"])
    jobs = client_for(c).request("GET", "/v1/jobs", query={"consistent": "1"})["jobs"]
    assert "planned" not in [j["name"] for j in jobs]
    big = tmp_path / "big.json"
    big.write_text(json.dumps(sim_job("big", 1, resources={"cpu": "64", "memory": "64Mi"})))
    out = subprocess.run([sys.executable, "-m", "raftctl.cli.main", "job", "plan", str(big)],
                         capture_output=True, text=True, env={**__import__("os").environ, **env}, timeout=30)
    assert "pending: 1 replicas unplaced" in out.stdout and "insufficient cpu" in out.stdout


def test_machine_cli_drain_by_domain_and_events(sim_cluster):
    import json
    import os
    import subprocess
    import sys

    c = sim_cluster
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token()}

    def cli(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", *args], capture_output=True, text=True,
                           env=env, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout
    ms = json.loads(cli("-o", "json", "machine", "list"))["machines"]
    rack = ms[0]["fault_domain"]["rack"]
    assert "draining" in cli("machine", "drain", "--domain", f"rack={rack}")
    wait_until(lambda: {m["id"]: m for m in json.loads(cli("-o", "json", "machine", "list"))["machines"]}
               [ms[0]["id"]]["state"] in ("draining", "drained"), what="draining state")
    cli("machine", "undrain", "--domain", f"rack={rack}")
    out = cli("events")
    assert "machine.drain" in out and "machine.undrain" in out


def test_one_process_plays_many_sim_machines(sim_cluster, tmp_path):
    import os
    import subprocess
    import sys

    c = sim_cluster
    token = client_for(c).request("POST", "/v1/tokens", {"role": "agent", "name": "hollow", "machine": "hollow-*"})["token"]
    argv = [sys.executable, "-m", "raftctl.cli.main", "agent", "--id", "hollow", "--count", "40", "--runtime", "sim",
            "--data-dir", str(tmp_path), "--cpu", "1000m", "--memory", "1Gi", "--heartbeat", "1s",
            "--fault-domain", "region=r,zone=hz", "--log-level", "warning"]
    for u in c.urls:
        argv += ["--server", u]
    proc = subprocess.Popen(argv, env={**os.environ, "RAFTCTL_AGENT_TOKEN": token}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sum(1 for m in client_for(c).request("GET", "/v1/machines")["machines"]
                               if m["id"].startswith("hollow-") and m["status"] == "up") == 40,
                   timeout=60, what="40 hollow machines up")
        client_for(c).request("PUT", "/v1/jobs/hollowjob", sim_job(
            "hollowjob", 80, constraints=[{"attr": "fault_domain.zone", "op": "==", "value": "hz"}]))
        wait_until(lambda: len(healthy(c, "hollowjob")) == 80, timeout=60, what="80 healthy on hollow machines")
    finally:
        proc.terminate()
        proc.wait(30)
