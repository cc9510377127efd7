"""A Raft port under hostile traffic from a caller without the cluster secret (raftctl/node/raft/frames.py), on a
real 3-replica cluster: while it streams a 2 GiB frame at the leader, floods every replica with frames that do not
decrypt or holds hundreds of idle connections on every Raft port, the same replica keeps leading, every replica
answers /healthz within 1 s and a write through each commits within 2 s; a restarted follower rejoins through
the held ports. Before frames.py, 52 MiB streamed at the leader for 20 s made every write answer 503 and another
replica take over."""
from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.request
from typing import Callable

import pytest

from .conftest import assert_live, wait_until

pytestmark = pytest.mark.integration


def raft_addr(p) -> tuple[str, int]:
    host, port = p.raft.rsplit(":", 1)
    return host, int(port)


def while_running(attack: Callable[[threading.Event], None], check: Callable[[], None]) -> None:
    """Run ``attack`` on a thread until ``check`` has run; the attack's own errors fail the test."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            attack(stop)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        time.sleep(1.0)   # the attack is under way
        check()
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors


def test_a_stream_announcing_a_2_gib_frame_is_cut_off_and_the_leader_keeps_leading(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    streamed: list[int] = []

    def stream(stop: threading.Event) -> None:
        # connect again whenever the port closes, and stream again
        chunk = b"A" * (1 << 20)
        while not stop.is_set():
            sent = 0
            with socket.create_connection(raft_addr(leader), timeout=2) as s:
                try:
                    s.sendall(struct.pack("i", 0x7FFFFFFF))
                    while not stop.is_set():
                        s.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
            streamed.append(sent)

    while_running(stream, lambda: assert_live(cluster, "raft-stream"))
    print(f"{len(streamed)} connections, at most {max(streamed) >> 20} MiB each before the port closed")
    assert streamed and max(streamed) < 64 << 20
    assert cluster.leader() is leader
    assert metric(cluster, leader, 'raftctl_raft_port_dropped_total{reason="frame_too_large"}') >= len(streamed)


def test_frames_that_do_not_decrypt_at_full_speed_change_nothing(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    junk = b"\x00" * 4000
    sent = [0]

    def flood(stop: threading.Event) -> None:
        while not stop.is_set():
            for p in cluster.servers:
                try:
                    with socket.create_connection(raft_addr(p), timeout=2) as s:
                        s.sendall((struct.pack("i", len(junk)) + junk) * 4)
                        sent[0] += 1
                except OSError:
                    pass

    while_running(flood, lambda: assert_live(cluster, "raft-junk"))
    print(f"{sent[0]} connections of junk frames")
    assert sent[0] > 100
    dropped = metric(cluster, leader, 'raftctl_raft_port_dropped_total{reason="undecryptable"}')
    print(f"the leader counted {dropped} undecryptable")
    assert dropped > 0
    assert cluster.leader() is leader


def test_idle_connections_on_every_raft_port_do_not_keep_a_restarted_follower_out(cluster):
    leader = wait_until(cluster.leader, what="a leader")
    follower = next(p for p in cluster.servers if p is not leader)
    held: list[socket.socket] = []
    first: list[socket.socket] = []   # the leader's first 200
    try:
        for p in cluster.servers:
            for _ in range(200):
                held.append(socket.create_connection(raft_addr(p), timeout=5))
                if p is leader:
                    first.append(held[-1])
        cluster.kill(follower)
        cluster.start_proc(follower)
        cluster.wait_ready(30, [follower])
        for _ in range(3):   # keep opening idle ones while it rejoins
            for p in cluster.servers:
                held.append(socket.create_connection(raft_addr(p), timeout=5))
        # a write through the restarted follower commits only once it is connected to the leader and applied it
        wait_until(lambda: _writes_everywhere(cluster), timeout=30, what="writes through every replica")
        assert_live(cluster, "raft-idle")
        assert cluster.leader() is leader
        dropped = 0
        for s in first:   # the leader's oldest idle connections were dropped as newer ones came
            s.settimeout(0.01)
            try:
                dropped += s.recv(1) == b""
            except ConnectionResetError:
                dropped += 1
            except socket.timeout:
                pass
        print(f"{len(held)} idle connections held; {dropped} of the leader's first 200 closed by it")
        assert dropped >= 200 - 64
    finally:
        for s in held:
            s.close()


def metric(cluster, p, name: str) -> float:
    req = urllib.request.Request(p.url + "/metrics", headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{name} not in {p.id}'s /metrics")


def _writes_everywhere(cluster) -> bool:
    try:
        assert_live(cluster, "raft-rejoin")
    except AssertionError:
        return False
    return True
