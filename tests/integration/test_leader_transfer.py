"""A graceful stop (SIGTERM) of the leader hands leadership over first (Raft §3.10, TimeoutNow): a client writing
in a loop sees no failed request and only a short wait, and the new leader is the most up-to-date follower."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from .conftest import SPEC, client_for, wait_until

pytestmark = pytest.mark.integration


def log_of(p) -> str:  # type: ignore[no-untyped-def]
    with open(os.path.join(p.data_dir, "server.log"), errors="replace") as f:
        return f.read()


def transfer_lines(p, since: int) -> list[str]:  # type: ignore[no-untyped-def]
    return re.findall(r"transferring leadership to (\S+)|leadership transferred to (\S+)", log_of(p)[since:])


def new_leader(cluster, old):  # type: ignore[no-untyped-def]
    return wait_until(lambda: (lambda ld: ld if ld is not None and ld is not old else None)(cluster.leader()),
                      timeout=20, what="a new leader")


def restart(cluster, p) -> None:  # type: ignore[no-untyped-def]
    cluster.start_proc(p)
    cluster.wait_ready(60, procs=[p])


def test_sigterm_of_the_leader_under_writes_fails_no_request(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    followers = [p for p in cluster.servers if p is not leader]
    c = client_for(cluster)
    c.request("PUT", "/v1/jobs/tr", {**SPEC, "name": "tr"})
    writer_client = client_for(cluster)
    writer_client.servers = [p.url for p in followers] + [leader.url]  # as a CLI given every replica
    log: list[tuple[float, float, Exception | None]] = []
    done = threading.Event()

    def writer() -> None:
        n = 0
        while not done.is_set():
            start = time.monotonic()
            try:
                writer_client.request("POST", "/v1/jobs/tr/scale", {"replicas": n % 5, "reason": f"w{n}"})
                err = None
            except Exception as exc:  # noqa: BLE001 (every failure is the finding)
                err = exc
            log.append((start, time.monotonic(), err))
            n += 1

    since = len(log_of(leader))
    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        wait_until(lambda: len(log) >= 20, timeout=30, interval=0.05, what="20 writes before the stop")
        t0 = time.monotonic()
        leader.popen.send_signal(signal.SIGTERM)
        leader.popen.wait(timeout=30)
        t_exit = time.monotonic()
        wait_until(lambda: sum(1 for s, _, _ in log if s > t_exit) >= 10, timeout=30, interval=0.05,
                   what="10 writes after the old leader exited")
    finally:
        done.set()
        th.join(timeout=60)
    assert leader.popen.returncode == 0, f"the leader exited with {leader.popen.returncode} on SIGTERM"
    failed = [err for _, _, err in log if err is not None]
    assert not failed, f"{len(failed)} write(s) failed across the graceful stop: {failed[:3]}"
    hit = [(s, e) for s, e, _ in log if e >= t0 and s <= t_exit]
    wait_s = max(e - max(s, t0) for s, e in hit)
    print(f"\nleader SIGTERM: {len(hit)} write(s) overlapped the stop, the longest waited {wait_s * 1000:.0f} ms from "
          f"the signal; the old leader exited after {(t_exit - t0) * 1000:.0f} ms; {len(log)} writes, none failed")
    assert wait_s < 2.0, f"a write waited {wait_s:.2f} s across the graceful stop"

    lines = transfer_lines(leader, since)
    assert lines and lines[-1][1], f"the old leader did not report a completed transfer: {lines}"
    chosen = lines[0][0]
    assert new_leader(cluster, leader).raft == chosen == lines[-1][1]
    restart(cluster, leader)


def test_the_most_up_to_date_follower_becomes_leader(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    slow, fast = sorted((p for p in cluster.servers if p is not leader), key=lambda p: p.raft, reverse=True)
    # ties go to the smaller address: make the larger one the only up-to-date follower, so a pick by name fails
    since = len(log_of(leader))
    c = client_for(cluster, leader)
    c.request("PUT", "/v1/jobs/tr2", {**SPEC, "name": "tr2"})
    slow.popen.send_signal(signal.SIGSTOP)
    try:
        for i in range(5):  # committed by the leader and `fast`; `slow` lags
            c.request("POST", "/v1/jobs/tr2/scale", {"replicas": i})
        match = wait_until(lambda: (lambda st: st if {m["raft"]: m.get("match_index", 0) for m in st["members"]}
                                    [fast.raft] == st["commit_index"] else None)(cluster.get(leader, "/v1/status")),
                           what="the fast follower caught up")
        lag = {m["raft"]: m.get("match_index") for m in match["members"]}
        assert lag[slow.raft] < lag[fast.raft], lag
        leader.popen.send_signal(signal.SIGTERM)
        # resume the slow one only once the leader has picked its target (or it could catch up first)
        wait_until(lambda: transfer_lines(leader, since), timeout=20, interval=0.01, what="the transfer to start")
    finally:
        slow.popen.send_signal(signal.SIGCONT)
    leader.popen.wait(timeout=30)
    lines = transfer_lines(leader, since)
    assert lines[0][0] == fast.raft, f"match indexes {lag}, transferred to {lines}"
    assert new_leader(cluster, leader) is fast
    assert client_for(cluster).request("POST", "/v1/jobs/tr2/scale", {"replicas": 9})["replicas"] == 9
    restart(cluster, leader)


def test_a_follower_just_stops(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    follower = next(p for p in cluster.servers if p is not leader)
    since = len(log_of(follower))
    follower.popen.send_signal(signal.SIGTERM)
    follower.popen.wait(timeout=30)
    assert follower.popen.returncode == 0
    assert not transfer_lines(follower, since)
    assert wait_until(cluster.leader, what="a leader") is leader  # no election
    restart(cluster, follower)
