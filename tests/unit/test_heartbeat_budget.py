"""The leader's heartbeat budget (issue 15): the interval told to agents follows the fleet, and no machine is
declared down before the TTL it was told, whether the interval shrinks or a new leader re-arms.

The pure part table-driven; the monitor on a FakeClock over the real state machine (FakeReplica)."""
from __future__ import annotations

import pytest

from raftctl.clock import FakeClock
from raftctl.node.failover import FailoverConfig, FailoverMonitor, judge, told_interval, ttl_for
from raftctl.statemachine import commands as c

from .fake_replica import FakeReplica, machine, tick

BUDGET = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=2000)

INTERVALS = [
    # name, up machines, current interval, config, interval told
    ("no machine", 0, None, BUDGET, 1.0),
    ("1,000 machines: under budget, the base interval", 1000, None, BUDGET, 1.0),
    ("2,000 machines: exactly the budget", 2000, None, BUDGET, 1.0),
    ("2,001 machines: over, rounded up to 0.1 s", 2001, None, BUDGET, 1.1),
    ("10,000 machines: 5 s", 10_000, None, BUDGET, 5.0),
    ("10,001 machines: 5.1 s, never under budget", 10_001, None, BUDGET, 5.1),
    ("a huge fleet stops at max_interval_s", 10**7, None, BUDGET, 60.0),
    ("grows at once from the current", 11_000, 5.0, BUDGET, 5.5),
    ("within the hysteresis band: kept", 9_000, 5.0, BUDGET, 5.0),
    ("just inside the band (4.0 = 5 x 0.8): kept", 8_000, 5.0, BUDGET, 5.0),
    ("past the band: shrinks to what the fleet asks", 7_000, 5.0, BUDGET, 3.5),
    ("fleet gone: back to the base", 10, 5.0, BUDGET, 1.0),
    ("budget 0: no budget, always the base", 10**6, None, FailoverConfig(max_heartbeats_per_s=0), 1.0),
    ("the default budget (500/s): 10,000 machines beat every 20 s", 10_000, None, FailoverConfig(), 20.0),
    ("the default budget: 500 machines keep the base", 500, None, FailoverConfig(), 1.0),
    ("a longer base is the floor", 1000, None, FailoverConfig(ttl_s=6.0, interval_s=2.0), 2.0),
    ("a base above max_interval_s is still the floor", 10, None,
     FailoverConfig(ttl_s=300.0, interval_s=100.0, max_interval_s=60.0), 100.0),
]


@pytest.mark.parametrize("name,n_up,current,cfg,want", INTERVALS, ids=[x[0] for x in INTERVALS])
def test_interval_told_for_a_fleet(name, n_up, current, cfg, want):
    assert told_interval(n_up, cfg, current) == want


@pytest.mark.parametrize("interval,cfg,ttl", [
    (1.0, BUDGET, 3.0), (5.0, BUDGET, 15.0), (60.0, BUDGET, 180.0),
    (5.0, FailoverConfig(ttl_s=3600.0, interval_s=1.0), 18000.0),      # tests' 1 h TTL keeps its multiple
])
def test_the_ttl_is_the_same_multiple_of_the_interval(interval, cfg, ttl):
    assert ttl_for(interval, cfg) == ttl


def test_the_interval_does_not_flap_on_a_fleet_that_wobbles():
    current = told_interval(10_000, BUDGET)
    seen = set()
    for n in [10_000, 9_500, 10_000, 8_100, 9_999, 8_500, 10_000]:
        current = told_interval(n, BUDGET, current)
        seen.add(current)
    assert seen == {5.0}


JUDGED = [
    # name, seen (the only machine a), current TTL, told a, down
    ("silent past the current TTL but told a longer one: up", 90.0, 3.0, 15.0, []),
    ("silent past the TTL it was told: down", 84.9, 3.0, 15.0, ["a"]),
    ("told a shorter TTL than the current one: judged by the current", 95.0, 15.0, 3.0, []),
    ("told nothing yet: the current TTL", 96.9, 3.0, None, ["a"]),
]


@pytest.mark.parametrize("name,seen,ttl,told,down", JUDGED, ids=[x[0] for x in JUDGED])
def test_judge_uses_the_larger_of_the_told_and_current_ttl(name, seen, ttl, told, down):
    v = judge(["a", "b", "c"], {"a": seen, "b": 99.0, "c": 99.0}, now=100.0, cfg=BUDGET, last_mass_down=None,
              ttl_s=ttl, told={} if told is None else {"a": told})
    assert v.down == down


# -- the monitor ---------------------------------------------------------------------------------------

async def fleet(clock: FakeClock, n: int) -> FakeReplica:
    r = FakeReplica(clock)
    for cmd in [c.ClaimEpoch(term=3)] + [machine(f"m{i:02d}") for i in range(n)]:
        assert (await r.propose(cmd)).ok
    return r


def downs(r: FakeReplica) -> list[str]:
    return [x.machine for x in r.of(c.MachineDown)]


async def test_heartbeats_are_answered_with_the_interval_of_the_fleet_and_it_follows_registrations():
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=2)
    r = await fleet(clock, 2)
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    assert mon.heartbeat("m00") == (1.0, 3.0)          # 2 machines at 2/s
    for i in range(2, 10):
        assert (await r.propose(machine(f"m{i:02d}"))).ok
    await tick(mon)                                   # the table moved: 10 up machines at 2/s
    assert mon.heartbeat("m00") == (5.0, 15.0)
    assert mon.status()["interval_s"] == 5.0 and mon.status()["ttl_s"] == 15.0


