"""The agent end to end (process driver): liveness restarts and adoption after agent kill -9."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
import signal
import sys
import time

import pytest

from raftctl.agent.runtime import agent_driver as make_driver

from .conftest import agents_cluster, client_for, healthy, wait_until

pytestmark = pytest.mark.integration

WEB = {"name": "web", "image": "web:1", "command": [sys.executable, "-m", "http.server", "${PORT_HTTP}"],
       "replicas": 2, "ports": [{"name": "http"}],
       "health": {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2},
       "restart": {"policy": "always", "backoff": {"initial": "100ms", "max": "2s"}}}


@pytest.fixture(scope="module")
def one_agent(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "agent", agents=1, runtime="process") as c:
        yield c


def pids(c) -> dict[str, int]:
    d = make_driver("process", c.agents[0].data_dir)
    return {cid: d.status(cid).pid for cid in d.list_existing() if d.status(cid).state == "running"}


def test_killed_container_is_restarted_and_healthy_again(one_agent):
    c = one_agent
    client_for(c).request("PUT", "/v1/jobs/web", WEB)
    wait_until(lambda: len(healthy(c, "web")) == 2, timeout=30, what="2 healthy replicas")
    before = pids(c)
    victim, pid = sorted(before.items())[0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pids(c).get(victim) not in (None, pid), timeout=30, what="a new process for the replica")
    wait_until(lambda: len(healthy(c, "web")) == 2, timeout=30, what="healthy again")
    events = client_for(c).request("GET", "/v1/events")["events"]
    assert any(e["kind"] == "placement.exited" and victim in e["message"] for e in events)


def test_agent_kill_leaves_containers_running_and_the_new_agent_adopts_them(one_agent):
    c = one_agent
    wait_until(lambda: len(healthy(c, "web")) == 2, timeout=30, what="2 healthy replicas")
    before = pids(c)
    assert len(before) == 2
    agent = c.agents[0]
    c.kill(agent, signal.SIGKILL)
    time.sleep(0.5)
    assert pids(c) == before  # nothing died with the agent
    c.start_proc(agent)
    time.sleep(3)  # the new agent adopts, health-checks and converges
    assert pids(c) == before  # same pids: adopted, not restarted
    assert len(healthy(c, "web")) == 2


def test_failing_health_check_restarts_with_growing_backoff(one_agent, tmp_path):
    c = one_agent
    flag = tmp_path / "healthy"
    flag.write_text("1")
    script = tmp_path / "srv.py"
    script.write_text(
        "import http.server, os, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        ok = os.path.exists({str(flag)!r})\n"
        "        self.send_response(200 if ok else 500); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), H).serve_forever()\n")
    spec = {**WEB, "name": "flaky", "replicas": 1, "command": [sys.executable, str(script), "${PORT_HTTP}"]}
    client_for(c).request("PUT", "/v1/jobs/flaky", spec)
    wait_until(lambda: len(healthy(c, "flaky")) == 1, timeout=30, what="healthy")
    flag.unlink()  # the health endpoint starts failing: the agent restarts it, again and again
    starts: list[float] = []
    seen: set[int] = set()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and len(starts) < 4:
        for cid, pid in pids(c).items():
            if cid.startswith("flaky") and pid not in seen:
                seen.add(pid)
                starts.append(time.monotonic())
        time.sleep(0.05)
    assert len(starts) >= 3, starts
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[-1] > gaps[0], gaps  # backoff grows
    flag.write_text("1")
    wait_until(lambda: len(healthy(c, "flaky")) == 1, timeout=30, what="healthy after the fix")


def test_logs_of_a_replica_through_its_agent(one_agent):
    import json
    import subprocess

    c = one_agent
    client_for(c).request("PUT", "/v1/jobs/talker", {
        "name": "talker", "image": "t:1", "replicas": 1, "resources": {"cpu": "10m", "memory": "16Mi"},
        "command": [sys.executable, "-u", "-c", "import sys, time\nfor i in range(1000):\n"
                    "    print('line', i); print('oops', i, file=sys.stderr); time.sleep(0.05)"]})
    wait_until(lambda: len(healthy(c, "talker")) == 1, timeout=30, what="talker running")
    env = {**os.environ, "RAFTCTL_SERVER": " ".join(c.urls), "RAFTCTL_TOKEN": c.token()}

    def logs(*extra: str) -> str:
        p = subprocess.run([sys.executable, "-m", "raftctl.cli.main", "logs", "talker", *extra],
                           capture_output=True, text=True, env=env, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout
    wait_until(lambda: "line 3" in logs(), timeout=20, what="stdout lines")
    assert "oops" in logs("--stderr") and "oops" not in logs()
    machines = client_for(c).request("GET", "/v1/machines")["machines"]
    api = machines[0]["api"]
    req = urllib.request.Request(f"{api}/v1/logs/nope", headers={"Authorization": "Bearer rct_bad"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 403
    assert json.loads(exc.value.read())["error"]["code"] == "forbidden"
    pid = healthy(c, "talker")[0]["id"]
    for tail in ("abc", "-1", str(1 << 40)):  # bad input is a 400 naming the field, never a 500
        req = urllib.request.Request(f"{api}/v1/logs/{pid}?tail={tail}",
                                     headers={"Authorization": f"Bearer {c.token()}"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code == 400 and json.loads(exc.value.read())["error"]["field"] == "tail"
