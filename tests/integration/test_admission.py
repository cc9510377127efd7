"""A flood of connections cannot take the descriptors a replica's Raft log needs (raftctl/node/admission.py).

At 10,000 simulated machines every replica ran out of its 20,000 descriptors: accept() failed with EMFILE, and so
did the Raft thread's write of the term/vote file. Here one replica runs with 400 descriptors and
``--max-connections 250``: 500 clients connect and stay; past 250 each either takes the place of an idle connection
(closed to make room: these never sent a request) or gets ``503 overloaded`` at once and its connection is closed;
the replica never holds more than 250, still commits writes and answers, and says what it closed and refused in
/metrics."""
from __future__ import annotations

import json
import os
import resource
import socket
import time
import urllib.request

import pytest

from raftctl.devcluster import LocalCluster

from .conftest import SPEC, raw, wait_until

pytestmark = pytest.mark.integration

LIMIT = 250
FDS = 400


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    cl = LocalCluster(str(tmp_path_factory.mktemp("admission")), replicas=1)
    cl.servers[0].extra_args = ["--heartbeat-ttl", "1h", "--max-connections", str(LIMIT)]
    cl.start(timeout=60)
    pid = cl.servers[0].pid
    assert pid is not None
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (FDS, FDS))   # a replica with few descriptors: the flood's aim
    yield cl
    cl.stop()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close: RST, no TIME-WAIT
    return s


def _answer(s: socket.socket) -> bytes:
    """The answer to one GET /healthz on ``s``: its head and, when it says its length, that much body (the
    connection stays open); a connection closed by the replica gives what came before the close."""
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        while length is not None and len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except OSError as exc:   # the refusal was sent before our request arrived: a reset may overtake it
        return data or repr(exc).encode()


def _metric(cl: LocalCluster, name: str) -> float:
    req = urllib.request.Request(cl.servers[0].url + "/metrics", headers={"Authorization": f"Bearer {cl.token()}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_connections_past_the_limit_are_refused_and_the_replica_keeps_committing(one: LocalCluster) -> None:
    port = int(one.servers[0].url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(2 * LIMIT):         # 500 clients, twice the limit, more than the replica's 400 descriptors
            held.append(_connect(port))
        time.sleep(1.5)                    # the replica accepts what it can (and stops refusing without a look)
        # the newest, over the limit: served once the longest-idle connections were closed to make room (they
        # never sent a request: idle), or, while none was idle (the newest not yet started), refused at once
        answers = [_answer(s) for s in held[-20:]]
        assert all(a.startswith(b"HTTP/1.1 200") or (a.startswith(b"HTTP/1.1 503") and b'"overloaded"' in a)
                   for a in answers), answers[:3]
        refusals = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert all(b"Retry-After: 1" in a for a in refusals)
        # a moment later every admitted connection is idle: as many newcomers as the limit, one after the other,
        # are each served, taking the places of the longest idle (the replica holds no more than the limit)
        for _ in range(LIMIT):
            held.append(_connect(port))
            answer = _answer(held[-1])
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        for s in held[:LIMIT // 5]:        # some clients go away
            s.close()
        del held[:LIMIT // 5]
        started = time.monotonic()
        status, data = 0, {}

        def write() -> bool:
            nonlocal status, data
            status, data = raw(one.servers[0].url + "/v1/jobs/after-flood", "PUT",
                               json.dumps({**SPEC, "name": "after-flood", "replicas": 0}).encode(), one.token(),
                               timeout=5)
            return status == 200
        wait_until(write, timeout=10)
        print(f"write after the flood committed in {1000 * (time.monotonic() - started):.0f} ms; "
              f"{len(held)} connections still held")
        assert _metric(one, "raftctl_api_connections_limit") == LIMIT
        evicted, refused = (_metric(one, "raftctl_api_connections_evicted_total"),
                            _metric(one, "raftctl_api_connections_refused_total"))
        print(f"past the limit: {evicted:.0f} idle connections closed to make room, {refused:.0f} refused; "
              f"{len(refusals)} of the newest 20 refused")
        assert evicted >= 1 and evicted + refused >= LIMIT   # every connection past the limit: one or the other
        assert _metric(one, "raftctl_api_connections") <= LIMIT
    finally:
        for s in held:
            s.close()
    # the Raft journal and the accept loop never ran out: no EMFILE anywhere in the replica's log
    p = one.servers[0]
    with open(os.path.join(p.data_dir, f"{p.role}.log")) as f:
        assert "Too many open files" not in f.read()