async def test_no_early_down_when_the_fleet_shrinks_for_a_machine_told_a_long_ttl():
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=2, max_silent_fraction=0.9)
    r = await fleet(clock, 10)
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    names = [f"m{i:02d}" for i in range(10)]
    for m in names:
        assert mon.heartbeat(m) == (5.0, 15.0)         # 10 machines at 2/s: every 5 s, TTL 15 s
    # 7 machines leave (declared down by others): 3 up want 1.5 s, past the band, so the TTL falls to 4.5 s
    for m in names[3:]:
        assert (await r.propose(c.MachineDown(machine=m, epoch=3))).ok
    await tick(mon)
    assert (mon.interval_s, mon.ttl_s) == (1.5, 4.5)
    # m00 (told 15 s) falls silent; m01 and m02 heartbeat at the new interval and are told 4.5 s
    told_at = mon.last_seen["m00"]
    while clock.monotonic() + 0.5 - told_at <= 15.0:
        clock.advance(0.5)
        for m in ("m01", "m02"):
            assert mon.heartbeat(m) == (1.5, 4.5)
        await tick(mon)
        assert downs(r) == names[3:], f"m00 down {clock.monotonic() - told_at:.1f} s after " \
                                      "its last heartbeat, told 15 s"
    clock.advance(0.5)
    await tick(mon)
    assert downs(r) == names[3:] + ["m00"]
    assert r.of(c.MachineDown)[-1].reason == "no heartbeat for 15.5s (ttl 15s)"


async def test_a_machine_told_a_short_ttl_is_judged_by_the_current_longer_one():
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=2)
    r = await fleet(clock, 2)
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    assert mon.heartbeat("m00") == (1.0, 3.0)
    for i in range(2, 10):
        assert (await r.propose(machine(f"m{i:02d}"))).ok
    for m in [f"m{i:02d}" for i in range(1, 10)]:
        mon.heartbeat(m)
    clock.advance(4.0)                                 # m00 silent past the 3 s it was told
    await tick(mon)                                   # ... but the interval grew: TTL 15 s now
    assert mon.ttl_s == 15.0 and downs(r) == []


async def test_a_new_leader_re_arms_with_the_largest_ttl_it_could_have_told():
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=2)
    r = await fleet(clock, 10)
    for i in range(2, 10):                             # 2 up of 10: a leader before could have told 5 s / 15 s
        assert (await r.propose(c.MachineDown(machine=f"m{i:02d}", epoch=3))).ok
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    assert (mon.interval_s, mon.ttl_s, mon.rearm_ttl_s) == (1.0, 3.0, 15.0 + cfg.leader_grace_s)
    before = len(downs(r))
    clock.advance(15.0 + cfg.leader_grace_s)           # neither m00 nor m01 heard since the re-arm
    await tick(mon)
    assert downs(r)[before:] == []
    clock.advance(0.1)
    await tick(mon)
    assert downs(r)[before:] == ["m00"]                # both up ones silent: the mass-loss guard takes one


async def test_without_a_budget_the_monitor_keeps_the_configured_ttl():
    clock = FakeClock()
    r = await fleet(clock, 10)
    mon = FailoverMonitor(r, 3, FailoverConfig(ttl_s=3.0, max_heartbeats_per_s=0), clock=clock)
    assert mon.rearm_ttl_s == 3.0 + mon.cfg.leader_grace_s and mon.heartbeat("m00") == (1.0, 3.0)


async def test_a_new_leader_gives_every_machine_the_grace_to_find_it_and_then_only_the_ttl():
    """An agent whose heartbeat was parked on the old leader needs a few seconds to find the new one: the re-arm
    adds leader_grace_s. A machine heard once by this leader is judged by the TTL it was told, grace gone."""
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=0, leader_grace_s=5.0)
    r = await fleet(clock, 6)
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    mon.heartbeat("m05")
    clock.advance(3.1)
    await tick(mon)
    assert downs(r) == ["m05"]                          # heard by this leader: its 3 s TTL, no grace
    clock.advance(4.9)                                  # 8.0 s = TTL 3 s + grace 5 s since the election
    await tick(mon)
    assert downs(r) == ["m05"]
    clock.advance(0.1)
    await tick(mon)                                    # 4 of 5 up silent: the mass-loss guard takes one
    assert downs(r) == ["m05", "m00"]


async def test_the_mass_loss_guard_counts_the_machines_in_the_table_not_the_ones_still_up():
    """3 machines, all silent: one is declared down, then the guard holds the other two for mass_interval_s.
    Counted on the up machines (2 < min_machines_for_guard), the first down switched the guard off and all 3 went
    down within 0.21 s (jepsen-style seed 1, a 4 s pause of the leader)."""
    clock = FakeClock()
    cfg = FailoverConfig(ttl_s=3.0, interval_s=1.0, max_heartbeats_per_s=0, leader_grace_s=0.0, mass_interval_s=10.0)
    r = await fleet(clock, 3)
    mon = FailoverMonitor(r, 3, cfg, clock=clock)
    clock.advance(3.1)
    await tick(mon)
    assert downs(r) == ["m00"] and mon.guard_active
    for _ in range(5):
        clock.advance(0.2)
        await tick(mon)
    assert downs(r) == ["m00"] and mon.guard_active and mon.silent == ["m01", "m02"]
    clock.advance(10.0)
    await tick(mon)
    assert downs(r) == ["m00", "m01"]


def test_the_servers_flag_and_config_default_to_the_monitors_budget():
    """`raftctl server --max-heartbeats-per-second` (a literal: the CLI imports the node lazily) and ServerConfig
    default to FailoverConfig's budget, the one place it is decided."""
    from raftctl.cli.main import cli
    from raftctl.node.replica import ServerConfig
    flag = next(p for p in cli.commands["server"].params if p.name == "max_heartbeats")
    assert flag.default == ServerConfig.max_heartbeats_per_s == FailoverConfig().max_heartbeats_per_s
