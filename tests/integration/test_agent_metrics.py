"""The agent's GET /metrics (Prometheus text, parsed with prometheus-client): a crashing container's
restarts and exits are counted, health checks land in the latency histogram, running containers report
their CPU and memory, the disk pressure check's figures show, and the agent says it runs on uvloop. 3 replicas and one agent with the process driver, as real processes."""
from __future__ import annotations

import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


from .conftest import agents_cluster, client_for, wait_until
from .promlint import lint

pytestmark = pytest.mark.integration

CRASHY = {"name": "crashy", "image": "crashy:1", "replicas": 1,
          "command": [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"],
          "restart": {"policy": "always", "backoff": {"initial": "100ms", "max": "200ms"}}}
WEB = {"name": "web", "image": "web:1", "command": [sys.executable, "-m", "http.server", "${PORT_HTTP}"],
       "replicas": 1, "ports": [{"name": "http"}],
       "health": {"type": "http", "port": "http", "interval": "200ms", "timeout": "500ms", "failures": 2}}


@pytest.fixture(scope="module")
def metrics_agent(tmp_path_factory):
    with agents_cluster(tmp_path_factory, "agentmetrics", agents=1, runtime="process") as c:
        yield c


def scrape(url: str, token: str | None) -> dict[tuple[str, tuple], float]:
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_agent_metrics_count_restarts_health_checks_and_usage(metrics_agent):
    c = metrics_agent
    client = client_for(c)
    client.request("PUT", "/v1/jobs/crashy", CRASHY)
    client.request("PUT", "/v1/jobs/web", WEB)
    agent_url = wait_until(lambda: client.request("GET", "/v1/machines")["machines"][0].get("api"), what="agent api")

    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(agent_url, None)
    assert err.value.code == 401

    def restarted_twice():
        m = scrape(agent_url, c.token())
        return m if m.get(("raftctl_agent_container_restarts_total", (("job", "crashy"),)), 0) >= 2 else None
    m = wait_until(restarted_twice, timeout=60, what="two restarts of crashy counted")
    assert m[("raftctl_agent_container_exits_total", (("job", "crashy"),))] >= 2
    assert m.get(("raftctl_agent_oom_kills_total", (("job", "crashy"),)), 0) == 0
    crashy = next(p for p in client.request("GET", "/v1/jobs/crashy/placements")["placements"]
                  if p["desired"] == "run")
    assert m[("raftctl_agent_placement_restarts_total", (("job", "crashy"), ("placement", crashy["id"])))] >= 2

    web_id = wait_until(lambda: next((p["id"] for p in client.request("GET", "/v1/jobs/web/placements")["placements"]
                                      if p["desired"] == "run" and p["state"] == "running"), None), what="web running")
    labels = (("job", "web"), ("placement", web_id))

    def web_measured():  # the figures of the agent's last stats pass (every 2 s)
        m = scrape(agent_url, c.token())
        checks = m.get(("raftctl_agent_health_check_seconds_count", (("result", "ok"), ("type", "http"))), 0)
        rss = m.get(("raftctl_agent_container_memory_bytes", labels), 0)
        return m if rss > 1 << 20 and checks >= 3 else None   # a python http.server's RSS is several MiB
    m = wait_until(web_measured, timeout=60, what="web's memory and health checks on /metrics")
    assert m[("raftctl_agent_container_cpu_seconds_total", labels)] > 0
    assert m[("raftctl_agent_containers", (("state", "running"),))] >= 1
    assert m[("raftctl_agent_event_loop_info", (("loop", "uvloop"),))] == 1   # `raftctl agent` runs on uvloop
    assert m[("raftctl_agent_health_check_seconds_sum", (("result", "ok"), ("type", "http")))] > 0
    # the disk pressure check (diskguard.py) ran at the agent's start: the data dir's filesystem as it saw it
    assert 0 < m[("raftctl_agent_disk_free_bytes", ())] <= m[("raftctl_agent_disk_total_bytes", ())]


def test_every_agent_family_passes_prometheus_naming_rules(metrics_agent):
    c = metrics_agent
    client = client_for(c)
    client.request("PUT", "/v1/jobs/crashy", CRASHY)   # a restarting placement: every family has samples
    client.request("PUT", "/v1/jobs/web", WEB)
    agent_url = wait_until(lambda: client.request("GET", "/v1/machines")["machines"][0].get("api"), what="agent api")

    def body() -> str | None:
        req = urllib.request.Request(agent_url + "/metrics", headers={"Authorization": f"Bearer {c.token()}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        wanted = ("raftctl_agent_container_restarts_total{", "raftctl_agent_container_memory_bytes{",
                  "raftctl_agent_health_check_seconds_bucket{")
        return text if all(w in text for w in wanted) else None
    text = wait_until(body, timeout=60, what="every agent family with samples")
    assert lint(text) == []
    assert "_restart_count" not in text

