"""The failover monitor's pure decision: who is declared down, and the mass-loss guard."""
import asyncio
import contextlib

import pytest

from raftctl.clock import FakeClock
from raftctl.node.failover import FailoverConfig, FailoverMonitor, judge
from raftctl.statemachine import commands as c

from .fake_replica import FakeReplica, machine, until, tick

CFG = FailoverConfig(ttl_s=3.0, max_silent_fraction=0.5, mass_interval_s=10.0)
UP = ["a", "b", "c", "d"]

CASES = [
    ("everyone heard recently", {m: 99.0 for m in UP}, None, [], False),
    ("one silent past the TTL", {"a": 90.0, "b": 99.0, "c": 99.0, "d": 99.0}, None, ["a"], False),
    ("exactly at the TTL is not yet down", {"a": 97.0, "b": 99.0, "c": 99.0, "d": 99.0}, None, [], False),
    ("half silent: not a mass loss", {"a": 90.0, "b": 90.0, "c": 99.0, "d": 99.0}, None, ["a", "b"], False),
    ("the longest silent first", {"a": 91.0, "b": 90.0, "c": 99.0, "d": 99.0}, None, ["b", "a"], False),
    ("most silent: guard, oldest first", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, None, ["b"], True),
    ("guard holds the next one back", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, 95.0, [], True),
    ("guard lets one go after the interval", {"a": 91.0, "b": 90.0, "c": 92.0, "d": 99.0}, 89.0, ["b"], True),
]


@pytest.mark.parametrize("name,seen,last_mass,down,guard", CASES, ids=[c[0] for c in CASES])
def test_judge(name, seen, last_mass, down, guard):
    v = judge(UP, seen, now=100.0, cfg=CFG, last_mass_down=last_mass)
    assert (v.down, v.guard_active) == (down, guard)


def test_new_machine_without_heartbeat_gets_a_fresh_ttl():
    assert judge(["a"], {}, now=100.0, cfg=CFG, last_mass_down=None).down == []


# -- the monitor on a fake clock: TTLs measured on its monotonic seconds --

async def fleet(clock: FakeClock, n: int = 4) -> FakeReplica:
    r = FakeReplica(clock)
    for cmd in [c.ClaimEpoch(term=3)] + [machine(f"m{i}") for i in range(1, n + 1)]:
        assert (await r.propose(cmd)).ok
    return r


async def test_a_machine_silent_past_its_ttl_is_declared_down_and_the_others_are_not():
    clock = FakeClock()
    r = await fleet(clock)
    # a new leader: everyone's TTL re-armed, with the grace to find this leader on top
    mon = FailoverMonitor(r, 3, FailoverConfig(ttl_s=3.0, leader_grace_s=2.0), clock=clock)
    clock.advance(4.0)
    for m in ("m1", "m2", "m3"):
        mon.heartbeat(m)
    clock.advance(1.0)                  # m4 silent for exactly the TTL and the grace: not yet
    await tick(mon)
    assert r.of(c.MachineDown) == []
    assert mon.status()["heartbeat_age_s"] == {"m1": 1.0, "m2": 1.0, "m3": 1.0, "m4": 5.0}
    clock.advance(0.001)
    await tick(mon)
    assert [(x.machine, x.reason) for x in r.of(c.MachineDown)] == [("m4", "no heartbeat for 5.0s (ttl 5s)")]
    assert r.state.machines["m4"].status == "down" and r.state.machines["m1"].status == "up"


async def test_the_mass_loss_guard_paces_itself_on_the_injected_clock():
    clock = FakeClock()
    r = await fleet(clock)
    mon = FailoverMonitor(r, 3, FailoverConfig(leader_grace_s=0.0, ttl_s=3.0, mass_interval_s=10.0), clock=clock)
    clock.advance(1.0)
    mon.heartbeat("m1")
    clock.advance(2.5)                  # m2, m3, m4 silent 3.5 s: three of four, a partition more likely than a fire
    await tick(mon)
    assert [x.machine for x in r.of(c.MachineDown)] == ["m2"] and mon.guard_active
    for _ in range(9):
        clock.advance(1.0)
        mon.heartbeat("m1")
        await tick(mon)
    assert len(r.of(c.MachineDown)) == 1  # 9 s later, still held back
    clock.advance(1.0)
    mon.heartbeat("m1")
    await tick(mon)
    assert [x.machine for x in r.of(c.MachineDown)] == ["m2", "m3"]


