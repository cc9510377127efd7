"""Consistent reads never return stale data from a deposed or isolated leader."""
from __future__ import annotations

import signal
import time

import pytest

from raftctl.client import ApiError
from raftctl.errors import Unavailable

from .conftest import SPEC, client_for, wait_until

pytestmark = pytest.mark.integration


def test_leader_cut_off_from_followers_refuses_consistent_reads(cluster):
    c = client_for(cluster)
    c.request("PUT", "/v1/jobs/iso", {**SPEC, "name": "iso"})
    leader = wait_until(cluster.leader, what="leader")
    others = [p for p in cluster.servers if p is not leader]
    for p in others:
        p.popen.send_signal(signal.SIGSTOP)
    try:
        solo = client_for(cluster, leader)
        solo.retry_for = 0.5
        # a plain read answers from local state and says so; a consistent one cannot pass the barrier
        assert solo.request("GET", "/v1/jobs/iso")["name"] == "iso"
        t0 = time.monotonic()
        with pytest.raises((ApiError, Unavailable)):
            solo.request("GET", "/v1/jobs/iso", query={"consistent": "1"}, timeout=15)
        assert time.monotonic() - t0 < 15
    finally:
        for p in others:
            p.popen.send_signal(signal.SIGCONT)
    wait_until(cluster.leader, what="leader after resume")


def test_paused_old_leader_never_serves_the_old_value_after_resume(cluster):
    c = client_for(cluster)
    c.request("PUT", "/v1/jobs/reg", {**SPEC, "name": "reg", "replicas": 1})
    old = wait_until(cluster.leader, what="leader")
    old.popen.send_signal(signal.SIGSTOP)
    try:
        new = wait_until(lambda: (lambda l: l if l is not None and l is not old else None)(cluster.leader()),
                         timeout=20, what="a new leader")
        client_for(cluster, new).request("POST", "/v1/jobs/reg/scale", {"replicas": 9})
    finally:
        old.popen.send_signal(signal.SIGCONT)
    # the old leader still believes it leads for a moment: a consistent read must either
    # fail or see the new value, never the old one
    stale = client_for(cluster, old)
    stale.retry_for = 0.2
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            seen.append(stale.request("GET", "/v1/jobs/reg", query={"consistent": "1"}, timeout=5)["replicas"])
        except (ApiError, Unavailable):
            seen.append("error")
    assert 1 not in seen, seen
    assert 9 in seen
