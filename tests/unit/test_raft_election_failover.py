"""Leader failover timing (issue 13: leader kill -9 -> next committed write p99 <= 1 s).

A RaftNode driven by hand (no tick thread; the transport records what it sends) with its own timing,
election timeout 0.4-0.6 s and a 0.05 s heartbeat, so the figures below do not depend on raftctl's defaults:
the spread of the timeouts (0.2 s) is shorter than their floor (0.4 s), so "within the spread" and "not
before the floor" cannot both hold by chance. Then the API client's pacing between replicas.
bench/failover.py measures the whole path on a real cluster.
"""
from __future__ import annotations

import http.server
import random
import threading
import time
from typing import Any

import pysyncobj.syncobj as psyncobj
import pytest
from pysyncobj import FAIL_REASON

from raftctl import client as client_mod
from raftctl.devcluster import free_port
from raftctl.node import raft
from tests.unit.test_raft_replication import LEADER, OTHER, Recorder, noop

MIN_TIMEOUT, MAX_TIMEOUT, HEARTBEAT = 0.4, 0.6, 0.05
SPREAD = MAX_TIMEOUT - MIN_TIMEOUT
TICK_SLACK = 0.08  # a loaded test machine: ticks and sleeps run late


class Node:
    def __init__(self, path: Any) -> None:
        self.transport = Recorder(None, None, [])
        self.node = raft.RaftNode("127.0.0.1:7001", [LEADER.id, OTHER.id], str(path), None, on_applied=lambda: None,
                                  transport=self.transport,
                                  conf_overrides={"autoTick": False, "raftMinTimeout": MIN_TIMEOUT,
                                                  "raftMaxTimeout": MAX_TIMEOUT, "appendEntriesPeriod": HEARTBEAT})
        for peer in (LEADER, OTHER):
            self.transport._onNodeConnected(peer)

    def deliver(self, node: Any, message: dict) -> list[tuple[Any, dict]]:
        before = len(self.transport.sent)
        self.transport._onMessageReceived(node, message)
        self.node.doTick(0.0)
        return self.transport.sent[before:]

    def follow(self, term: int = 1, last: int = 2) -> None:
        """A follower of LEADER in ``term`` holding entries 1..last, all committed."""
        self.deliver(LEADER, {"type": "append_entries", "term": term, "commit_index": last, "prevLogIdx": 1,
                              "prevLogTerm": 0, "entries": [noop(i, term) for i in range(2, last + 1)], "seq": 1})
        assert self.node._getLeader() == LEADER and self.node.raftCommitIndex == last

    def tick_until(self, kind: str, limit: float) -> tuple[float | None, list[tuple[Any, dict]]]:
        """Tick until the node sends a message of ``kind``: (seconds it took or None, what it sent)."""
        since, t0 = len(self.transport.sent), time.monotonic()
        while time.monotonic() - t0 < limit:
            self.node.doTick(0.005)
            sent = self.transport.sent[since:]
            if any(m["type"] == kind for _, m in sent):
                return time.monotonic() - t0, sent
        return None, self.transport.sent[since:]

    @property
    def deadline_in(self) -> float:
        # pysyncobj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic()
        return self.node._SyncObj__raftElectionDeadline - psyncobj.monotonicTime()  # type: ignore[attr-defined]


@pytest.fixture
def make(tmp_path: Any) -> Any:
    made: list[Node] = []

    def build() -> Node:
        n = Node(tmp_path / f"n{len(made)}")
        made.append(n)
        return n

    yield build
    for n in made:
        n.node._doDestroy()


# ---------------------------------------------------------------------------------------------- detection
def test_a_follower_whose_leader_connection_closes_asks_for_a_pre_vote_within_the_timeouts_spread(make: Any) -> None:
    # kill -9 of the leader: the kernel closes its sockets and every follower sees the link drop at once.
    # pysyncobj waits out the election timeout (0.4-0.6 s after the last heartbeat) all the same.
    f = make()
    f.follow()
    f.transport._onNodeDisconnected(LEADER)
    assert f.node._getLeader() is None  # no command goes to a dead leader from now on
    took, sent = f.tick_until("pre_vote", MAX_TIMEOUT + 0.5)
    assert took is not None and took < SPREAD + TICK_SLACK < MIN_TIMEOUT, took
    assert f.node.raftCurrentTerm == 1  # a pre-vote round changes no term


