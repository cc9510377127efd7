"""A heartbeat counts from when the agent sent it (session 16): each copy carries ``sent_ms`` (the agent's
monotonic clock), and the time it waited in the leader's queues past the quickest one from that machine lately
is taken off the machine's age, up to a cap (``credit_max_s``, ``credit_max_ttl`` of the TTL), less the time the
leader was held meanwhile (already left out of every age). At 10,000 machines a frozen machine's last heartbeat
was read up to 2 s after the freeze and it was declared down 31.96 s after it (TTL 30 s + 2 s: no margin left).

The pure parts by table; the monitor on a fake clock; the route over the real handler; the agent's client over
real HTTP on loopback."""
from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from raftctl.agent.control import ControlClient
from raftctl.clock import FakeClock
from raftctl.node.failover import (SENT_FLOOR_RISE, SENT_RESET_S, FailoverConfig, FailoverMonitor,
                                   heartbeat_credit, queued_for)
from raftctl.statemachine import commands as c

from .fake_replica import FakeReplica, machine, tick
from .test_heartbeat_stats import api, leader_with_web

# (name, sample, floor, now, waited, new floor)
QUEUED = [
    ("the first heartbeat under this leader: nothing credited", 5.0, None, 100.0, 0.0, (5.0, 100.0)),
    ("as quick as the quickest: no wait", 5.0, (5.0, 90.0), 100.0, 0.0, (5.0, 100.0)),
    ("quicker: the new floor", 4.5, (5.0, 90.0), 100.0, 0.0, (4.5, 100.0)),
    ("1.5 s slower than the floor: waited 1.5 s", 6.5, (5.0, 100.0), 100.0, 1.5, (5.0, 100.0)),
    ("the floor rises with the time since it was set (a slower clock)", 6.5, (5.0, 90.0), 100.0,
     pytest.approx(1.5 - 10 * SENT_FLOOR_RISE), (pytest.approx(5.0 + 10 * SENT_FLOOR_RISE), 100.0)),
    ("a jump past SENT_RESET_S is a new clock: started over", 5.0 + SENT_RESET_S + 1, (5.0, 100.0), 100.0, 0.0,
     (5.0 + SENT_RESET_S + 1, 100.0)),
]


@pytest.mark.parametrize("name,sample,floor,now,waited,new", QUEUED, ids=[q[0] for q in QUEUED])
def test_queued_for(name, sample, floor, now, waited, new):
    assert queued_for(sample, floor, now) == (waited, new)


@pytest.mark.parametrize("waited,held,cap,credit", [
    (1.5, 0.0, 2.0, 1.5),        # the wait, all of it
    (3.0, 0.0, 2.0, 2.0),        # at most the cap
    (1.5, 1.0, 2.0, 0.5),        # less the hold, which every machine's age already leaves out
    (1.0, 2.5, 2.0, 0.0),        # never negative
])
def test_heartbeat_credit(waited, held, cap, credit):
    assert heartbeat_credit(waited, held, cap) == credit


# -- the monitor on a fake clock --

CFG = FailoverConfig(ttl_s=30.0, interval_s=10.0, leader_grace_s=0.0)


async def fleet(clock: FakeClock, n: int) -> FakeReplica:
    r = FakeReplica(clock)
    for cmd in [c.ClaimEpoch(term=3)] + [machine(f"m{i}") for i in range(1, n + 1)]:
        assert (await r.propose(cmd)).ok
    return r


def sent(clock: FakeClock, ago: float, offset: float = -1000.0) -> int:
    """An agent's ``sent_ms`` for a copy sent ``ago`` s before now, on a clock ``offset`` s behind ours."""
    return round((clock.monotonic() - ago - offset) * 1000)


async def declared_after_freeze(credit: bool) -> float:
    """m1 heartbeats on time, then sends one that the leader reads 1.5 s later and is frozen as it sends it:
    seconds from the freeze to its MachineDown (m2 keeps beating)."""
    clock = FakeClock()
    r = await fleet(clock, 2)
    mon = FailoverMonitor(r, 3, CFG, clock=clock)
    stamp = (lambda ago: sent(clock, ago)) if credit else (lambda ago: None)
    mon.heartbeat("m1", stamp(0.0))
    clock.advance(10.0)
    mon.heartbeat("m1", stamp(0.0))
    clock.advance(10.0)
    frozen_at = clock.monotonic()         # m1 sends its last heartbeat and is frozen
    clock.advance(1.5)
    mon.heartbeat("m1", stamp(1.5))       # read 1.5 s later
    while not r.of(c.MachineDown):
        mon.heartbeat("m2", stamp(0.0))
        clock.advance(0.2)
        await tick(mon)
    return clock.monotonic() - frozen_at


async def test_a_machine_frozen_right_after_a_late_read_heartbeat_is_declared_down_a_ttl_after_it_sent_it():
    assert 30.0 < await declared_after_freeze(credit=True) <= 30.2 + 1e-9
    # an agent of the previous release (no sent_ms): a TTL after the leader read it
    assert 31.5 < await declared_after_freeze(credit=False) <= 31.7 + 1e-9


