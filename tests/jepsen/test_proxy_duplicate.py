"""A write without X-Request-Id is applied at most once, even when the follower that took it
gives up proxying to a paused leader (timeout, or the leader moved) and proposes it itself
(found by jepsen-style with --anonymous-writes: the paused leader applied its proxied copy on
resume, after a later acknowledged write, which was lost)."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from raftctl.devcluster import LocalCluster

pytestmark = pytest.mark.integration


def _req(c: LocalCluster, url: str, method: str, path: str, body: Any = None, request_id: bool = True,
         ) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {c.token()}", "Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = uuid.uuid4().hex
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _log_tail(data_dir: str, lines: int = 30) -> str:
    """The end of a replica's log, for an assertion's message (the cluster's directory is gone afterwards)."""
    try:
        with open(os.path.join(data_dir, "server.log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _spec(gen: str) -> dict[str, Any]:
    return {"name": "dup", "image": "x:1", "command": ["sleep", "1"], "replicas": 0, "env": {"GEN": gen}}


def test_a_write_proxied_to_a_paused_leader_is_not_applied_again_when_it_resumes(tmp_path: Any) -> None:
    c = LocalCluster(str(tmp_path / "c"), replicas=3)
    c.start(timeout=60)
    try:
        leader = c.leader()
        assert leader is not None
        follower = next(p for p in c.servers if p is not leader)
        assert _req(c, follower.url, "PUT", "/v1/jobs/dup", _spec("A"))[0] == 200
        leader.popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            # no X-Request-Id: the follower proxies to the paused leader, times out, proposes it itself
            started = time.monotonic()
            status, answer = _req(c, follower.url, "PUT", "/v1/jobs/dup", _spec("B"), request_id=False)
            assert status == 200, (f"{status} after {time.monotonic() - started:.1f} s: {answer}; the follower's "
                                   f"log: {_log_tail(follower.data_dir)}")
            assert _req(c, follower.url, "PUT", "/v1/jobs/dup", _spec("C"))[0] == 200
        finally:
            leader.popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        time.sleep(5)  # the resumed leader handles the proxied copy it was holding
        _, versions = _req(c, follower.url, "GET", "/v1/jobs/dup/versions?consistent=1")
        assert [v["spec"]["env"]["GEN"] for v in versions["versions"]] == ["A", "B", "C"]
        _, job = _req(c, follower.url, "GET", "/v1/jobs/dup?consistent=1")
        assert job["spec"]["env"]["GEN"] == "C"  # the acknowledged last write is not lost
    finally:
        c.stop()
