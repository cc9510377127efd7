"""The driver's seeded schedule and the workload's outcome rules (no root needed)."""
from __future__ import annotations

import run
from workload import classify_write, register_value

NODES = ["n1", "n2", "n3"]


def test_one_seed_gives_one_schedule_and_another_seed_another() -> None:
    assert run.make_schedule(7, 300, NODES) == run.make_schedule(7, 300, NODES)
    assert run.make_schedule(7, 300, NODES) != run.make_schedule(8, 300, NODES)


def test_faults_do_not_overlap_and_all_end_before_the_heal() -> None:
    for seed in range(30):
        events = run.make_schedule(seed, 90, NODES)["events"]
        assert events
        for a, b in zip(events, events[1:]):
            assert a["at"] + a["duration"] < b["at"]
        assert events[-1]["at"] + events[-1]["duration"] <= 90


def test_runs_of_a_minute_or_more_isolate_the_leader_for_longer_than_30s() -> None:
    for seed in range(30):
        long = [e for e in run.make_schedule(seed, 90, NODES)["events"] if e["args"].get("long")]
        assert len(long) == 1 and long[0]["kind"] == "isolate-leader" and long[0]["duration"] > 30


def test_majorities_ring_only_with_five_replicas() -> None:
    kinds3 = {e["kind"] for s in range(40) for e in run.make_schedule(s, 600, NODES)["events"]}
    kinds5 = {e["kind"] for s in range(40) for e in run.make_schedule(s, 600, [f"n{i}" for i in range(1, 6)])["events"]}
    assert "majorities-ring" not in kinds3 and "majorities-ring" in kinds5


def test_an_unanswered_or_maybe_proposed_write_is_info_never_fail() -> None:
    assert classify_write(None, None, "timeout") == "info"
    assert classify_write(None, None, "ServerDisconnectedError: x") == "info"
    assert classify_write(503, {"error": {"code": "outcome_unknown"}}, None) == "info"
    assert classify_write(500, {"error": {"code": "internal"}}, None) == "info"
    # certainly not applied
    assert classify_write(None, None, "refused") == "fail"
    assert classify_write(409, {"error": {"code": "cas_failed"}}, None) == "fail"
    assert classify_write(503, {"error": {"code": "unavailable"}}, None) == "fail"
    assert classify_write(200, {"index": 3}, None) == "ok"


def test_the_register_of_a_job_is_its_generation_or_none_when_dead() -> None:
    job = {"status": "running", "replicas": 2, "spec": {"env": {"GEN": "1-5"}}}
    assert register_value("r0", job) == "1-5"
    assert register_value("s3", job) == 2
    assert register_value("r0", {**job, "status": "dead"}) is None
