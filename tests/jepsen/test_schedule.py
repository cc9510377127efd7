"""The driver's seeded schedule and the workload's outcome rules (no root needed)."""
from __future__ import annotations

import json
import time
import types

import nemesis as nem
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


class _Verified:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def to_json(self) -> dict:
        return {"ok": True, "mismatches": [], "seconds": self.seconds}


class _SlowProbes:
    """A partitioner whose rules take effect at once and whose probes take `verify_s` to confirm it."""

    def __init__(self, verify_s: float) -> None:
        self.verify_s = verify_s

    def apply(self, p):
        class Applied:
            def to_json(self_inner) -> dict:
                return {"name": p.name, "verified": _Verified(0.0).to_json()}
        return Applied()

    def heal(self) -> _Verified:
        time.sleep(self.verify_s)  # the rules are already gone; the probes are slow (a loaded machine)
        return _Verified(self.verify_s)


def test_a_fault_ends_when_it_is_undone_not_when_the_undo_is_verified(tmp_path) -> None:
    cluster = types.SimpleNamespace(run_dir=str(tmp_path), nodes=["n1", "n2", "n3"], procs={})
    faults = tmp_path / "faults.jsonl"
    nemesis = run.Nemesis(cluster, _SlowProbes(0.4), str(faults))
    ev = {"at": 0.0, "kind": "isolate", "duration": 0.1, "args": {},
          "partition": nem.isolate("n1", ["n1", "n2", "n3"]).to_json()}
    t0 = time.monotonic()
    nemesis.run({"events": [ev]}, t0)
    heal = nemesis.heal_all()
    start, end = [json.loads(line) for line in faults.read_text().splitlines()][:2]
    assert end["type"] == "end" and end["verified_at"] - end["time"] >= 0.35e9  # counted before the probes
    assert end["time"] - start["time"] < 0.35e9
    assert heal["verified_at"] - heal["time"] >= 0.35e9


def test_a_pause_is_verified_once_the_process_shows_it_stopped(monkeypatch) -> None:
    proc = types.SimpleNamespace(pid=4242, alive=lambda: True)
    cluster = types.SimpleNamespace(run_dir="/nonexistent", nodes=["n1"], procs={"n1": proc})
    nemesis = run.Nemesis.__new__(run.Nemesis)
    nemesis.c = cluster
    states = iter(["S", "S", "S", "T"])  # SIGSTOP takes a moment to show on a loaded machine
    monkeypatch.setattr(run, "_proc_state", lambda pid: next(states, "T"))
    assert nemesis._verify_process("n1", "stopped")["ok"] is True


def test_agent_faults_target_agents_and_widen_the_fencing_bound_while_they_last() -> None:
    import analyse

    events = [e for s in range(40) for e in run.make_schedule(s, 600, NODES)["events"]
              if e["kind"] in ("kill-agent", "pause-agent")]
    assert {e["kind"] for e in events} == {"kill-agent", "pause-agent"}
    assert {e["args"]["agent"] for e in events} == set(run.AGENTS)
    faults = [{"type": "start", "kind": "kill-agent", "time": 10}, {"type": "end", "kind": "kill-agent", "time": 20},
              {"type": "start", "kind": "kill", "time": 30}, {"type": "end", "kind": "kill", "time": 40},
              {"type": "start", "kind": "pause-agent", "time": 50}, {"type": "end", "kind": "pause-agent", "time": 55}]
    assert analyse._agent_cuts(faults) == [(10, 20), (50, 55)]


def test_a_killed_agent_is_restarted_when_its_fault_is_undone() -> None:
    calls = []
    proc = types.SimpleNamespace(pid=4242, alive=lambda: not calls or calls[-1] == "start",
                                 kill9=lambda: calls.append("kill9"), start=lambda: calls.append("start"))
    cluster = types.SimpleNamespace(run_dir="/nonexistent", nodes=["n1"], procs={"a2": proc})
    nemesis = run.Nemesis.__new__(run.Nemesis)
    nemesis.c = cluster
    done, how = nemesis.apply({"kind": "kill-agent", "args": {"agent": "a2"}, "duration": 1})
    assert done["target"] == "a2" and done["verified"]["ok"] is True and how == ("restart", "a2")
    assert calls == ["kill9"]


def test_the_runtime_is_runc_only_where_it_can_be_and_process_is_said_loudly() -> None:
    from raftctl.agent.runtime.runc import runc_available
    from raftctl.agent.testimage import busybox_available

    assert run.choose_runtime("process") == ("process", "--runtime process asked for")
    runtime, why = run.choose_runtime("auto")
    if runc_available() and busybox_available():
        assert (runtime, why) == ("runc", None)
    else:
        assert runtime == "process" and why
