"""Silence survives a leader change: the leader commits the machines it has not heard from (MachinesSilent) and a
new leader's TTLs for them go on from there, so leaders changing faster than the TTL cannot keep a dead machine up
(10,000 machines, TTL 30 s, session 10: 0 of 100 frozen machines declared down in 120 s while the term went 8 -> 16)."""
from __future__ import annotations

import asyncio

import pytest

from raftctl.clock import FakeClock
from raftctl.node.failover import FailoverConfig, FailoverMonitor, credit, silence_due
from raftctl.statemachine import commands as c
from raftctl.statemachine.apply import apply
from raftctl.statemachine.state import State

from .fake_replica import FakeReplica, machine, tick

TTL = 3.0
TICK = 0.2


# credit(silence_ms, up, now, ttl_s, floor_s) -> machine: (last seen, TTL judged by); now = 100
@pytest.mark.parametrize("name,silence,want", [
    # silent 2 s of a 3 s TTL: 1 s left, but never less than the floor (5 s) to find this leader
    ("short remainder takes the floor", {"a": 2000}, {"a": (98.0, 7.0)}),
    # silent 0.5 s: 2.5 s left < floor 5: floor again
    ("young silence", {"a": 500}, {"a": (99.5, 5.5)}),
    ("not up: left out", {"gone": 9000}, {}),
    ("zero: a fresh re-arm", {"a": 0}, {}),
])
def test_credit_floor_case(name, silence, want):
    assert credit(silence, {"a"}, 100.0, ttl_s=3.0, floor_s=5.0) == want


@pytest.mark.parametrize("silent_ms,due_in", [
    (10_000, 20.0),       # 30 - 10: the rest of its TTL (more than the 15 s floor)
    (20_000, 15.0),       # 30 - 20 = 10 < floor 15
    (40_000, 15.0),       # already past its TTL: the floor
    (1_000, 29.0),        # 29 s left: sooner than a fresh re-arm (30 + 5 grace)
])
def test_credit_at_fleet_scale(silent_ms, due_in):
    (seen, ttl), = credit({"m": silent_ms}, {"m"}, 1000.0, ttl_s=30.0, floor_s=15.0).values()
    assert seen + ttl == pytest.approx(1000.0 + due_in)     # declared down once silent past its TTL: seen + ttl


@pytest.mark.parametrize("listed,committed,since,due", [
    ({}, set(), 9.0, False),                    # nothing silent, nothing to clear
    ({"a": 4.0}, set(), 1.0, False),            # at most every 2 s
    ({"a": 4.0}, set(), 2.0, True),
    ({}, {"a"}, 2.0, True),                     # a list committed before is cleared
    ({"a": 6.0}, {"a"}, 2.5, True),             # the same machines: ages move on
])
def test_silence_due(listed, committed, since, due):
    assert silence_due(listed, committed, since, 2.0) is due


def _state_with(*machines: str) -> State:
    s = State()
    assert apply(s, c.ClaimEpoch(term=4, node="n1")).ok
    for m in machines:
        assert apply(s, machine(m)).ok
    return s


def test_apply_keeps_only_up_machines_and_machine_down_drops_its_entry():
    s = _state_with("m1", "m2", "m3")
    assert apply(s, c.MachineDown(machine="m3", epoch=4)).ok
    res = apply(s, c.MachinesSilent(silent={"m2": 9000, "m1": 1200, "m3": 5, "zz": 7}, epoch=4, at=77))
    assert res.ok and res.value == {"machines": 2}
    assert (s.silence, s.silence_at) == ({"m1": 1200, "m2": 9000}, 77)
    assert apply(s, c.MachineDown(machine="m2", epoch=4)).ok
    assert s.silence == {"m1": 1200}
    restored = State.restore(s.snapshot())
    assert (restored.silence, restored.silence_at) == ({"m1": 1200}, 77)
    assert restored.snapshot() == s.snapshot()


@pytest.mark.parametrize("silent,field", [
    ({"m1": -1}, "silent.m1"), ({"m1": True}, "silent.m1"), ({"m1": "9"}, "silent.m1"),
    ({f"m{i}": 1 for i in range(1001)}, "silent"),
])
def test_apply_refuses_a_bad_list_and_keeps_the_last_one(silent, field):
    s = _state_with("m1")
    assert apply(s, c.MachinesSilent(silent={"m1": 5}, epoch=4)).ok
    res = apply(s, c.MachinesSilent(silent=silent, epoch=4))
    assert not res.ok and res.error.field == field
    assert s.silence == {"m1": 5}


def test_a_stale_leaders_list_is_refused():
    s = _state_with("m1")
    res = apply(s, c.MachinesSilent(silent={"m1": 5}, epoch=3))
    assert not res.ok and res.error.code == "stale_epoch" and s.silence == {}


async def _run(mon: FailoverMonitor, clock: FakeClock, seconds: float, alive: list[str]) -> None:
    for _ in range(round(seconds / TICK)):
        clock.advance(TICK)
        for m in alive:
            mon.heartbeat(m)
        await tick(mon)
        for _ in range(3):               # the silence proposal runs beside the ticks: let it commit
            await asyncio.sleep(0)


def _down_at(r: FakeReplica, m: str) -> int | None:
    return next((x.at for x in r.of(c.MachineDown) if x.machine == m), None)