def test_a_command_forwarded_to_a_leader_that_disconnects_fails_at_once_and_new_ones_wait(make: Any) -> None:
    f = make()
    f.follow()
    answers: list[Any] = []
    f.node.apply_entry(b"x", callback=lambda res, err: answers.append(err))
    f.node.doTick(0.0)
    assert [m["type"] for n, m in f.transport.sent if n == LEADER][-1] == "apply_command"
    f.transport._onNodeDisconnected(LEADER)
    assert answers == [FAIL_REASON.LEADER_CHANGED]  # not left waiting for an answer that cannot come
    since = len(f.transport.sent)
    f.node.apply_entry(b"y", callback=lambda res, err: answers.append(err))
    for _ in range(5):
        f.node.doTick(0.0)
    assert not [m for _, m in f.transport.sent[since:] if m["type"] == "apply_command"]  # held until a leader
    assert answers == [FAIL_REASON.LEADER_CHANGED]
    # the new leader's first message: the held command goes to it
    f.deliver(OTHER, {"type": "append_entries", "term": 2, "commit_index": 2, "prevLogIdx": 2, "prevLogTerm": 1,
                      "entries": [], "seq": 1})
    f.node.doTick(0.0)
    assert [m["type"] for n, m in f.transport.sent[since:] if n == OTHER].count("apply_command") == 1


def test_a_dropped_link_to_a_live_leader_deposes_nobody(make: Any) -> None:
    # The link broke but the leader is alive: the other follower still hears it and refuses the pre-vote, so
    # no term starts; the leader's next heartbeat over the reconnected link makes it our leader again.
    f = make()
    f.follow()
    f.transport._onNodeDisconnected(LEADER)
    end = time.monotonic() + MAX_TIMEOUT + 0.3
    while time.monotonic() < end:
        since = len(f.transport.sent)
        f.node.doTick(0.005)
        for n, m in f.transport.sent[since:]:
            if m["type"] == "pre_vote" and n == OTHER:
                f.transport._onMessageReceived(OTHER, {"type": "pre_vote_response", "term": m["term"],
                                                       "granted": False})
    assert f.node.raftCurrentTerm == 1
    assert not [m for _, m in f.transport.sent if m["type"] == "request_vote"]
    f.transport._onNodeConnected(LEADER)
    f.deliver(LEADER, {"type": "append_entries", "term": 1, "commit_index": 2, "prevLogIdx": 2, "prevLogTerm": 1,
                       "entries": [], "seq": 2})
    assert f.node._getLeader() == LEADER and f.node.raftCurrentTerm == 1


def test_a_follower_ahead_of_a_peer_that_asks_for_a_pre_vote_campaigns_at_once(make: Any) -> None:
    # The leader died before its last entry reached OTHER: OTHER's timer fires first, but its log is behind
    # ours, so it cannot win with our vote; we start our own pre-vote now instead of at our own timer.
    f = make()
    f.follow(last=5)
    f.transport._onNodeDisconnected(LEADER)
    f.node._SyncObj__raftElectionDeadline = psyncobj.monotonicTime() + 10  # type: ignore[attr-defined]  # our timer: far off
    t0 = time.monotonic()
    sent = f.deliver(OTHER, {"type": "pre_vote", "term": 2, "last_log_index": 4, "last_log_term": 1})
    assert [m["granted"] for _, m in sent if m["type"] == "pre_vote_response"] == [False]
    if not any(m["type"] == "pre_vote" for _, m in sent):  # in the tick right after, or the next ones
        assert f.tick_until("pre_vote", 1.0)[0] is not None
    assert time.monotonic() - t0 < TICK_SLACK


def test_a_follower_of_a_live_leader_does_not_campaign_when_a_stale_peer_asks(make: Any) -> None:
    f = make()
    f.follow(last=5)
    sent = f.deliver(OTHER, {"type": "pre_vote", "term": 2, "last_log_index": 4, "last_log_term": 1})
    assert [m["granted"] for _, m in sent if m["type"] == "pre_vote_response"] == [False]
    assert f.deadline_in > MIN_TIMEOUT - TICK_SLACK  # the leader was heard a moment ago: its timer runs on
    for bad in ({"term": 2}, {"term": 2, "last_log_index": None, "last_log_term": "x"}, {"term": "2"}):
        sent = f.deliver(OTHER, {"type": "pre_vote", **bad})  # hostile or garbled: a refusal, nothing else
        assert [m["granted"] for _, m in sent if m["type"] == "pre_vote_response"] == [False]


