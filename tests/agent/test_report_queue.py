"""The agent's report queue: repeats collapse, transitions stay (jepsen-style finding 9's report storm)."""
from __future__ import annotations

from raftctl.agent.loop import unrepeated
from raftctl.statemachine.records import ReportUpdate as R


def test_a_stop_reported_on_every_pass_is_sent_once():
    queued = [R(placement="s3-1", state="stopped", reason="not running on this machine") for _ in range(500)]
    assert unrepeated(queued) == queued[:1]


def test_a_restart_keeps_every_transition_in_order():
    queued = [R(placement="p", state="running", health="healthy"), R(placement="p", state="exited", exit_code=1),
              R(placement="p", state="running", health="healthy"), R(placement="p", state="running", health="healthy")]
    assert unrepeated(queued) == queued[:3]


def test_placements_are_collapsed_independently():
    queued = [R(placement="a", state="starting"), R(placement="b", state="starting"),
              R(placement="a", state="starting"), R(placement="b", state="running")]
    assert unrepeated(queued) == [queued[0], queued[1], queued[3]]