async def run_until_down(clock: FakeClock) -> FailoverMonitor:
    """A one-machine fleet's monitor loop on ``clock``, run until it proposes the silent machine down (the proposal
    runs beside the next ticks, which advance the fake clock while it is answered)."""
    r = await fleet(clock, n=1)
    mon = FailoverMonitor(r, 3, FailoverConfig(leader_grace_s=0.0, ttl_s=3.0), clock=clock)
    task = asyncio.create_task(mon.run())
    try:
        await until(lambda: mon.declaring or r.of(c.MachineDown), "the 3 s TTL passing (on the monitor's clock)")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return mon


async def test_the_monitor_loop_sleeps_on_its_clock():
    clock = FakeClock()
    await run_until_down(clock)
    assert set(clock.sleeps) == {0.2}                     # min(0.2, ttl / 5)
    assert 3.0 < sum(clock.sleeps) <= 3.2 + 1e-9          # down on the first pass past the TTL


# -- local health awareness: time the leader itself was held is not counted against the machines --

@pytest.mark.parametrize("late, counted_as", [
    (0.0, 0.0), (0.9, 0.0), (1.0, 0.0),     # up to held_free_s (1 s) late: the leader was merely busy
    (1.5, 0.5), (10.0, 9.0),                # past it: the rest was the leader's own hold
])
async def test_a_held_leader_does_not_count_its_own_hold_against_the_machines(late, counted_as):
    clock = FakeClock()
    r = await fleet(clock, n=2)
    mon = FailoverMonitor(r, 3, FailoverConfig(leader_grace_s=0.0, ttl_s=3.0), clock=clock)
    mon.heartbeat("m1")
    mon.heartbeat("m2")
    clock.advance(2.0)
    mon.heartbeat("m2")
    clock.advance(late)                   # the leader's loop held: m1's heartbeat 2 + late s ago in real time
    mon.was_held(late)
    await tick(mon)
    silent = 2.0 + late - counted_as
    assert mon.held_s == counted_as and mon.ages()["m1"] == round(silent, 2)
    assert [x.machine for x in r.of(c.MachineDown)] == (["m1"] if silent > 3.0 else [])
    clock.advance(max(0.0, 3.0 - silent) + 0.01)     # just past m1's TTL on the observed clock: m1 only
    await tick(mon)
    assert [x.machine for x in r.of(c.MachineDown)] == ["m1"]


class HeldOnce(FakeClock):
    """A fake clock whose 10th sleep overshoots by ``extra`` s (the loop held past the monitor's wake-up)."""

    def __init__(self, extra: float) -> None:
        super().__init__()
        self.extra = extra

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if len(self.sleeps) == 10:
            self.advance(self.extra)


async def test_the_monitor_loop_measures_its_own_lateness():
    clock = HeldOnce(extra=6.0)
    mon = await run_until_down(clock)
    assert mon.held_s == pytest.approx(5.0) and mon.status()["held_s"] == 5.0
    # 3 s of observed silence: 8 s of real time, 5 of them the leader's own hold
    assert 8.0 < sum(clock.sleeps) + 6.0 <= 8.2 + 1e-9


async def test_status_lists_the_machines_heard_from_longest_ago_and_the_metric_all_of_them():
    # at 3,000 machines every GET /v1/status carried a 3,000-entry map of heartbeat ages
    from raftctl.node.failover import STATUS_OLDEST
    clock = FakeClock()
    n = STATUS_OLDEST + 5
    r = await fleet(clock, n)
    mon = FailoverMonitor(r, 3, FailoverConfig(ttl_s=60.0), clock=clock)
    for i in range(1, n + 1):   # m1 first (the oldest), m25 last
        mon.heartbeat(f"m{i}")
        clock.advance(0.1)
    st = mon.status()
    assert st["machines_heard"] == n and len(mon.ages()) == n
    assert sorted(st["heartbeat_age_s"], key=lambda m: int(m[1:])) == [f"m{i}" for i in range(1, STATUS_OLDEST + 1)]
    assert st["heartbeat_age_s"]["m1"] == mon.ages()["m1"] == 2.5