@pytest.mark.parametrize("ttl,waited,credited", [
    (30.0, 1.5, 1.5),      # within the cap (2 s)
    (30.0, 5.0, 2.0),      # credit_max_s
    (3.0, 1.5, 0.3),       # credit_max_ttl: a tenth of a 3 s TTL
])
async def test_the_credit_is_capped(ttl, waited, credited):
    clock = FakeClock()
    r = await fleet(clock, 1)
    mon = FailoverMonitor(r, 3, FailoverConfig(ttl_s=ttl, interval_s=ttl / 3, leader_grace_s=0.0,
                                               max_heartbeats_per_s=0), clock=clock)
    mon.heartbeat("m1", sent(clock, 0.0))
    clock.advance(10.0)
    mon.heartbeat("m1", sent(clock, waited))
    # less the floor's rise over the 10 s since the first (SENT_FLOOR_RISE: 0.01 s)
    assert mon.ages()["m1"] == pytest.approx(min(credited, waited - 10 * SENT_FLOOR_RISE))
    st = mon.status()["heartbeat_credit"]
    assert st == {"cap_s": min(2.0, ttl / 10), "heartbeats": 1, "max_s": mon.ages()["m1"]}


async def test_time_the_leader_was_held_while_a_heartbeat_waited_is_not_credited_twice():
    clock = FakeClock()
    r = await fleet(clock, 1)
    mon = FailoverMonitor(r, 3, CFG, clock=clock)
    mon.heartbeat("m1", sent(clock, 0.0))
    clock.advance(10.0)
    s = sent(clock, 0.0)                  # sent now; the leader's loop is then held 2 s (1 s past held_free_s)
    clock.advance(2.0)
    mon.was_held(2.0)
    mon.heartbeat("m1", s)                # waited 2 s, 1 of them already left out of every age
    assert mon.held_s == 1.0 and mon.ages()["m1"] == pytest.approx(1.0 - 10 * SENT_FLOOR_RISE)


async def test_a_heartbeat_never_makes_its_machine_older_than_it_was():
    clock = FakeClock()
    r = await fleet(clock, 1)
    mon = FailoverMonitor(r, 3, CFG, clock=clock)     # a new leader: m1 re-armed now
    mon.heartbeat("m1", sent(clock, 0.0))
    clock.advance(0.5)
    mon.heartbeat("m1", sent(clock, 1.5))              # a copy sent before the last one was read
    assert mon.ages()["m1"] == pytest.approx(0.5)


async def test_a_credited_machine_behind_younger_ones_is_still_found_silent():
    # m1's credited heartbeat puts it at the end of the monitor's order, older than m2 before it: the scan for
    # silent machines looks past the first young one by the cap
    clock = FakeClock()
    r = await fleet(clock, 2)
    mon = FailoverMonitor(r, 3, CFG, clock=clock)
    mon.heartbeat("m1", sent(clock, 0.0))
    clock.advance(10.0)
    mon.heartbeat("m2", sent(clock, 0.0))
    clock.advance(0.1)
    mon.heartbeat("m1", sent(clock, 1.6))              # counted from 1.5 s before m2's
    clock.advance(30.0 - 1.5 + 0.05)                    # m1 silent 30.05 s, m2 28.55 s
    await tick(mon)
    assert [x.machine for x in r.of(c.MachineDown)] == ["m1"]


# -- the route --

@pytest.mark.parametrize("bad", ["12", -1, 2 ** 53, 1.5, True, [1]])
async def test_a_bad_sent_ms_is_refused_naming_the_field(bad: Any):
    r, _ = await leader_with_web()
    async with api(r) as client:
        resp = await client.post("/v1/agent/heartbeat", json={"machine": "m1", "sent_ms": bad})
        got = await resp.json()
    assert (resp.status, got["error"]["field"]) == (400, "sent_ms"), got


async def test_the_route_credits_a_heartbeat_by_its_sent_ms():
    r, _ = await leader_with_web()
    mon = r.leadership  # type: ignore[attr-defined]
    clock = r.clock     # type: ignore[attr-defined]
    async with api(r) as client:
        assert (await client.post("/v1/agent/heartbeat", json={"machine": "m1", "sent_ms": sent(clock, 0)})).ok
        clock.advance(1.0)
        assert (await client.post("/v1/agent/heartbeat", json={"machine": "m1", "sent_ms": sent(clock, 0.25)})).ok
    assert mon.ages()["m1"] == pytest.approx(0.25) and mon.credited_heartbeats == 1   # TTL 3 s: cap 0.3 s


# -- the agent stamps every copy it sends --

async def test_the_agent_stamps_each_copy_of_a_heartbeat_when_it_sends_it():
    bodies: list[dict[str, Any]] = []
    urls: list[str] = []

    async def follower(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"error": {"code": "not_leader", "message": "not the leader",
                                            "details": {"leader_api": urls[1]}}}, status=503)

    async def leader(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"machine": "m1", "status": "up", "interval_s": 1.0, "ttl_s": 3.0})

    runners = []
    for handler in (follower, leader):
        app = web.Application()
        app.router.add_post("/v1/agent/heartbeat", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls.append("http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        runners.append(runner)
    try:
        before = time.monotonic() * 1000
        async with ControlClient(urls, "tok") as control:
            control.leader = urls[0]
            await control.heartbeat("m1")
        after = time.monotonic() * 1000
    finally:
        for runner in runners:
            await runner.cleanup()
    assert [b["machine"] for b in bodies] == ["m1", "m1"]
    stamps = [b["sent_ms"] for b in bodies]
    assert all(isinstance(s, int) for s in stamps) and before - 1 <= stamps[0] <= stamps[1] <= after + 1