@pytest.mark.parametrize("carry,declared", [(True, True), (False, False)], ids=["committed silence", "re-armed afresh"])
async def test_leaders_changing_faster_than_the_ttl_still_declare_a_frozen_machine_down(carry, declared, monkeypatch):
    """TTL 3 s, grace 1 s, a new leader every 2.5 s; machine m0 freezes at the start. With the committed silence
    it is declared down; re-armed afresh by every leader (the control: MachinesSilent not applied) it never is."""
    clock = FakeClock()
    r = FakeReplica(clock)
    for m in ("m0", "m1", "m2", "m3"):
        assert (await r.propose(machine(m))).ok
    if not carry:
        real = r.propose

        async def propose(cmd, timeout=None):   # the state machine ignores the list: every leader starts afresh
            return await real(cmd, timeout) if not isinstance(cmd, c.MachinesSilent) else apply(State(), c.Noop())
        monkeypatch.setattr(r, "propose", propose)
    cfg = FailoverConfig(ttl_s=TTL, interval_s=1.0, leader_grace_s=1.0, max_heartbeats_per_s=0,
                         silence_every_s=0.4)
    frozen_ms = clock.now_ms()
    for term in range(1, 9):                                   # 8 leaders, 20 s
        assert (await r.propose(c.ClaimEpoch(term=term, node=f"n{term}"))).ok
        mon = FailoverMonitor(r, term, cfg, clock=clock)
        await _run(mon, clock, 2.5, ["m1", "m2", "m3"])
    at = _down_at(r, "m0")
    assert (at is not None) is declared
    if declared:
        # leaders 1-2 re-arm it (it is not yet listed: silent <= half a TTL when leader 1 ends); from leader 3 on
        # it carries its silence; declared once past its TTL counting that, not before the floor (grace + interval)
        assert at - frozen_ms <= 10_000
    assert all(r.state.machines[m].status == "up" for m in ("m1", "m2", "m3"))


CFG = FailoverConfig(ttl_s=TTL, interval_s=1.0, leader_grace_s=1.0, max_heartbeats_per_s=0)


async def _leader_after_silence(silent_ms: dict[str, int]) -> tuple[FakeClock, FakeReplica, FailoverMonitor]:
    """Machines m1 and m2; the leader of epoch 2 committed ``silent_ms``; the monitor of epoch 3's new leader."""
    clock = FakeClock()
    r = FakeReplica(clock)
    for m in ("m1", "m2"):
        assert (await r.propose(machine(m))).ok
    assert (await r.propose(c.ClaimEpoch(term=2, node="n2"))).ok
    assert (await r.propose(c.MachinesSilent(silent=silent_ms, epoch=2))).ok
    assert (await r.propose(c.ClaimEpoch(term=3, node="n3"))).ok
    return clock, r, FailoverMonitor(r, 3, CFG, clock=clock)


async def test_a_live_machine_listed_by_the_last_leader_gets_the_floor_to_find_the_new_one():
    """The last leader listed m1 silent for 9 s (of a 3 s TTL: it could not reach that leader); a new leader gives
    it grace + one interval (2 s) to beat here, and its heartbeat then keeps it up."""
    clock, r, mon = await _leader_after_silence({"m1": 9000})
    assert mon.status()["credited"] == 1
    await _run(mon, clock, 1.8, ["m2"])                        # silent 1.8 s under this leader: still up
    assert _down_at(r, "m1") is None
    await _run(mon, clock, 5.0, ["m1", "m2"])                  # it found us
    assert _down_at(r, "m1") is None
    # the list this leader commits no longer has it
    assert r.state.silence == {}


async def test_a_tick_does_not_wait_for_the_silence_commit():
    """Under load a commit takes seconds: the next verdict must not wait behind the silence list's."""
    clock = FakeClock()
    r = FakeReplica(clock)
    for m in ("m1", "m2"):
        assert (await r.propose(machine(m))).ok
    assert (await r.propose(c.ClaimEpoch(term=2, node="n2"))).ok
    release = asyncio.Event()
    real = r.propose

    async def propose(cmd, timeout=None):
        if isinstance(cmd, c.MachinesSilent):
            await release.wait()
        return await real(cmd, timeout)
    r.propose = propose  # type: ignore[method-assign]
    mon = FailoverMonitor(r, 2, CFG, clock=clock)
    await _run(mon, clock, 3.0, ["m2"])          # m1 silent: listed (a proposal stuck), then past its TTL
    await _run(mon, clock, 2.0, ["m2"])
    assert _down_at(r, "m1") is not None         # declared while the silence proposal still waits
    assert r.state.silence == {}
    release.set()
    await _run(mon, clock, 2.4, ["m2"])
    assert mon.status()["silence_committed"] == 0   # m1 is down: the list that committed no longer has it


async def test_a_frozen_machine_listed_by_the_last_leader_is_declared_at_the_floor_not_a_full_ttl_later():
    clock, r, mon = await _leader_after_silence({"m1": 2500})
    start_ms = clock.now_ms()
    await _run(mon, clock, 6.0, ["m2"])
    at = _down_at(r, "m1")
    # floor: grace 1 + interval 1 = 2 s (the rest of its TTL, 0.5 s, is shorter); a fresh re-arm: 3 + 1 = 4 s
    assert at is not None and 2000 <= at - start_ms <= 2000 + TICK * 1000 + 1
