"""Health-check threshold logic and restart backoff, on a fake clock."""
from __future__ import annotations

import asyncio
import os

import pytest

from raftctl.agent.backoff import Backoff, should_restart
from raftctl.agent.health import (STARTUP_RETRY_GROWTH, STARTUP_RETRY_S, HealthMonitor, HealthPolicy, HealthTracker,
                                  make_probe, probe_http, probe_tcp)
from raftctl.agent.runtime.base import ContainerSpec
from raftctl.agent.runtime.sim import SimDriver, SimScript
from raftctl.statemachine.records import Health, Restart


def test_threshold_needs_consecutive_failures():
    t = HealthTracker(HealthPolicy(interval_s=1, failures=3), started_at=0.0)
    assert t.status == "unknown"
    assert t.record(True, 0.0) == "healthy"
    assert t.record(False, 1.0) is None and t.record(False, 2.0) is None
    assert t.record(True, 3.0) is None                    # a success resets the count
    assert [t.record(False, x) for x in (4.0, 5.0, 6.0)] == [None, None, "unhealthy"]
    assert t.record(True, 7.0) == "healthy"
    assert t.due(7.5) is False and t.due(8.0) is True


def test_failures_inside_start_grace_do_not_count():
    t = HealthTracker(HealthPolicy(failures=1, grace_s=5), started_at=100.0)
    assert t.record(False, 101.0) is None and t.record(False, 104.9) is None
    assert t.status == "unknown"
    assert t.record(False, 105.0) == "unhealthy"


def test_backoff_grows_caps_and_resets_after_a_stable_run():
    b = Backoff(initial_s=0.1, max_s=1.0, reset_s=10.0)
    delays = []
    now = 0.0
    for _ in range(6):
        b.on_start(now)
        now += 1.0                                         # crashes after 1 s each time
        d = b.on_exit(now)
        delays.append(d)
        now += d
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.on_start(now)
    assert not b.stable(now + 9.9) and b.stable(now + 10.0)
    assert b.on_exit(now + 10.0) == pytest.approx(0.1)     # stable run: back to the start
    b = Backoff.from_spec(Restart(initial=250, max=30_000, reset=120_000))
    assert (b.initial_s, b.max_s, b.reset_s) == (0.25, 30.0, 120.0)


def test_restart_policies():
    assert should_restart("always", 0) and should_restart("always", 1)
    assert not should_restart("on-failure", 0) and should_restart("on-failure", 2)
    assert should_restart("on-failure", 0, oom_killed=True) and should_restart("on-failure", 0, unhealthy=True)
    assert should_restart("on-failure", None)
    assert not should_restart("never", 137, oom_killed=True)
    with pytest.raises(ValueError):
        should_restart("sometimes", 0)


async def test_monitor_on_a_fake_clock_with_sim_health():
    now = [0.0]
    drv = SimDriver(clock=lambda: now[0], scripts={"web": SimScript(unhealthy_after_s=3.0)})
    spec = ContainerSpec(id="p1", job="web", replica=0, image="sha256:" + "0" * 64, rootfs="/x", command=["x"],
                         log_dir="/tmp/none")
    drv.create(spec)
    drv.start("p1")
    changes = []
    policy = HealthPolicy(type="exec", command=["true"], interval_s=1, failures=2)
    mon = HealthMonitor(policy, make_probe(policy, spec, drv), changes.append, clock=lambda: now[0])
    for _ in range(6):
        await mon.check_once()
        now[0] += 1.0
    assert changes == ["healthy", "unhealthy"]             # fails at t=3, 4 -> unhealthy at the 2nd failure


async def test_tcp_and_http_probes_on_loopback():
    async def handle(reader, writer):
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await probe_tcp("127.0.0.1", port, 1.0)
        assert await probe_http("127.0.0.1", port, "/", 1.0)
    assert not await probe_tcp("127.0.0.1", port, 0.5)
    assert not await probe_http("127.0.0.1", port, "/", 0.5)


def test_backoff_stays_at_its_max_however_long_a_container_crashes():
    """A container crash-looping for hours: factor ** 1100 would overflow a float and end the supervisor."""
    b = Backoff(initial_s=0.1, max_s=10.0, reset_s=60.0)
    delays = [b.on_exit(float(i)) for i in range(2000)]
    assert delays[:8] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]) and set(delays[7:]) == {10.0}


def test_the_first_check_is_due_when_the_start_grace_is_over():
    t = HealthTracker(HealthPolicy(interval_s=1, grace_s=5), started_at=100.0)
    assert not t.due(104.9) and t.due(105.0)
    assert HealthTracker(HealthPolicy(interval_s=1), started_at=100.0).due(100.0)   # no grace: at once


async def test_a_probe_that_raises_is_a_failed_check():
    async def broken() -> bool:
        raise RuntimeError("driver exec failed")
    changes: list[str] = []
    mon = HealthMonitor(HealthPolicy(failures=1), broken, changes.append, clock=lambda: 0.0)
    assert await mon.check_once() == "unhealthy" and changes == ["unhealthy"]