# ---------------------------------------------------------------------------------------------- split votes
def test_a_candidate_that_is_not_elected_tries_again_sooner_than_a_whole_election_timeout(make: Any) -> None:
    # Both survivors candidates in the same term (a split vote): pysyncobj waited another 0.4-0.6 s; one
    # round trip is what the votes take.
    f = make()
    f.follow()
    f.transport._onNodeDisconnected(LEADER)
    took, sent = f.tick_until("pre_vote", 2.0)
    assert took is not None
    ask = [m for _, m in sent if m["type"] == "pre_vote"][-1]
    f.transport._onMessageReceived(OTHER, {"type": "pre_vote_response", "term": ask["term"], "granted": True})
    took, _ = f.tick_until("request_vote", 1.0)
    assert took is not None and f.node.raftCurrentTerm == 2
    assert f.deadline_in < HEARTBEAT + SPREAD + 0.01 < MIN_TIMEOUT
    # no vote comes (OTHER voted for itself): the next round starts within that, with a pre-vote
    took, _ = f.tick_until("pre_vote", 2.0)
    assert took is not None and took < HEARTBEAT + SPREAD + TICK_SLACK


def test_the_election_timer_fires_on_time_not_on_the_next_idle_tick(make: Any) -> None:
    # pysyncobj checks the timer once per tick, and an idle node ticks every autoTickPeriod (0.05 s): two
    # followers' timers 40 ms apart could fire in the same ms. A tick waits no longer than the timer.
    f = make()
    f.follow()
    f.node._SyncObj__raftElectionDeadline = psyncobj.monotonicTime() + 0.01  # type: ignore[attr-defined]
    t0 = time.monotonic()
    f.node.doTick(0.3)
    assert time.monotonic() - t0 < 0.15
    f.node._SyncObj__raftElectionDeadline = psyncobj.monotonicTime() - 1  # type: ignore[attr-defined]
    f.transport._onNodeDisconnected(LEADER)
    f.transport._onNodeDisconnected(OTHER)  # connected to nobody: no election, and no busy loop either
    t0 = time.monotonic()
    f.node.doTick(0.1)
    assert time.monotonic() - t0 >= 0.09


# ---------------------------------------------------------------------------------------------- the client
class _Flaky(http.server.BaseHTTPRequestHandler):
    failures = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        if cls.failures > 0:
            cls.failures -= 1
            body, status = b'{"error": {"code": "unavailable", "message": "no leader"}}', 503
        else:
            body, status = b'{"ok": true}', 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_tries_the_next_replica_at_once_and_pauses_briefly_only_after_a_whole_round(
        monkeypatch: Any) -> None:
    # A dead replica (connection refused) and one that answers 503 three times (no leader yet), then 200.
    _Flaky.failures = 3
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(client_mod.time, "sleep", sleep)
    try:
        c = client_mod.Client([f"127.0.0.1:{free_port()}", f"127.0.0.1:{server.server_address[1]}"],
                              retry_for=10)
        assert c.request("POST", "/v1/x", {"a": 1}) == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()
    # three failed rounds of two replicas: three pauses, short and growing (within their jitter); the old client
    # slept a fixed 0.3 s per round (the pauses are recorded, not timed: the machine may be loaded)
    assert len(pauses) == 3 and max(pauses) < 0.3, pauses
    assert pauses[0] <= client_mod.ROUND_PAUSE_S and all(p <= client_mod.ROUND_PAUSE_MAX_S for p in pauses)
    assert sum(pauses) <= 7 * client_mod.ROUND_PAUSE_S


def test_round_pauses_grow_to_a_cap_and_are_jittered() -> None:
    rng = random.Random(7)
    seen = [client_mod.round_pause(r, rng) for r in range(1, 40)]
    assert all(0 < p <= client_mod.ROUND_PAUSE_MAX_S for p in seen)
    assert seen[0] <= client_mod.ROUND_PAUSE_S and max(seen) > client_mod.ROUND_PAUSE_MAX_S / 2
    assert len({round(p, 6) for p in seen[20:]}) > 1  # jittered, not one fixed value
    assert client_mod.round_pause(10 ** 6, rng) <= client_mod.ROUND_PAUSE_MAX_S  # no overflow
