"""A replica that does not lead answers a heartbeat before reading its body: ``not_leader`` naming the leader, or,
just elected with its epoch not yet claimed, ``unavailable`` (never naming itself: every agent would send the
heartbeat to it again at once, while a new leader's loop is at its busiest). The real route on loopback."""
from __future__ import annotations

import types
from typing import Any

import pytest

from tests.unit.test_heartbeat_stats import api, leader_with_web


class Raft:
    def __init__(self, state: str, leader: str | None) -> None:
        self.status = {"state": state, "leader": leader}

    def raft_status(self) -> dict[str, Any]:
        return self.status


@pytest.mark.parametrize("state, leader, status, code, leader_api", [
    ("leader", "n2:1", 503, "unavailable", None),            # just elected: not leading yet, never itself
    ("follower", "n1:1", 503, "not_leader", "http://n1"),     # the leader it knows
    ("candidate", None, 503, "not_leader", None),             # no leader known
])
async def test_a_replica_not_leading_answers_before_reading_the_body(state, leader, status, code, leader_api):
    r, _ = await leader_with_web()
    r.leadership = None  # type: ignore[attr-defined]
    r.raft = Raft(state, leader)  # type: ignore[attr-defined]
    members = {"n1:1": {"api": "http://n1"}, "n2:1": {"api": "http://n2"}}
    r.read = lambda f: f(types.SimpleNamespace(members=members))  # type: ignore[method-assign]
    async with api(r) as client:
        resp = await client.post("/v1/agent/heartbeat", data=b"{not json at all",
                                 headers={"Content-Type": "application/json"})
        got = await resp.json()
    assert resp.status == status and got["error"]["code"] == code
    assert (got["error"].get("details") or {}).get("leader_api") == leader_api