def test_exits_without_a_start_between_are_not_a_stable_run():
    """A failed start calls on_exit with no on_start before it: however long after the last run ended, that
    run's start must not count as a long stable run (it would reset the backoff of a crash loop)."""
    b = Backoff(initial_s=0.1, max_s=10.0, reset_s=60.0)
    b.on_start(0.0)
    assert b.on_exit(1.0) == 0.1
    assert not b.stable(100.0)
    assert b.on_exit(100.0) == 0.2       # 99 s later, a start failed: the backoff keeps growing


async def test_an_async_on_change_is_awaited_before_the_check_returns():
    seen: list[str] = []

    async def on_change(status: str) -> None:
        await asyncio.sleep(0)
        seen.append(status)

    async def ok() -> bool:
        return True
    monitor = HealthMonitor(HealthPolicy(type="exec", command=["true"]), ok, on_change, clock=lambda: 5.0)
    assert await monitor.check_once() == "healthy" and seen == ["healthy"]


def test_a_health_policy_is_the_spec_records_check_with_its_durations_in_seconds():
    p = HealthPolicy.from_spec(Health(type="http", port="web", path="/ok", interval=2500, timeout=300, grace=10_000,
                                      failures=0))
    assert (p.type, p.port, p.path, p.interval_s, p.timeout_s, p.grace_s) == ("http", "web", "/ok", 2.5, 0.3, 10.0)
    assert p.failures == 1                                  # a stored 0 would never turn unhealthy: at least 1
    e = HealthPolicy.from_spec(Health(type="exec", command=("check", "-q")))
    assert (e.command, e.interval_s, e.timeout_s, e.grace_s, e.failures) == (["check", "-q"], 1.0, 1.0, 0.0, 3)


def test_a_backoff_clamps_a_stored_restart_outside_the_validators_bounds():
    b = Backoff.from_spec(Restart(initial=-5, max=50, reset=10))
    assert (b.initial_s, b.max_s, b.reset_s) == (0.1, 0.1, 1.0)


def test_until_the_first_success_a_failed_check_is_retried_sooner_and_counts_once_per_interval():
    t = HealthTracker(HealthPolicy(interval_s=1, failures=3), started_at=0.0)
    now, retries, last = 0.0, [], 0.0
    while t.status == "unknown":
        t.record(False, now)
        retries.append(round(t.next_at - now, 6))
        last, now = now, t.next_at
    # 5 ms growing by half up to the interval; the threshold still takes three intervals of failures, not retries
    grown = [STARTUP_RETRY_S * STARTUP_RETRY_GROWTH ** i for i in range(14)]
    assert grown[-1] < 1.0 < grown[-1] * STARTUP_RETRY_GROWTH
    assert retries[:15] == pytest.approx(grown + [1.0], abs=1e-6)
    assert retries[:3] == pytest.approx([0.005, 0.0075, 0.01125])
    assert t.status == "unhealthy" and 2.0 <= last < 3.0


def test_once_healthy_a_failed_check_waits_the_interval():
    t = HealthTracker(HealthPolicy(interval_s=1, failures=3), started_at=0.0)
    t.record(True, 0.0)
    assert t.record(False, 1.0) is None and t.next_at == 2.0


def test_startup_retries_inside_the_grace_do_not_count():
    t = HealthTracker(HealthPolicy(interval_s=1, failures=1, grace_s=0.5), started_at=0.0)
    now = 0.5
    assert t.record(False, now) == "unhealthy"     # the grace is over: the first failure counts
    t = HealthTracker(HealthPolicy(interval_s=1, failures=1, grace_s=0.5), started_at=0.0)
    assert t.record(False, 0.1) is None and t.next_at == pytest.approx(0.105) and t.consecutive_failures == 0


async def test_tcp_probe_by_ipv6_address_by_host_name_and_to_nothing_listening():
    server = await asyncio.start_server(lambda r, w: w.close(), "localhost", 0)
    ports = {s.getsockname()[0]: s.getsockname()[1] for s in server.sockets}
    async with server:
        for addr, port in ports.items():        # 127.0.0.1 and ::1 where the host has them
            assert await probe_tcp(addr, port, 1.0)
        assert await probe_tcp("localhost", next(iter(ports.values())), 1.0)
    assert not await probe_tcp("127.0.0.1", ports.get("127.0.0.1", 1), 0.5)
    assert not await probe_tcp("no-such-host.invalid", 80, 0.5)


async def test_a_tcp_probe_leaves_no_socket_open():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fds = len(os.listdir("/proc/self/fd"))
    async with server:
        for _ in range(50):
            assert await probe_tcp("127.0.0.1", port, 1.0)
            assert not await probe_tcp("127.0.0.1", 1, 1.0)
        await asyncio.sleep(0.05)                 # the server's side of the last connections closes
    assert len(os.listdir("/proc/self/fd")) <= fds
