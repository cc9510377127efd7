"""Issue 12, items 1 and 2 (input side), through the real HTTP API of a 3-replica cluster: bodies that froze a
replica or killed the write path are a 400 naming the field, and afterwards every replica answers /healthz
within 1 s and a write commits within 2 s (the requests' own timeouts are the bounds)."""
from __future__ import annotations

import json
import time

import cbor2
import pytest

from .conftest import SPEC, assert_live, raw, wait_until
from tests.hostile import SELF_REFERENCE, reference_bomb

pytestmark = pytest.mark.integration


def lone_surrogate_job_cbor() -> bytes:
    """``{..SPEC, "env": {"FOO": <UTF-8 of U+D800>}}``: cbor2 will not encode a lone surrogate, so splice it."""
    doc = cbor2.dumps({**SPEC, "env": {"FOO": "\x00\x00\x00"}})
    return doc.replace(b"\x63\x00\x00\x00", b"\x63" + "\ud800".encode("utf-8", "surrogatepass"))


@pytest.fixture(scope="module")
def reader(cluster) -> str:
    status, data = raw(cluster.servers[0].url + "/v1/tokens", "POST",
                       json.dumps({"role": "reader", "name": "hostile-reader"}).encode(), cluster.token())
    assert status == 200, data
    return data["token"]


@pytest.mark.parametrize("name,ctype,body,field", [
    ("self-reference", "application/cbor", SELF_REFERENCE, "body"),
    ("reference-bomb", "application/cbor", reference_bomb(), "body"),
    ("lone-surrogate-json", "application/json",
     json.dumps({**SPEC, "env": {"FOO": "\ud800"}}).encode(), "env.FOO"),
    ("lone-surrogate-cbor", "application/cbor", lone_surrogate_job_cbor(), "env.FOO"),
    ("lone-surrogate-key", "application/json", json.dumps({**SPEC, "env": {"\udc00": "x"}}).encode(), "env"),
])
def test_hostile_plan_body_is_a_400_and_every_replica_stays_live(cluster, reader, name, ctype, body, field):
    leader = wait_until(cluster.leader, what="a leader")
    for p in [leader] + [s for s in cluster.servers if s is not leader]:
        started = time.monotonic()
        status, data = raw(p.url + "/v1/jobs/x/plan", "POST", body, reader, ctype=ctype, timeout=2.0)
        print(f"{name} -> {p.id}: {status} in {1000 * (time.monotonic() - started):.1f} ms")
        assert status == 400, data
        assert data["error"]["field"] == field, data
    assert_live(cluster, name)


def test_a_lone_surrogate_cannot_reach_the_write_path(cluster):
    """Stored, a job whose env holds "\\ud800" made cbor2.dumps raise in the proposer's flusher: every later write
    was outcome_unknown. Now the PUT is refused at the gate and writes keep committing."""
    admin = cluster.token()
    for p in cluster.servers:
        for ctype, body in (("application/json", json.dumps({**SPEC, "env": {"FOO": "\ud800"}}).encode()),
                            ("application/cbor", lone_surrogate_job_cbor())):
            status, data = raw(p.url + "/v1/jobs/web", "PUT", body, admin, ctype=ctype, timeout=5.0)
            assert status == 400 and data["error"]["field"] == "env.FOO", data
    assert_live(cluster, "surrogate-put")


# -- issue 12 item 11a: /v1/agent/stats takes only the agent's own placements --------------------------------------

def _post(url: str, path: str, token: str, doc: dict, timeout: float = 5.0) -> tuple[int, dict]:
    return raw(url + path, "POST", json.dumps(doc).encode(), token, timeout=timeout)


def test_agent_stats_only_for_its_own_placements(cluster):
    import threading

    admin = cluster.token()
    url = wait_until(cluster.leader, what="a leader").url
    machines = {"stats-a": "z1", "stats-b": "z2"}
    for m, zone in machines.items():
        status, data = _post(url, "/v1/agent/register", admin, {
            "machine": m, "address": "127.0.3.1", "fault_domain": {"region": "r", "zone": zone}, "labels": {},
            "resources": {"cpu": 4000, "memory": 4 << 30, "pids": 1000}, "ports": [30000, 30100], "runtime": "sim"})
        assert status == 200, data
    stop = threading.Event()

    def heartbeats() -> None:  # keep both machines up (TTL 3 s) while the test runs
        while not stop.is_set():
            for p in cluster.servers:
                for m in machines:
                    try:
                        _post(p.url, "/v1/agent/heartbeat", admin, {"machine": m}, timeout=1.0)
                    except Exception:
                        pass
            stop.wait(0.5)

    t = threading.Thread(target=heartbeats, daemon=True)
    t.start()
    try:
        status, data = raw(url + "/v1/jobs/stats-job", "PUT", json.dumps({
            **SPEC, "name": "stats-job", "replicas": 2, "spread": [{"level": "zone", "mode": "hard"}],
            "constraints": [{"attr": "id", "op": "in", "value": list(machines)}]}).encode(), admin)
        assert status == 200, data

        def placed() -> dict[str, str] | None:
            _, d = raw(url + "/v1/jobs/stats-job/placements", token=admin)
            by = {p["machine"]: p["id"] for p in d["placements"] if p["desired"] == "run"}
            return by if set(by) == set(machines) else None

        by_machine = wait_until(placed, what="one placement on each machine")
        tokens = {}
        for m in machines:
            status, data = _post(url, "/v1/tokens", admin, {"role": "agent", "name": f"agent-{m}", "machine": m})
            assert status == 200, data
            tokens[m] = data["token"]
        mine, theirs = by_machine["stats-a"], by_machine["stats-b"]
        follower = next(p for p in cluster.servers if p.url != url).url  # forwarded to the leader: same rules

        def stats(doc_stats: list) -> tuple[int, dict]:
            return _post(follower, "/v1/agent/stats", tokens["stats-a"], {"machine": "stats-a", "stats": doc_stats})

        assert stats([{"placement": mine, "job": "stats-job", "cpu": 0.5, "memory": 1000}]) == (200, {"accepted": 1})
        assert stats([{"placement": mine, "cpu": 0.25}]) == (200, {"accepted": 1})  # the job is the placement's
        for doc, field in [
            ([{"placement": mine, "job": "stats-job", "cpu": 0.5},
              {"placement": theirs, "job": "stats-job", "cpu": 9.0}], "stats[1].placement"),  # another machine's
            ([{"placement": "nope-00001", "job": "stats-job", "cpu": 9.0}], "stats[0].placement"),  # unknown
            ([{"placement": mine, "job": "other-job", "cpu": 9.0}], "stats[0].job"),  # steering another job
            ([{"placement": ["x"], "cpu": 1.0}], "stats[0].placement"),
            ([{"placement": mine, "cpu": -1.0}], "stats[0]"),
        ]:
            status, data = stats(doc)
            assert status in (400, 403) and data["error"]["field"] == field, (doc, data)
        status, data = _post(follower, "/v1/agent/stats", tokens["stats-a"],
                             {"machine": "stats-a", "stats": [{"placement": mine, "cpu": 0.1}] * 5001})
        assert status == 400 and data["error"]["field"] == "stats", data
        # another machine's agent token cannot report for stats-a at all
        status, data = _post(follower, "/v1/agent/stats", tokens["stats-b"],
                             {"machine": "stats-a", "stats": [{"placement": mine, "cpu": 0.1}]})
        assert status == 403 and data["error"]["field"] == "machine", data
    finally:
        stop.set()
        t.join(timeout=5)
