"""Checker self-test: injected anomalies are caught, valid histories pass."""
from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analyse
from checkers import chains, convergence, discovery, fencing, leaders, linear, lost_writes
from history import INF, Op, pair_ops, read_history, write_history

S = 1_000_000_000  # ns


class H:
    """Build a history from (f, key, value, start, end, outcome) ops; one process per op."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int, Op]] = []
        self.n = 0

    def op(self, f: str, key: str, value: Any, start: float, end: float, outcome: str = "ok",
           read_value: Any = None) -> "H":
        p = self.n
        self.n += 1
        self.events.append((start, 0, Op(p, "invoke", f, key, None if f == "read" else value, int(start))))
        done_value = read_value if f == "read" else value
        if f == "read" and outcome != "ok":
            done_value = None
        self.events.append((end, 1, Op(p, outcome, f, key, done_value, int(end))))
        return self

    def w(self, key: str, v: Any, s: float, e: float, outcome: str = "ok") -> "H":
        return self.op("write", key, v, s, e, outcome)

    def r(self, key: str, v: Any, s: float, e: float, outcome: str = "ok") -> "H":
        return self.op("read", key, None, s, e, outcome, read_value=v)

    def d(self, key: str, s: float, e: float, outcome: str = "ok") -> "H":
        return self.op("delete", key, None, s, e, outcome)

    def cas(self, key: str, old: Any, new: Any, s: float, e: float, outcome: str = "ok") -> "H":
        return self.op("cas", key, [old, new], s, e, outcome)

    def ops(self) -> list[Op]:
        return [op for _, _, op in sorted(self.events, key=lambda t: (t[0], t[1]))]


# -- linearizability: anomalies ------------------------------------------------------

def test_stale_read_is_caught() -> None:
    h = H().w("j1", "1", 0, 10).w("j1", "2", 20, 30).r("j1", "1", 40, 50)
    res = linear.check(h.ops())
    assert res.valid is False
    kr = res.keys["j1"]
    assert kr.failing_op is not None and kr.failing_op.f == "read" and kr.failing_op.value == "1"
    assert kr.states == ["2"]
    assert "cannot be linearized" in kr.reason
    assert res.first_failure is kr
    assert res.to_json()["first_failure"]["key"] == "j1"


def test_stale_read_one_nanosecond_after_the_write_is_caught() -> None:
    # Wall-clock nanoseconds near 1.8e18: a float64 resolves only 256 ns there, so a
    # checker that converts times to floats sees the write's ack and the read's invoke
    # as simultaneous (concurrent) and lets the stale read pass.
    t0 = 1_800_000_000_000_000_000
    h = H().w("j1", "1", t0 - 2 * S, t0 - S).w("j1", "2", t0 - 1000, t0).r("j1", "1", t0 + 1, t0 + 1000)
    res = linear.check(h.ops())
    assert res.valid is False
    assert res.keys["j1"].failing_op.value == "1"  # type: ignore[union-attr]
    assert res.keys["j1"].states == ["2"]
    calls = pair_ops(h.ops())
    assert [(c.invoke, c.complete) for c in calls] == [(t0 - 2 * S, t0 - S), (t0 - 1000, t0), (t0 + 1, t0 + 1000)]
    assert all(type(c.invoke) is int and type(c.complete) is int for c in calls)


def test_read_of_never_written_value_is_caught() -> None:
    h = H().w("j1", "1", 0, 10).r("j1", "99", 20, 30)
    assert linear.check(h.ops()).valid is False


def test_read_of_missing_key_after_acknowledged_write_is_caught() -> None:
    h = H().w("j1", "1", 0, 10).r("j1", None, 20, 30)
    assert linear.check(h.ops()).valid is False


def test_observed_info_write_cannot_vanish() -> None:
    h = H().w("j1", "1", 0, 5, outcome="info").r("j1", "1", 50, 60).r("j1", None, 70, 80)
    res = linear.check(h.ops())
    assert res.valid is False
    assert res.keys["j1"].failing_op.value is None  # type: ignore[union-attr]


def test_nonmonotonic_reads_are_caught() -> None:
    # Two concurrent writes; reads that see 2 then 1 then 2 again cannot all be right.
    h = (H().w("j1", "1", 0, 100).w("j1", "2", 0, 100)
         .r("j1", "2", 10, 20).r("j1", "1", 30, 40).r("j1", "2", 50, 60))
    assert linear.check(h.ops()).valid is False


def test_failed_cas_has_no_effect_and_wrong_cas_is_caught() -> None:
    ok = H().w("j1", "1", 0, 10).cas("j1", "1", "2", 20, 30).cas("j1", "1", "3", 40, 50, "fail").r("j1", "2", 60, 70)
    assert linear.check(ok.ops()).valid is True
    bad = H().w("j1", "1", 0, 10).cas("j1", "5", "2", 20, 30)
    assert linear.check(bad.ops()).valid is False


def test_keys_are_checked_independently() -> None:
    h = (H().w("a", "1", 0, 10).r("a", "1", 20, 30)
         .w("b", "1", 0, 10).w("b", "2", 20, 30).r("b", "1", 40, 50))
    res = linear.check(h.ops())
    assert res.valid is False
    assert res.keys["a"].valid is True and res.keys["b"].valid is False


# -- linearizability: valid histories ------------------------------------------------

def test_concurrent_history_passes() -> None:
    h = (H().w("j1", "1", 0, 100).r("j1", None, 5, 15).r("j1", "1", 10, 20)
         .w("j1", "2", 30, 60).r("j1", "1", 35, 45).r("j1", "2", 50, 70).d("j1", 80, 90).r("j1", None, 95, 99))
    assert linear.check(h.ops()).valid is True


def test_info_ops_pass_either_way() -> None:
    took = H().w("j1", "1", 0, 10).w("j1", "2", 20, 25, "info").r("j1", "2", 30, 40).r("j1", "2", 50, 60)
    assert linear.check(took.ops()).valid is True
    lost = H().w("j1", "1", 0, 10).w("j1", "2", 20, 25, "info").r("j1", "1", 30, 40).r("j1", "1", 50, 60)
    res = linear.check(lost.ops())
    assert res.valid is True and res.keys["j1"].pruned == 1
    late = H().w("j1", "1", 0, 10).w("j1", "2", 20, 25, "info").r("j1", "1", 30, 40).r("j1", "2", 500, 600)
    assert linear.check(late.ops()).valid is True  # it took effect late: completion is +inf


def test_cut_history_counts_as_info() -> None:
    ops = H().w("j1", "1", 0, 10).r("j1", "1", 20, 30).ops()
    ops.append(Op(99, "invoke", "write", "j1", "7", 40))
    calls = pair_ops(ops)
    assert calls[-1].status == "info" and calls[-1].complete == INF
    assert linear.check(ops).valid is True


def test_search_budget_gives_unknown_not_pass() -> None:
    h = H()
    for i in range(12):
        h.w("j1", str(i), 0, 1000)
    for i in range(12):
        h.r("j1", str(i), 2000 + 10 * i, 2005 + 10 * i)   # impossible: reads after all writes disagree
    res = linear.check(h.ops(), max_steps=50)
    assert res.valid == "unknown"
    assert "not a pass" in res.keys["j1"].reason
    assert linear.check(h.ops()).valid is False


def test_history_round_trip(tmp_path: Any) -> None:
    ops = H().w("j1", "1", 0, 10).r("j1", "1", 20, 30).w("j1", "2", 40, 45, "info").ops()
    ops[1].index = 7
    path = os.path.join(tmp_path, "history.jsonl")
    write_history(path, ops)
    back = read_history(path)
    assert [o.to_json() for o in back] == [o.to_json() for o in ops]
    assert [c.status for c in pair_ops(back)] == ["ok", "ok", "info"]


# -- hypothesis: real sequential registers, random concurrency windows ------------------

op_strategy = st.tuples(
    st.sampled_from(["write", "write", "read", "read", "delete", "cas"]),
    st.integers(0, 2),                          # key
    st.integers(0, 60), st.integers(0, 60),     # how far invoke/complete are from the real instant
    st.sampled_from(["ok", "ok", "ok", "ok", "info", "info-noeffect", "fail"]),
    st.integers(0, 10),                         # cas: which earlier value to expect
)


def simulate(spec: list[tuple[str, int, int, int, str, int]]) -> tuple[H, dict[str, Any], bool]:
    """Run the ops one at a time on a real register at instants 100, 200, ...; each op's
    invocation and completion are spread around its instant to create concurrency."""
    h = H()
    state: dict[str, Any] = {}
    written: dict[str, list[Any]] = {}
    indeterminate = False
    for i, (f, k, before, after, outcome, pick) in enumerate(spec):
        key = f"j{k}"
        t = 100 * (i + 1)
        start, end = t - before, t + after
        effect = outcome in ("ok", "info")
        status = "info" if outcome.startswith("info") else outcome
        indeterminate |= status == "info"
        cur = state.get(key)
        if f == "write":
            v = f"v{i}"
            if effect:
                state[key] = v
            written.setdefault(key, []).append(v)
            h.w(key, v, start, end, status)
        elif f == "delete":
            if effect:
                state.pop(key, None)
            h.d(key, start, end, status)
        elif f == "read":
            h.r(key, cur, start, end, status)
        else:
            choices = [None] + written.get(key, [])
            expected = choices[pick % len(choices)]
            v = f"v{i}"
            written.setdefault(key, []).append(v)
            if status == "ok" and expected != cur:
                status = "fail"   # the real register refused it: a definite failure
            if effect and expected == cur:
                state[key] = v
            h.cas(key, expected, v, start, end, status)
    return h, state, indeterminate


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_strategy, min_size=1, max_size=40))
def test_generated_linearizable_histories_pass(spec: list[tuple[str, int, int, int, str, int]]) -> None:
    h, _, _ = simulate(spec)
    res = linear.check(h.ops())
    assert res.valid is True, res.to_json()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_strategy, min_size=1, max_size=30), st.integers(0, 2))
def test_generated_stale_final_read_is_caught(spec: list[tuple[str, int, int, int, str, int]], k: int) -> None:
    spec = [(f, key, b, a, "ok" if o.startswith("info") else o, p) for f, key, b, a, o, p in spec]
    h, state, _ = simulate(spec)
    key = f"j{k}"
    end = 100 * (len(spec) + 2)
    h.r(key, "never-written" if state.get(key) is not None else "v-bogus", end, end + 10)
    assert linear.check(h.ops()).valid is False


# -- lost writes ------------------------------------------------------------------------

def test_lost_write_is_caught() -> None:
    h = H().w("j1", "1", 0, 10).w("j1", "2", 20, 30)
    res = lost_writes.check(h.ops(), {"j1": "1"})
    assert res.valid is False and len(res.lost) == 1 and "'2'" in res.lost[0]["write"]


def test_missing_key_at_end_is_a_lost_write() -> None:
    h = H().w("j1", "1", 0, 10)
    assert lost_writes.check(h.ops(), {"j1": None}).valid is False
    assert lost_writes.check(H().w("j1", "1", 0, 10).d("j1", 20, 30, "info").ops(), {"j1": None}).valid is True


def test_superseded_writes_are_fine() -> None:
    h = H().w("j1", "1", 0, 10).w("j1", "2", 5, 30).w("j1", "3", 40, 50, "info")
    assert lost_writes.check(h.ops(), {"j1": "3"}).valid is True
    assert lost_writes.check(h.ops(), {"j1": "1"}).valid is True   # 1 and 2 were concurrent
    assert lost_writes.check(h.ops(), {"j1": "9"}).valid is False  # nobody wrote 9
    assert lost_writes.check(h.ops(), {}).valid == "unknown"


def test_final_reads_helper() -> None:
    h = H().w("j1", "1", 0, 10).r("j1", "1", 20, 30).w("j1", "2", 40, 50).r("j1", "2", 100, 110)
    assert lost_writes.final_reads(h.ops(), after_ns=90) == {"j1": "2"}


# -- leaders, chains, convergence, discovery ----------------------------------------------

def test_two_leaders_in_one_term_are_caught() -> None:
    samples = [
        {"node": "n1", "time": 1, "term": 3, "leader": "10.77.0.11:7000", "state": "leader"},
        {"node": "n2", "time": 2, "term": 3, "leader": "10.77.0.11:7000", "state": "follower"},
        {"node": "n3", "time": 3, "term": 3, "leader": "10.77.0.13:7000", "state": "leader"},
    ]
    aliases = {"10.77.0.11:7000": "n1", "10.77.0.13:7000": "n3"}
    res = leaders.check(samples, aliases)
    assert res.valid is False and res.violations[0]["term"] == 3
    assert set(res.violations[0]["leaders"]) == {"n1", "n3"}


def test_one_leader_per_term_passes() -> None:
    samples = [
        {"node": "n1", "time": 1, "term": 3, "leader": "n1", "state": "leader"},
        {"node": "n2", "time": 2, "term": 3, "leader": "n1", "state": "follower"},
        {"node": "n1", "time": 3, "term": 3, "leader": "n1", "state": "leader"},   # the old leader, still in term 3
        {"node": "n3", "time": 4, "term": 4, "leader": "n3", "state": "leader"},
        {"node": "n2", "time": 5, "term": 5, "leader": None, "state": "candidate"},
    ]
    res = leaders.check(samples)
    assert res.valid is True and res.leaders == {3: "n1", 4: "n3"}


def test_diverging_replicas_are_caught() -> None:
    res = chains.check({"n1": [(1, "a"), (2, "b"), (3, "c")], "n2": [(1, "a"), (2, "b"), (3, "X")], "n3": [(1, "a")]})
    assert res.valid is False and res.first_divergence == {"index": 3, "hashes": {"n1": "c", "n2": "X"}}


def test_agreeing_replicas_pass_and_rewrites_are_caught() -> None:
    assert chains.check({"n1": [(1, "a"), (2, "b")], "n2": [(1, "a")], "n3": [(2, "b"), (5, "e")]}).valid is True
    res = chains.check({"n1": [(1, "a"), (2, "b"), (2, "q")]})
    assert res.valid is False and res.rewrites[0]["index"] == 2


def test_convergence() -> None:
    heal = 10 * S

    def s(t: float, running: int, job: str = "web", want: int = 3) -> dict[str, Any]:
        return {"time": int(t * S), "job": job, "want": want, "running": running}
    ok = [s(9, 1), s(11, 2), s(13, 3), s(20, 3), s(30, 3)]
    assert convergence.check(ok, heal, bound_s=5).valid is True
    late = [s(11, 2), s(18, 3), s(30, 3)]
    assert convergence.check(late, heal, bound_s=5).valid is False
    flaps = [s(11, 3), s(20, 2), s(30, 2)]
    assert convergence.check(flaps, heal, bound_s=5).valid is False
    short = [s(11, 2), s(12, 2)]
    assert convergence.check(short, heal, bound_s=5).valid == "unknown"


def test_discovery_never_serves_dead_endpoints_past_the_bound() -> None:
    health = [{"time": t * S, "endpoint": "e1", "healthy": t < 5} for t in range(0, 20)]
    health += [{"time": t * S, "endpoint": "e2", "healthy": True} for t in range(0, 20)]
    fine = [{"time": t * S, "service": "web", "endpoints": ["e1", "e2"] if t < 7 else ["e2"]} for t in range(20)]
    assert discovery.check(fine, health, bound_s=3).valid is True
    stale = fine + [{"time": 12 * S, "service": "web", "endpoints": ["e1"]}]
    res = discovery.check(stale, health, bound_s=3)
    assert res.valid is False and res.violations[0]["endpoint"] == "e1"
    ghost = [{"time": 15 * S, "service": "web", "endpoints": ["nobody"]}]
    assert discovery.check(ghost, health, bound_s=3).valid is False


# -- the optimised search agrees with brute force on small random histories ---------------

def brute_force(ops: list[Op]) -> bool:
    """Try every subset of indeterminate ops and every real-time-respecting order."""
    calls = [c for c in pair_ops(ops) if not (c.status == "info" and c.f == "read")]
    infos = [c for c in calls if c.status == "info"]
    oks = [c for c in calls if c.status == "ok"]

    def search(left: list[Any], state: Any) -> bool:
        if not left:
            return True
        for x in left:
            if any(y is not x and y.complete < x.invoke for y in left):
                continue
            ok, new = linear.step(state, x)
            if ok and search([y for y in left if y is not x], new):
                return True
        return False

    for mask in range(1 << len(infos)):
        chosen = oks + [c for i, c in enumerate(infos) if mask >> i & 1]
        if search(chosen, None):
            return True
    return False


small_op = st.tuples(
    st.sampled_from(["write", "read", "read", "delete", "cas"]),
    st.sampled_from([None, "a", "b", "c"]), st.sampled_from([None, "a", "b"]),
    st.integers(0, 12), st.integers(0, 6), st.sampled_from(["ok", "ok", "ok", "info", "fail"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(small_op, min_size=1, max_size=7))
def test_search_agrees_with_brute_force(spec: list[tuple[str, Any, Any, int, int, str]]) -> None:
    h = H()
    for f, v, old, start, length, outcome in spec:
        if f == "write":
            h.w("k", v if v is not None else "a", start, start + length, outcome)
        elif f == "read":
            h.r("k", v, start, start + length, outcome)
        elif f == "delete":
            h.d("k", start, start + length, outcome)
        else:
            h.cas("k", old, v if v is not None else "c", start, start + length, outcome)
    ops = h.ops()
    assert linear.check(ops).valid is brute_force(ops), [o.to_json() for o in ops]


# -- fencing: containers of given-up placements -------------------------------------------

def _pl(t: float, *ps: tuple[str, str, str]) -> dict[str, Any]:
    return {"time": int(t * S), "job": "web",
            "placements": [{"id": i, "desired": d, "state": st, "machine": "a1"} for i, d, st in ps]}


def _ct(t: float, *running: str) -> dict[str, Any]:
    return {"time": int(t * S), "agent": "a1", "running": list(running)}


def test_container_of_a_lost_placement_running_past_the_bound_is_caught() -> None:
    placements = [_pl(0, ("web-1", "run", "running")), _pl(10, ("web-1", "run", "lost"))]
    containers = [_ct(5, "web-1"), _ct(20, "web-1"), _ct(30, "web-1")]
    res = fencing.check(placements, containers, [], bound_s=15)
    assert res.valid is False
    assert res.violations[0]["container"] == "web-1" and res.violations[0]["late_s"] == 20.0
    assert fencing.check(placements, containers[:2], [], bound_s=15).valid is True  # 10 s late: within


def test_the_bound_starts_when_the_agent_can_hear_the_control_plane_again() -> None:
    placements = [_pl(0, ("web-1", "run", "running")), _pl(10, ("web-1", "run", "lost"))]
    containers = [_ct(30, "web-1"), _ct(40, "web-1")]
    assert fencing.check(placements, containers, [(5 * S, 28 * S)], bound_s=15).valid is True
    assert fencing.check(placements, containers + [_ct(50, "web-1")], [(5 * S, 28 * S)], bound_s=15).valid is False


def test_stopped_or_vanished_placements_count_and_exited_ones_do_not() -> None:
    placements = [_pl(0, ("web-1", "run", "running"), ("web-2", "run", "running"), ("web-3", "run", "exited")),
                  _pl(10, ("web-1", "stop", "running"), ("web-3", "run", "running"))]
    res = fencing.check(placements, [_ct(40, "web-1", "web-2", "web-3")], [], bound_s=15)
    assert sorted(v["container"] for v in res.violations) == ["web-1", "web-2"]


def test_an_info_write_read_through_an_info_cas_is_not_pruned() -> None:
    # found by hypothesis: v8 (info) -> cas v8->v9 (info) -> read v9 is linearizable; the info
    # write of v8 must not be pruned as "never observed": the cas observed it
    h = H().w("j1", "v8", 900, 900, outcome="info").cas("j1", "v8", "v9", 1000, 1000, outcome="info")
    h.r("j1", "v9", 1100, 1100)
    assert linear.check(h.ops()).valid is True


def _status(t: int, applied: dict[str, int | None]) -> list[dict[str, Any]]:
    return [{"time": t, "node": n, "ok": a is not None, "term": 2, "leader": "n1",
             "commit_index": a, "applied_index": a} for n, a in applied.items()]


def test_recovery_that_the_next_fault_interrupts_is_listed_not_counted() -> None:
    s = 1_000_000_000
    faults = [{"type": "end", "time": 10 * s, "kind": "isolate"},          # n3 catches up 1 s later
              {"type": "end", "time": 20 * s, "kind": "isolate-leader"},   # n3 killed 1 s after this heal...
              {"type": "start", "time": 21 * s, "kind": "kill-leader"},
              {"type": "end", "time": 31 * s, "kind": "kill-leader"}]      # ...restarts, caught up 2 s later
    status = (_status(9 * s, {"n1": 100, "n2": 100, "n3": 50}) + _status(11 * s, {"n1": 110, "n2": 110, "n3": 110})
              + _status(19 * s, {"n1": 200, "n2": 200, "n3": 150}) + _status(25 * s, {"n1": 260, "n2": 260, "n3": None})
              + _status(33 * s, {"n1": 300, "n2": 300, "n3": 300}))
    r = analyse.recovery(faults, status, ["n1", "n2", "n3"])
    by_kind = {f["after"]: f for f in r["faults"]}
    assert by_kind["isolate"]["caught_up_s"] == 1.0 and "interrupted_by" not in by_kind["isolate"]
    assert by_kind["isolate-leader"]["caught_up_s"] == 13.0  # measured until n3 is back from the kill
    assert by_kind["isolate-leader"]["interrupted_by"] == {"kind": "kill-leader", "after_s": 1.0}
    assert r["max_caught_up_s"] == 2.0 and [f["after"] for f in r["interrupted"]] == ["isolate-leader"]


# -- bridge mode leaves nothing behind (issue 16) --------------------------------------------------------------

def test_leftovers_checker_fails_on_anything_left_and_is_unknown_without_a_check() -> None:
    from checkers import leftovers

    clean = {"runtime": "runc", "after_faults": {"checked": True, "left": {}, "first_seen": {}, "waited_s": 0.0},
             "leftovers": {}}
    assert leftovers.check(clean)["valid"] is True
    assert leftovers.check({"runtime": "runc"})["valid"] == "unknown"          # no check recorded: never a pass
    stale = {**clean, "after_faults": {"checked": True, "left": {"a2": {"netns": ["raftctl-x-web-1"]}},
                                       "waited_s": 45.0}}
    res = leftovers.check(stale)
    assert res["valid"] is False and res["violations"][0]["left"] == {"a2": {"netns": ["raftctl-x-web-1"]}}
    after = {**clean, "leftovers": {"a1": {"links": ["rv0123456789"], "routes": [], "tables": [], "netns": []}}}
    assert leftovers.check(after)["valid"] is False
    # swept while the run waited for the agent's sweep: reported, not a failure
    swept = {**clean, "after_faults": {"checked": True, "left": {}, "first_seen": {"a1": {"netns": ["n"]}}}}
    assert leftovers.check(swept)["valid"] is True and leftovers.check(swept)["swept_during_wait"]


def test_unaccounted_names_only_what_no_container_of_the_agent_explains(tmp_path: Any) -> None:
    import containers
    from raftctl.agent.config import write_identity
    from raftctl.agent.netnames import Names

    agent = str(tmp_path / "a1")
    write_identity(agent, "0123456789ab", "a1")
    os.makedirs(os.path.join(agent, "runc", "containers", "web-00001"))
    names, other = Names("0123456789ab", "a1"), Names("0123456789ab", "a2")
    live, gone = names.netns_prefix + "web-00001", names.netns_prefix + "web-00002"
    netns = [live, gone, other.netns_prefix + "web-00003"]          # a2's namespace is a2's business
    links = ["lo", "eth0", names.bridge, names.veths("web-00001")[0], names.veths("web-00002")[0], "dummy0"]
    tables = [f"table ip {names.table}", "table ip raftctl_other"]
    got = containers.unaccounted(agent, netns, links, tables)
    assert got == {"netns": [gone], "links": sorted([names.veths("web-00002")[0], "dummy0"]),
                   "tables": ["table ip raftctl_other"]}
    assert containers.unaccounted(agent, [live], links[:4], tables[:1]) == {"netns": [], "links": [], "tables": []}
