"""The Raft election timeout follows the cell's size (issue 15): a leader loaded by thousands of agents misses
its heartbeats for longer than 0.3 s on a small machine, and every election sends the whole fleet to a new
leader. Pure rule (table) and the node applying it (a real RaftNode, not ticking)."""
from __future__ import annotations

import pytest

from raftctl.node import raft
from tests.unit.test_raft_replication import LEADER, OTHER, Recorder

DEFAULT = (0.3, 0.6, 0.075)

CASES = [
    # name, machines, base timing, (min, max)
    ("no machine: the base", 0, DEFAULT, (0.3, 0.6)),
    ("1,000 machines: still the base", 1000, DEFAULT, (0.3, 0.6)),
    ("2,000 machines: 0.3 ms each", 2000, DEFAULT, (0.6, 1.2)),
    ("3,000 machines", 3000, DEFAULT, (0.9, 1.8)),
    ("3,333 machines", 3333, DEFAULT, (1.0, 2.0)),
    ("10,000 machines: 3-6 s", 10000, DEFAULT, (3.0, 6.0)),
    ("20,000 machines: capped at 3 s", 20000, DEFAULT, (3.0, 6.0)),
    ("a longer base is never shortened", 3000, (1.5, 3.0, 0.1), (1.5, 3.0)),
    ("the base's max/min ratio is kept", 3000, (0.4, 0.6, 0.05), (0.9, 1.35)),
]


@pytest.mark.parametrize("name,machines,base,want", CASES, ids=[c[0] for c in CASES])
def test_cell_election_timeout(name, machines, base, want):
    assert raft.cell_election_timeout(machines, base) == pytest.approx(want)


def test_a_node_following_its_cell_draws_its_election_timeouts_from_the_new_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(raft, "TIMING_PINNED", False)
    transport = Recorder(None, None, [])
    node = raft.RaftNode("127.0.0.1:7001", [LEADER.id, OTHER.id], str(tmp_path), None, on_applied=lambda: None,
                         transport=transport, conf_overrides={"autoTick": False, "raftMinTimeout": 0.3,
                                                             "raftMaxTimeout": 0.6, "appendEntriesPeriod": 0.075})
    try:
        draws = [node._SyncObj__generateRaftTimeout() for _ in range(200)]
        assert 0.3 <= min(draws) and max(draws) <= 0.6
        assert node.follow_cell(3000) == pytest.approx((0.9, 1.8))
        assert node._SyncObj__conf.leaderFallbackTimeout == raft.LEADER_FALLBACK_S   # 3 s: longer than 1.8
        draws = [node._SyncObj__generateRaftTimeout() for _ in range(200)]
        assert 0.9 <= min(draws) and max(draws) <= 1.8
        assert node.follow_cell(10000) == pytest.approx((3.0, 6.0))
        assert node._SyncObj__conf.leaderFallbackTimeout == 6.0   # not before a follower could elect another
        assert node.follow_cell(500) == pytest.approx((0.3, 0.6))      # the cell shrank: back to the base
        assert node._SyncObj__conf.leaderFallbackTimeout == raft.LEADER_FALLBACK_S
        draws = [node._SyncObj__generateRaftTimeout() for _ in range(200)]
        assert 0.3 <= min(draws) and max(draws) <= 0.6
        monkeypatch.setattr(raft, "TIMING_PINNED", True)                # RAFTCTL_RAFT_TIMING set: left alone
        assert node.follow_cell(3000) == pytest.approx((0.3, 0.6))
    finally:
        node.destroy()
